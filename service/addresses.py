"""The machine's own addresses and loopback names: the start-up log's URLs and /present's
warning that phones cannot reach a loopback address (standard library only)."""

from __future__ import annotations

import contextlib
import ipaddress
import socket
from collections.abc import Iterable
from pathlib import Path
from typing import Final

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

LOOPBACK_NAMES: Final = frozenset({"localhost", "localhost.localdomain", "ip6-localhost"})
WILDCARD_V4: Final = frozenset({"", "0.0.0.0"})
WILDCARD_V6: Final = frozenset({"::"})
# Linux lists every local IPv4 address in fib_trie and every IPv6 one in if_inet6; elsewhere
# the host name's addresses and the outbound route's source address stand in.
FIB_TRIE: Final = Path("/proc/net/fib_trie")
IF_INET6: Final = Path("/proc/net/if_inet6")
# Never sent to: a UDP connect only asks the kernel which source address it would use.
PROBE_TARGETS: Final = ((socket.AF_INET, "192.0.2.1"), (socket.AF_INET6, "2001:db8::1"))
PROBE_PORT: Final = 9


def is_loopback(host: str) -> bool:
    """localhost, 127.0.0.0/8, ::1 (with or without brackets): only this machine reaches it."""
    name = host.strip().strip("[]").rstrip(".").lower()
    if name in LOOPBACK_NAMES or name.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def _fib_trie(text: str) -> Iterable[IPAddress]:
    last = ""
    for line in text.splitlines():
        item = line.strip()
        if item.startswith("|-- "):
            last = item[4:]
        elif item == "/32 host LOCAL" and last:
            with contextlib.suppress(ValueError):
                yield ipaddress.IPv4Address(last)


def _if_inet6(text: str) -> Iterable[IPAddress]:
    for line in text.splitlines():
        fields = line.split()
        if fields:
            with contextlib.suppress(ValueError):
                yield ipaddress.IPv6Address(int(fields[0], 16))


def _probed() -> Iterable[IPAddress]:
    for family, target in PROBE_TARGETS:
        with contextlib.suppress(OSError, ValueError):
            with socket.socket(family, socket.SOCK_DGRAM) as probe:
                probe.connect((target, PROBE_PORT))
                address = probe.getsockname()[0]
            yield ipaddress.ip_address(address)


def _named() -> Iterable[IPAddress]:
    with contextlib.suppress(OSError):
        for *_, sockaddr in socket.getaddrinfo(socket.gethostname(), None):
            with contextlib.suppress(ValueError):
                yield ipaddress.ip_address(str(sockaddr[0]).split("%")[0])


def machine_addresses() -> list[IPAddress]:
    """Every address of this machine that another machine may reach: no loopback, link-local,
    multicast or unspecified address; IPv4 first."""
    found: set[IPAddress] = set()
    for path, parse in ((FIB_TRIE, _fib_trie), (IF_INET6, _if_inet6)):
        with contextlib.suppress(OSError):
            found.update(parse(path.read_text(encoding="ascii", errors="replace")))
    found.update(_probed())
    found.update(_named())
    usable = [
        a
        for a in found
        if not (a.is_loopback or a.is_link_local or a.is_multicast or a.is_unspecified)
    ]
    return sorted(usable, key=lambda a: (a.version, int(a)))


def url_host(address: IPAddress | str) -> str:
    """An address as the host part of a URL (IPv6 in brackets)."""
    text = str(address)
    return f"[{text}]" if ":" in text and not text.startswith("[") else text


def reachable_hosts(listen_host: str, addresses: Iterable[IPAddress] | None = None) -> list[str]:
    """The hosts another machine can use to reach a server listening on `listen_host`: every
    machine address for a wildcard (IPv4 ones for 0.0.0.0), the host itself otherwise;
    loopback when nothing else is left."""
    if listen_host not in WILDCARD_V4 | WILDCARD_V6:
        return [url_host(listen_host)]
    pool = machine_addresses() if addresses is None else list(addresses)
    if listen_host in WILDCARD_V4:
        pool = [a for a in pool if a.version == 4]
    hosts = [url_host(a) for a in pool]
    return hosts or ["127.0.0.1" if listen_host in WILDCARD_V4 else "[::1]"]
