"""An HTTP agent that connects only where `AddressPolicy` allows (see _addresses.py).

The mechanism is Synapse's for URL previews (`synapse.http.client`: a reactor wrapper whose
name resolver drops blocklisted addresses, and an agent wrapper for IP literals): the check
runs on the addresses the connection is made to, after resolution, so a name that resolves
to 127.0.0.1 cannot slip through and DNS cannot answer differently between check and
connection. Two differences: the rule depends on the URL (the upstream's own origin and the
allowed hosts skip it), so the choice is made per request; and a refusal is reported as
`ForbiddenAddress` with its reason, where Synapse's resolver can only claim that the name did
not resolve. treq's redirect agent calls `request` once per hop, so every hop is checked.
"""

import ipaddress
from typing import Any, List, Optional
from urllib.parse import urlsplit

from twisted.internet import defer
from twisted.internet.interfaces import (
    IAddress,
    IHostnameResolver,
    IHostResolution,
    IReactorPluggableNameResolver,
    IResolutionReceiver,
)
from twisted.python.failure import Failure
from twisted.web.client import Agent, HTTPConnectionPool
from twisted.web.iweb import IAgent
from zope.interface import implementer

from synapse_pypi._addresses import AddressPolicy, forbidden_reason


class ForbiddenAddress(Exception):
    """A URL led to an address the upstream client must not connect to."""

    def __init__(self, url: str, reason: str):
        super().__init__(f"{url}: {reason}")
        self.url = url
        self.reason = reason


@implementer(IHostnameResolver)
class _CheckingResolver:
    """Passes on the resolved addresses only if none is forbidden; else none, and the reason
    goes into `refusals`."""

    def __init__(self, resolver: IHostnameResolver, refusals: List[str]):
        self._resolver = resolver
        self._refusals = refusals

    def resolveHostName(
        self,
        resolutionReceiver: IResolutionReceiver,
        hostName: str,
        portNumber: int = 0,
        addressTypes: Any = None,
        transportSemantics: str = "TCP",
    ) -> IHostResolution:
        addresses: List[IAddress] = []
        refusals = self._refusals

        @implementer(IResolutionReceiver)
        class Receiver:
            @staticmethod
            def resolutionBegan(resolution: IHostResolution) -> None:
                resolutionReceiver.resolutionBegan(resolution)

            @staticmethod
            def addressResolved(address: IAddress) -> None:
                addresses.append(address)

            @staticmethod
            def resolutionComplete() -> None:
                # One bad address refuses the name: a name that resolves partly to the
                # homeserver's own network is not one to trust with the rest.
                for address in addresses:
                    host = getattr(address, "host", "")
                    what = forbidden_reason(host)
                    if what is not None:
                        refusals.append(f"{hostName} resolves to {host}, {what}")
                        break
                if not refusals:
                    for address in addresses:
                        resolutionReceiver.addressResolved(address)
                resolutionReceiver.resolutionComplete()

        return self._resolver.resolveHostName(
            Receiver(), hostName, portNumber=portNumber, addressTypes=addressTypes, transportSemantics=transportSemantics
        )


@implementer(IReactorPluggableNameResolver)
class _CheckingReactor:
    """The reactor, with the checking resolver as its name resolver."""

    def __init__(self, reactor: Any, resolver: IHostnameResolver):
        self._reactor = reactor
        self.nameResolver = resolver

    def installNameResolver(self, resolver: IHostnameResolver) -> IHostnameResolver:
        raise NotImplementedError("the checking resolver is fixed")

    def __getattr__(self, name: str) -> Any:
        return getattr(self._reactor, name)


@implementer(IAgent)
class GuardedAgent:
    """An `IAgent` for the upstream client: requests to trusted origins go out as they are;
    any other is refused before connecting if its host is a forbidden IP address, or if its
    name resolves to one.

    Args:
        reactor: the reactor.
        policy: what is trusted.
        pool: the connection pool (pooled connections are keyed by scheme, host and port,
            so a trusted origin and an untrusted one never share one).
        connect_timeout: seconds to wait for a connection.
    """

    def __init__(self, reactor: Any, policy: AddressPolicy, pool: HTTPConnectionPool, connect_timeout: float):
        self._reactor = reactor
        self._policy = policy
        self._pool = pool
        self._connect_timeout = connect_timeout
        self._trusted = Agent(reactor, connectTimeout=connect_timeout, pool=pool)

    def request(
        self, method: bytes, uri: bytes, headers: Any = None, bodyProducer: Any = None
    ) -> "defer.Deferred[Any]":
        url = uri.decode("ascii", "replace")
        if self._policy.trusts(url):
            return self._trusted.request(method, uri, headers, bodyProducer)
        host = _host(url)
        if host is not None and _is_ip(host):
            what = forbidden_reason(host)
            if what is not None:
                return defer.fail(ForbiddenAddress(url, f"{host} is {what}"))
        # An agent per request, so that a refusal is told to this request and no other.
        refusals: List[str] = []
        reactor = _CheckingReactor(self._reactor, _CheckingResolver(self._reactor.nameResolver, refusals))
        agent = Agent(reactor, connectTimeout=self._connect_timeout, pool=self._pool)

        def refused(failure: Failure) -> Failure:
            if refusals:
                return Failure(ForbiddenAddress(url, refusals[0]))
            return failure

        return agent.request(method, uri, headers, bodyProducer).addErrback(refused)


def _host(url: str) -> Optional[str]:
    try:
        return urlsplit(url).hostname
    except ValueError:
        return None


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        return False
