"""The address rule of the upstream client (no request forgery): which addresses are global,
which URLs skip the check, and how allowed hosts are written."""

import pytest

from synapse_pypi._addresses import AddressPolicy, HostPort, forbidden_reason, origin_of, parse_host_port


@pytest.mark.parametrize(
    ("address", "what"),
    [
        ("127.0.0.1", "loopback"),
        ("127.0.0.2", "loopback"),
        ("0.0.0.0", "unspecified"),
        ("10.1.2.3", "private"),
        ("172.16.0.1", "private"),
        ("172.31.255.255", "private"),
        ("192.168.1.1", "private"),
        ("100.64.0.1", "carrier-grade NAT"),
        ("169.254.169.254", "link-local"),  # the cloud metadata service
        ("192.0.2.1", "documentation"),
        ("198.18.0.1", "benchmarking"),
        ("224.0.0.1", "multicast"),
        ("239.255.255.250", "multicast"),
        ("240.0.0.1", "reserved"),
        ("255.255.255.255", "broadcast"),
        ("::1", "loopback"),
        ("::", "unspecified"),
        ("fe80::1", "link-local"),
        ("fe80::1%eth0", "link-local"),
        ("fc00::1", "unique-local"),
        ("fd12:3456::1", "unique-local"),
        ("ff02::1", "multicast"),
        ("fec0::1", "site-local"),
        ("2001:db8::1", "documentation"),
        ("2001::1", "protocol assignments"),  # Teredo
        ("100::1", "discard-only"),
        ("4000::1", "outside global unicast"),
        # IPv6 forms of IPv4 addresses are judged as the IPv4 address they reach.
        ("::ffff:127.0.0.1", "loopback"),
        ("::ffff:10.0.0.1", "private"),
        ("::ffff:169.254.169.254", "link-local"),
        ("::127.0.0.1", "IPv4-compatible"),
        ("2002:7f00:1::1", "loopback address (as 127.0.0.1)"),  # 6to4
        ("64:ff9b::a00:1", "private address (as 10.0.0.1)"),  # NAT64
        ("64:ff9b:1::1", "local-use NAT64"),
        ("not-an-address", "not an IP address"),
        ("", "not an IP address"),
    ],
)
def test_non_global_addresses_are_forbidden(address: str, what: str) -> None:
    reason = forbidden_reason(address)
    assert reason is not None and what in reason


@pytest.mark.parametrize(
    "address",
    ["8.8.8.8", "1.1.1.1", "151.101.0.223", "172.32.0.1", "100.128.0.1", "223.255.255.255",
     "2a04:4e42::223", "2001:4860:4860::8888", "::ffff:8.8.8.8", "2002:808:808::1", "64:ff9b::808:808"],
)
def test_global_addresses_are_allowed(address: str) -> None:
    assert forbidden_reason(address) is None


def test_only_the_upstreams_own_origin_and_allowed_hosts_skip_the_check() -> None:
    policy = AddressPolicy.for_upstream(
        "http://127.0.0.1:8080/simple/",
        [parse_host_port("files.internal:9000"), parse_host_port("cdn.internal"), parse_host_port("[FD00::5]:81")],
    )
    assert policy.trusts("http://127.0.0.1:8080/files/a.whl")
    assert policy.trusts("HTTP://127.0.0.1:8080/other/place")
    # Same host, another port or scheme: another origin, checked like any other.
    assert not policy.trusts("http://127.0.0.1:8081/files/a.whl")
    assert not policy.trusts("https://127.0.0.1:8080/files/a.whl")
    assert not policy.trusts("http://127.0.0.2:8080/files/a.whl")
    assert not policy.trusts("http://localhost:8080/files/a.whl")
    # Allowed hosts: on their port, or on any port when none was given.
    assert policy.trusts("http://files.internal:9000/a.whl")
    assert not policy.trusts("http://files.internal/a.whl")
    assert policy.trusts("https://CDN.internal/a.whl") and policy.trusts("http://cdn.internal:1234/a.whl")
    assert policy.trusts("http://[fd00::5]:81/a.whl") and not policy.trusts("http://[fd00::5]/a.whl")
    assert not policy.trusts("ftp://cdn.internal/a.whl") and not policy.trusts("not a url")


def test_default_ports_are_filled_in() -> None:
    policy = AddressPolicy.for_upstream("https://index.internal/simple/")
    assert policy.trusts("https://index.internal:443/simple/x/")
    assert origin_of("http://Example.ORG/x") == origin_of("http://example.org:80/y")
    assert origin_of("http://example.org:99999/") is None


@pytest.mark.parametrize(
    ("entry", "expected"),
    [
        ("files.example.org", HostPort("files.example.org", None)),
        ("Files.Example.org:8080", HostPort("files.example.org", 8080)),
        ("10.0.0.5", HostPort("10.0.0.5", None)),
        ("10.0.0.5:8080", HostPort("10.0.0.5", 8080)),
        ("fd00::5", HostPort("fd00::5", None)),
        ("[fd00:0::5]", HostPort("fd00::5", None)),
        ("[fd00::5]:8080", HostPort("fd00::5", 8080)),
        ("localhost:1", HostPort("localhost", 1)),
    ],
)
def test_allowed_host_entries(entry: str, expected: HostPort) -> None:
    assert parse_host_port(entry) == expected


@pytest.mark.parametrize(
    "entry",
    ["", "  ", 5, None, "http://files.example.org", "files.example.org/path", "user@host", "host:0",
     "host:65536", "host:port", "[fd00::5]x", "[not-v6]:80", "a b", "host:", "fd00::5::6"],
)
def test_bad_allowed_host_entries_are_refused(entry: object) -> None:
    with pytest.raises(ValueError):
        parse_host_port(entry)
