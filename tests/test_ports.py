"""The test servers' start moves to another port when someone took theirs first (tests/ports.py)."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from .browser import Server
from .ports import START_ATTEMPTS, PortTaken, free_port, port_taken, start_on_free_port
from .redis_support import PrivateRedis, require_redis_server


def squat(port: int) -> socket.socket:
    """What another process does between free_port() and the child's bind: listen there."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", port))
    sock.listen()
    return sock


def test_free_ports_are_outside_the_ephemeral_range() -> None:
    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    ports = {free_port() for _ in range(20)}
    assert all(port < low for port in ports), ports
    assert len(ports) > 1  # random, so parallel runs do not all try the same one


def test_start_on_free_port_retries_only_on_port_taken() -> None:
    tried: list[int] = []

    def start(port: int) -> int:
        tried.append(port)
        if len(tried) < 3:
            raise PortTaken("bind: Address already in use")
        return port

    assert start_on_free_port(start) == tried[-1] and len(tried) == 3

    def always_taken(port: int) -> None:
        raise PortTaken("in use")

    with pytest.raises(PortTaken):
        start_on_free_port(always_taken)

    def broken(port: int) -> None:
        raise RuntimeError("not a port problem")

    calls = []
    with pytest.raises(RuntimeError):
        start_on_free_port(lambda port: calls.append(port) or broken(port))
    assert len(calls) == 1 < START_ATTEMPTS  # any other failure is not retried
    assert port_taken("feature-votes: cannot listen on 127.0.0.1:1: Address already in use")


def test_the_service_moves_when_its_port_was_taken_first() -> None:
    server = Server()
    first = server.port
    with squat(first):
        server.start()
        try:
            assert server.port != first
            assert server.request("GET", "/healthz")[0] == 200
            assert "address already in use" in server.log_text().lower()  # it did try `first`
        finally:
            server.kill()


def test_a_private_redis_moves_when_its_port_was_taken_first(tmp_path: Path) -> None:
    require_redis_server()
    server = PrivateRedis(tmp_path, persistent=False)
    first = server.port
    with squat(first):
        try:
            server.start()
            assert server.port != first and server.url.endswith(f":{server.port}/0")
            server.kill()
            with pytest.raises(PortTaken), squat(server.port):  # a restart keeps its port
                server.start()
        finally:
            server.kill()
