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


async def test_vary_origin_on_every_answer_to_a_request_with_an_origin(
    aiohttp_client: AiohttpClient,
) -> None:
    """With CORS configured, an answer that depends on Origin says so to caches: allowed or
    not, preflight or not, success or problem."""
    app = create_app(make_settings(cors_origins=("https://app.example.org",)))
    client = await aiohttp_client(app)
    preflight = {"Access-Control-Request-Method": "PUT"}
    for origin in ("https://app.example.org", "https://evil.example"):
        for method, path, extra, status in [
            ("GET", "/features/stats", {}, 200),
            ("GET", "/features/99", {}, 404),  # a problem answer
            ("PUT", "/features/1/vote", {}, 401),
            ("OPTIONS", "/features/1/vote", preflight, 204),
            ("GET", "/static/css/app.css", {}, 200),
        ]:
            resp = await client.request(method, path, headers={"Origin": origin, **extra})
            assert resp.status == status, (origin, method, path)
            vary = [v.strip() for h in resp.headers.getall("Vary", []) for v in h.split(",")]
            assert vary.count("Origin") == 1, (origin, method, path, vary)
            allowed = origin == "https://app.example.org"
            assert ("Access-Control-Allow-Origin" in resp.headers) == allowed, (origin, path)
    plain = await client.get("/features/stats")  # no Origin: nothing varies on it
    assert "Origin" not in plain.headers.get("Vary", "")
    listing = await client.get("/features", headers={"Origin": "https://evil.example"})
    vary = [v.strip() for h in listing.headers.getall("Vary", []) for v in h.split(",")]
    assert sorted(vary) == ["Authorization", "Origin"]  # the handler's own Vary is kept
