"""Security headers on pages and answers, CORS from the allow-list only."""

from __future__ import annotations

import pytest

from service.app import create_app
from service.security import DOCS_CSP, PAGE_CSP

from .conftest import AiohttpClient, Client, make_settings


@pytest.mark.parametrize(
    ("path", "csp"), [("/", PAGE_CSP), ("/present", PAGE_CSP), ("/docs", DOCS_CSP)]
)
async def test_pages_carry_a_strict_policy(client: Client, path: str, csp: str) -> None:
    resp = await client.get(path)
    assert resp.status == 200
    policy = resp.headers["Content-Security-Policy"]
    assert policy == csp
    script_src = policy.split("script-src")[1].split(";")[0]
    assert script_src.strip() == "'self'", "no inline or eval'd script on any page"
    assert "frame-ancestors 'none'" in policy
    assert resp.headers["X-Frame-Options"] == "DENY"
    assert resp.headers["X-Content-Type-Options"] == "nosniff"
    assert resp.headers["Referrer-Policy"] == "no-referrer"


@pytest.mark.parametrize("path", ["/features", "/nope", "/static/css/app.css", "/openapi.json"])
async def test_every_answer_has_nosniff(client: Client, path: str) -> None:
    resp = await client.get(path)
    assert resp.headers["X-Content-Type-Options"] == "nosniff"
    assert "Content-Security-Policy" not in resp.headers or resp.content_type == "text/html"


async def test_no_cors_by_default(client: Client) -> None:
    resp = await client.get("/features", headers={"Origin": "https://app.example.org"})
    assert resp.status == 200
    assert "Access-Control-Allow-Origin" not in resp.headers
    pre = await client.options("/features", headers={
        "Origin": "https://app.example.org", "Access-Control-Request-Method": "POST"})
    assert "Access-Control-Allow-Origin" not in pre.headers


async def test_cors_for_allowed_origins_only(aiohttp_client: AiohttpClient) -> None:
    app = create_app(make_settings(cors_origins=("https://app.example.org",)))
    client = await aiohttp_client(app)
    pre = await client.options("/features/1/vote", headers={
        "Origin": "https://app.example.org", "Access-Control-Request-Method": "PUT",
        "Access-Control-Request-Headers": "authorization, content-type"})
    assert pre.status == 204
    assert pre.headers["Access-Control-Allow-Origin"] == "https://app.example.org"
    assert "PUT" in pre.headers["Access-Control-Allow-Methods"]
    assert "Authorization" in pre.headers["Access-Control-Allow-Headers"]
    got = await client.get("/features/stats", headers={"Origin": "https://app.example.org"})
    assert got.headers["Access-Control-Allow-Origin"] == "https://app.example.org"
    assert "ETag" in got.headers["Access-Control-Expose-Headers"]
    other = await client.get("/features", headers={"Origin": "https://evil.example"})
    assert other.status == 200
    assert "Access-Control-Allow-Origin" not in other.headers
    denied = await client.options("/features", headers={
        "Origin": "https://evil.example", "Access-Control-Request-Method": "POST"})
    assert "Access-Control-Allow-Origin" not in denied.headers
