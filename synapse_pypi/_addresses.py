"""Where the upstream client may connect: no request forgery from an upstream page (pure).

An upstream page names the URL of every file (and of its core metadata), and a redirect can
send a download anywhere. Followed blindly, a malicious or compromised upstream could make
the homeserver fetch from itself or its private network (server-side request forgery). So
the client connects only to *global* unicast addresses, except:

* the upstream index's own origin (scheme, host and port of `upstream_url`), wherever it
  is: the admin chose it, and a mirror of an index on the local network must work;
* the hosts the admin lists in `upstream_allowed_file_hosts`.

The rule is applied to the address actually connected to, after name resolution (a name
that resolves to 127.0.0.1 is refused as 127.0.0.1 is), and again for every redirect hop.
The ranges below follow the IANA special-purpose address registries, written out here
rather than taken from `ipaddress.is_global`, whose answers changed between Python releases.
"""

import ipaddress
from typing import FrozenSet, Iterable, Optional, Union
from urllib.parse import urlsplit

import attrs

_IPAddress = Union[ipaddress.IPv4Address, ipaddress.IPv6Address]

_V4_RANGES = tuple(
    (ipaddress.IPv4Network(net), what)
    for net, what in (
        ("0.0.0.0/8", "an unspecified ('this network') address"),
        ("10.0.0.0/8", "a private address"),
        ("100.64.0.0/10", "a shared (carrier-grade NAT) address"),
        ("127.0.0.0/8", "a loopback address"),
        ("169.254.0.0/16", "a link-local address"),
        ("172.16.0.0/12", "a private address"),
        ("192.0.0.0/24", "an address reserved for protocol assignments"),
        ("192.0.2.0/24", "a documentation address"),
        ("192.88.99.0/24", "a 6to4 relay anycast address"),
        ("192.168.0.0/16", "a private address"),
        ("198.18.0.0/15", "a benchmarking address"),
        ("198.51.100.0/24", "a documentation address"),
        ("203.0.113.0/24", "a documentation address"),
        ("224.0.0.0/4", "a multicast address"),
        ("240.0.0.0/4", "a reserved or broadcast address"),
    )
)

_V6_RANGES = tuple(
    (ipaddress.IPv6Network(net), what)
    for net, what in (
        ("::/128", "an unspecified address"),
        ("::1/128", "a loopback address"),
        ("::/96", "an IPv4-compatible address (deprecated)"),
        ("64:ff9b:1::/48", "a local-use NAT64 address"),
        ("100::/64", "a discard-only address"),
        ("2001::/23", "an address reserved for protocol assignments (Teredo, benchmarking, ...)"),
        ("2001:db8::/32", "a documentation address"),
        ("3fff::/20", "a documentation address"),
        ("5f00::/16", "a segment-routing address"),
        ("fc00::/7", "a unique-local address"),
        ("fe80::/10", "a link-local address"),
        ("fec0::/10", "a site-local address (deprecated)"),
        ("ff00::/8", "a multicast address"),
    )
)

# Global unicast IPv6 lives in 2000::/3; everything else is reserved or special.
_V6_GLOBAL_UNICAST = ipaddress.IPv6Network("2000::/3")
# The well-known NAT64 prefix: the last 32 bits are the IPv4 address reached.
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")


def forbidden_reason(address: str) -> Optional[str]:
    """What `address` is if the upstream client must not connect to it, or None if it is a
    global unicast address.

    Args:
        address: an IPv4 or IPv6 address as text.

    Returns:
        None, or a phrase that completes "<address> is ...": "a loopback address",
        "a private address", ... Text that is not an address is forbidden too.
    """
    try:
        ip: _IPAddress = ipaddress.ip_address(address)
    except ValueError:
        return "not an IP address"
    return _what(ip)


def _what(ip: _IPAddress) -> Optional[str]:
    if isinstance(ip, ipaddress.IPv4Address):
        return next((what for net, what in _V4_RANGES if ip in net), None)
    # An IPv6 address that stands for an IPv4 one is judged as that one: ::ffff:127.0.0.1
    # reaches 127.0.0.1.
    embedded = ip.ipv4_mapped or ip.sixtofour
    if embedded is None and ip in _NAT64:
        embedded = ipaddress.IPv4Address(ip.packed[-4:])
    if embedded is not None:
        what = _what(embedded)
        return None if what is None else f"{what} (as {embedded})"
    found = next((what for net, what in _V6_RANGES if ip in net), None)
    if found is None and ip not in _V6_GLOBAL_UNICAST:
        found = "a reserved address (outside global unicast)"
    return found


@attrs.frozen
class HostPort:
    """A host (lower-case name, or an IP address in its compressed form) and a port (None:
    any port)."""

    host: str
    port: Optional[int]


def _canonical_host(host: str) -> str:
    host = host.strip().lower().rstrip(".")
    try:
        return ipaddress.ip_address(host).compressed
    except ValueError:
        return host


def parse_host_port(value: object) -> HostPort:
    """One entry of `upstream_allowed_file_hosts`: "files.example.org", "files.example.org:8080",
    "10.0.0.5", "10.0.0.5:8080", "fd00::5" or "[fd00::5]:8080".

    Raises:
        ValueError: saying what is wrong with the entry.
    """
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{value!r} is not a host name or host:port")
    text = value.strip()
    port: Optional[str] = None
    if text.startswith("["):
        host, bracket, rest = text[1:].partition("]")
        if not bracket:
            raise ValueError(f"{value!r} is not a host name or host:port")
        if rest:
            if not rest.startswith(":"):
                raise ValueError(f"{value!r} is not a host name or host:port")
            port = rest[1:]
    elif text.count(":") == 1:
        host, port = text.split(":")
    else:
        host = text  # a name, an IPv4 address, or a bare IPv6 address
    if "/" in text or "@" in text or not host:
        raise ValueError(f"{value!r} is not a host name or host:port (no scheme, path or user)")
    if ":" in host or text.startswith("["):
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f"{value!r} is not a host name or host:port") from None
    elif not all(part and all(c.isalnum() or c in "-_" for c in part) for part in host.rstrip(".").split(".")):
        raise ValueError(f"{value!r} is not a host name or host:port")
    number: Optional[int] = None
    if port is not None:
        if not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"{value!r}: the port must be a number from 1 to 65535")
        number = int(port)
    return HostPort(_canonical_host(host), number)


@attrs.frozen
class Origin:
    scheme: str
    host: str
    port: int


def origin_of(url: str) -> Optional[Origin]:
    """The (scheme, host, port) of an http(s) URL, the port filled in; None for anything else."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return None
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https") or not parts.hostname:
        return None
    return Origin(scheme, _canonical_host(parts.hostname), port or (443 if scheme == "https" else 80))


@attrs.frozen
class AddressPolicy:
    """Which URLs the upstream client fetches from without the address check.

    Args:
        upstream: the origin of the configured upstream index (always trusted).
        allowed: further hosts the admin allows, on one port or any.
    """

    upstream: Optional[Origin]
    allowed: FrozenSet[HostPort] = frozenset()

    @classmethod
    def for_upstream(cls, upstream_url: str, allowed: Iterable[HostPort] = ()) -> "AddressPolicy":
        return cls(origin_of(upstream_url), frozenset(allowed))

    def trusts(self, url: str) -> bool:
        """Whether `url` goes to the upstream's own origin or to an allowed host (then any
        address it resolves to is fine)."""
        origin = origin_of(url)
        if origin is None:
            return False
        if origin == self.upstream:
            return True
        return HostPort(origin.host, origin.port) in self.allowed or HostPort(origin.host, None) in self.allowed

