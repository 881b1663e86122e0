"""Forged tokens over HTTP are limited per client address (issue 14): failed verifications
count against the auth_failure rule; past its budget a new token gets 429 + Retry-After before
its signature is checked, while tokens verified before are never slowed."""

from __future__ import annotations

from typing import Any, Final

from service.app import create_app
from service.auth import Claims, Role, Tokens

from .conftest import AiohttpClient, Client, bearer, make_settings

FORGED: Final = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ4Iiwicm9sZSI6ImFkbWluIn0.c2lnbmF0dXJl"
BURST: Final = 3


class CountingTokens(Tokens):
    """Real tokens that count the signature checks they make."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.checks = 0

    def _decode(self, token: str) -> Claims:
        self.checks += 1
        return super()._decode(token)


async def limited_client(
    aiohttp_client: AiohttpClient, **extra: Any
) -> tuple[Client, CountingTokens]:
    values: dict[str, Any] = {
        "auth_failure_rate": 1.0,
        "auth_failure_burst": BURST,
        "trusted_proxies": ("127.0.0.1",),
        **extra,
    }
    settings = make_settings(**values)
    tokens = CountingTokens(
        settings.secret,
        voter_ttl=settings.voter_token_ttl,
        admin_ttl=settings.admin_token_ttl,
        cache_size=settings.token_cache_size,
    )
    client = await aiohttp_client(create_app(settings, tokens=tokens))
    return client, tokens


def forged(i: int, **headers: str) -> dict[str, str]:
    return {**bearer(f"{FORGED}{i}"), **headers}


async def test_past_the_budget_a_bad_token_is_429_before_its_signature_check(
    aiohttp_client: AiohttpClient,
) -> None:
    client, tokens = await limited_client(aiohttp_client)
    for i in range(BURST):
        resp = await client.put("/features/1/vote", json={"value": 1}, headers=forged(i))
        assert resp.status == 401
    assert tokens.checks == BURST
    for i in range(BURST, BURST + 20):
        resp = await client.put("/features/1/vote", json={"value": 1}, headers=forged(i))
        assert resp.status == 429, await resp.text()
        assert int(resp.headers["Retry-After"]) >= 1
        assert resp.content_type == "application/problem+json"
    # the admin operations and /me/votes share the budget
    for method, path in (
        ("PATCH", "/board"),
        ("POST", "/board/reset"),
        ("GET", "/me/votes"),
        ("POST", "/features"),
        ("DELETE", "/features/1"),
    ):
        resp = await client.request(method, path, json={"title": "x"}, headers=forged(99))
        assert resp.status == 429, (method, path, resp.status)
    assert tokens.checks == BURST  # not one more signature check


async def test_tokens_verified_before_are_never_slowed(aiohttp_client: AiohttpClient) -> None:
    client, tokens = await limited_client(aiohttp_client)
    resp = await client.post("/auth/token")
    voter = bearer((await resp.json())["token"])
    admin = bearer(tokens.issue(Role.ADMIN, "admin")[0])
    assert (await client.get("/me/votes", headers=voter)).status == 200
    assert (await client.patch("/board", json={"title": "Q"}, headers=admin)).status == 200
    checks = tokens.checks
    for i in range(BURST + 5):  # the address goes over its budget
        await client.get("/me/votes", headers=forged(i))
    assert tokens.checks == checks + BURST
    for _ in range(20):
        assert (await client.get("/me/votes", headers=voter)).status == 200
        assert (await client.patch("/board", json={"title": "R"}, headers=admin)).status == 200
    assert tokens.checks == checks + BURST  # remembered: no signature check, no limit


async def test_good_tokens_never_count_as_failures(aiohttp_client: AiohttpClient) -> None:
    client, tokens = await limited_client(aiohttp_client)
    for i in range(10 * BURST):  # many new, valid tokens from one address: all checked, all fine
        token = tokens.issue(Role.VOTER, f"voter-{i}")[0]
        assert (await client.get("/me/votes", headers=bearer(token))).status == 200
    assert tokens.checks == 10 * BURST


async def test_the_budget_is_per_address(aiohttp_client: AiohttpClient) -> None:
    client, _ = await limited_client(aiohttp_client)
    there = {"X-Forwarded-For": "203.0.113.7"}  # the test client is a trusted proxy
    for i in range(BURST + 2):
        await client.get("/me/votes", headers=forged(i, **there))
    assert (await client.get("/me/votes", headers=forged(50, **there))).status == 429
    elsewhere = {"X-Forwarded-For": "198.51.100.9"}
    assert (await client.get("/me/votes", headers=forged(51, **elsewhere))).status == 401


async def test_public_reads_over_the_budget_get_the_public_view_unchecked(
    aiohttp_client: AiohttpClient,
) -> None:
    client, tokens = await limited_client(aiohttp_client)
    for i in range(BURST):
        assert (await client.get("/stats", headers=forged(i))).status == 200  # public, counted
    assert tokens.checks == BURST
    assert (await client.get("/me/votes", headers=forged(7))).status == 429  # budget spent
    for path in ("/stats", "/features", "/export.json"):
        assert (await client.get(path, headers=forged(8))).status == 200
    assert tokens.checks == BURST


async def test_the_limit_can_be_turned_off(aiohttp_client: AiohttpClient) -> None:
    client, tokens = await limited_client(aiohttp_client, auth_failure_burst=0)
    for i in range(BURST * 5):
        assert (await client.get("/me/votes", headers=forged(i))).status == 401
    assert tokens.checks == BURST * 5
