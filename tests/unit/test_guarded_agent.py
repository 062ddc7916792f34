"""`GuardedAgent` in memory: the address check runs on what a name resolves to, before any
connection, and trusted origins pass. Twisted's `MemoryReactorClock` records every connection
attempt; a resolver the test fills in stands for DNS (a name that resolves to 127.0.0.1, as a
rebinding attacker's name would)."""

from __future__ import annotations

from typing import Any

import pytest
from twisted.internet._resolver import HostResolution
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.interfaces import IHostnameResolver
from twisted.internet.testing import MemoryReactorClock
from twisted.python.failure import Failure
from twisted.web.client import HTTPConnectionPool
from zope.interface import implementer

from synapse_pypi._addresses import AddressPolicy, parse_host_port
from synapse_pypi._guarded_agent import ForbiddenAddress, GuardedAgent


@implementer(IHostnameResolver)
class Names:
    """Resolves the names in `table`, at once."""

    def __init__(self, table: dict[str, list[str]]) -> None:
        self.table = table
        self.asked: list[str] = []

    def resolveHostName(self, receiver: Any, hostName: str, portNumber: int = 0, addressTypes: Any = None,
                        transportSemantics: str = "TCP") -> Any:
        self.asked.append(hostName)
        receiver.resolutionBegan(HostResolution(hostName))
        for address in self.table.get(hostName, [hostName]):
            cls = IPv6Address if ":" in address else IPv4Address
            receiver.addressResolved(cls("TCP", address, portNumber))
        receiver.resolutionComplete()
        return receiver


@pytest.fixture
def setup() -> tuple[MemoryReactorClock, Names, GuardedAgent]:
    reactor = MemoryReactorClock()
    names = Names({
        "rebound.example": ["127.0.0.1"],
        "mixed.example": ["93.184.216.34", "10.0.0.1"],
        "public.example": ["93.184.216.34"],
        "files.internal": ["10.0.0.5"],
        "index.internal": ["192.168.1.2"],
    })
    reactor.installNameResolver(names)
    policy = AddressPolicy.for_upstream("http://index.internal:8080/simple/", [parse_host_port("files.internal")])
    agent = GuardedAgent(reactor, policy, HTTPConnectionPool(reactor, persistent=False), connect_timeout=5)
    return reactor, names, agent


def outcome(reactor: MemoryReactorClock, d: Any) -> Any:
    reactor.advance(1)
    result: list[Any] = []
    d.addBoth(result.append)
    return result[0] if result else None


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("http://rebound.example/f.whl", "rebound.example resolves to 127.0.0.1, a loopback address"),
        ("http://mixed.example/f.whl", "mixed.example resolves to 10.0.0.1, a private address"),
        ("http://127.0.0.2:8080/f.whl", "127.0.0.2 is a loopback address"),
        ("http://[::ffff:169.254.169.254]/latest", "::ffff:169.254.169.254 is a link-local address (as 169.254.169.254)"),
        ("http://index.internal:8081/f.whl", "index.internal resolves to 192.168.1.2, a private address"),
        ("https://index.internal:8080/f.whl", "index.internal resolves to 192.168.1.2, a private address"),
    ],
)
def test_forbidden_addresses_are_refused_before_connecting(setup: Any, url: str, reason: str) -> None:
    reactor, _, agent = setup
    result = outcome(reactor, agent.request(b"GET", url.encode()))
    assert isinstance(result, Failure) and result.check(ForbiddenAddress), result
    assert result.value.url == url and result.value.reason == reason
    assert reactor.tcpClients == [] and reactor.sslClients == []


@pytest.mark.parametrize(
    ("url", "address", "port"),
    [
        ("http://public.example/f.whl", "93.184.216.34", 80),
        ("http://index.internal:8080/files/f.whl", "192.168.1.2", 8080),  # the upstream's own origin
        ("http://files.internal:9000/f.whl", "10.0.0.5", 9000),  # an allowed host, any port
    ],
)
def test_global_addresses_and_trusted_origins_are_connected_to(setup: Any, url: str, address: str, port: int) -> None:
    reactor, _, agent = setup
    agent.request(b"GET", url.encode())
    reactor.advance(1)
    assert [(host, p) for host, p, *_ in reactor.tcpClients] == [(address, port)]


def test_an_ip_literal_is_refused_without_asking_the_resolver(setup: Any) -> None:
    reactor, names, agent = setup
    assert isinstance(outcome(reactor, agent.request(b"GET", b"http://10.1.2.3/f.whl")), Failure)
    assert names.asked == []
