"""GET /openapi.json: a valid OpenAPI 3.1 document that matches the router and the handlers."""

from __future__ import annotations

import re
from typing import Any, Final

import pytest
from aiohttp import web
from aiohttp.web_urldispatcher import StaticResource
from openapi_spec_validator import validate

from .conftest import Client, create_feature

METHODS = ("get", "put", "post", "delete", "patch", "options", "head", "trace")

# Error statuses each handler can produce according to API.md ("Identity", "Features", "Votes",
# "Stats", "Operations"): body-reading handlers add 400 (not JSON), 413 (too large), 415 (not
# JSON media type) and 422 (wrong shape); authenticated ones 401 and 429 (failed tokens from one
# address are limited, issue 14); admin ones 403.
BODY = {400, 413, 415, 422}
EXPECTED_ERRORS: dict[tuple[str, str], set[int]] = {
    ("get", "/features"): {422},
    ("post", "/features"): {401, 409, 429} | BODY,
    ("get", "/features/{id}"): {404},
    ("patch", "/features/{id}"): {401, 403, 404, 429} | BODY,
    ("delete", "/features/{id}"): {401, 403, 404, 429},
    ("put", "/features/{id}/vote"): {401, 404, 409, 429} | BODY,
    ("post", "/features/{id}/vote"): {401, 404, 409, 429} | BODY,
    ("delete", "/features/{id}/vote"): {401, 404, 409, 429},
    ("get", "/me/votes"): {401, 429},
    ("get", "/features/stats"): {304},
    ("get", "/stats"): {304},
    ("post", "/auth/token"): set(),
    ("get", "/healthz"): set(),
    ("get", "/readyz"): {503},
    ("get", "/metrics"): set(),
    ("get", "/openapi.json"): set(),
    ("get", "/docs"): set(),
    ("get", "/ws"): {403, 426},  # Origin not allowed; a plain GET that does not upgrade
    # "Board: rounds and presenter controls"
    ("get", "/board"): set(),
    ("patch", "/board"): {401, 403, 429} | BODY,
    ("post", "/board/reset"): {401, 403, 429},
    ("get", "/rounds"): set(),
    ("get", "/rounds/{n}"): {404},
    ("get", "/export.json"): {404, 422},
    ("get", "/export.csv"): {404, 422},
}


async def fetch_document(client: Client) -> dict[str, Any]:
    resp = await client.get("/openapi.json")
    assert resp.status == 200
    assert resp.content_type == "application/json"
    doc: dict[str, Any] = await resp.json()
    return doc


def router_operations(app: web.Application) -> set[tuple[str, str]]:
    found: set[tuple[str, str]] = set()
    for route in app.router.routes():
        if isinstance(route.resource, StaticResource) or route.method == "HEAD":
            continue
        assert route.resource is not None
        found.add((route.method.lower(), route.resource.canonical))
    return found


def documented_operations(doc: dict[str, Any]) -> set[tuple[str, str]]:
    return {
        (method, path)
        for path, item in doc["paths"].items()
        for method in item
        if method in METHODS
    }


def responses_of(doc: dict[str, Any], method: str, path: str) -> dict[str, Any]:
    assert method in doc["paths"].get(path, {}), f"{method.upper()} {path} is not documented"
    responses: dict[str, Any] = doc["paths"][path][method]["responses"]
    return responses


async def test_document_is_valid_openapi_31(client: Client) -> None:
    doc = await fetch_document(client)
    assert doc["openapi"].startswith("3.1")
    validate(doc)  # raises on an invalid document
    assert doc["info"]["title"]
    assert doc["info"]["version"]


async def test_every_route_is_documented(client: Client, app: web.Application) -> None:
    doc = await fetch_document(client)
    routes = router_operations(app)
    assert ("get", "/features") in routes  # the router walk found the API
    missing = routes - documented_operations(doc)
    assert not missing, f"routes missing from /openapi.json: {sorted(missing)}"


async def test_every_documented_operation_is_routed(client: Client, app: web.Application) -> None:
    doc = await fetch_document(client)
    extra = documented_operations(doc) - router_operations(app)
    assert not extra, f"documented but not routed: {sorted(extra)}"


async def test_api_md_operations_are_documented(client: Client) -> None:
    doc = await fetch_document(client)
    missing = set(EXPECTED_ERRORS) - documented_operations(doc)
    assert not missing, sorted(missing)


@pytest.mark.parametrize(("method", "path"), sorted(EXPECTED_ERRORS))
async def test_operation_lists_its_error_statuses(client: Client, method: str, path: str) -> None:
    doc = await fetch_document(client)
    documented = {int(code) for code in responses_of(doc, method, path) if code.isdigit()}
    missing = EXPECTED_ERRORS[(method, path)] - documented
    assert not missing, f"{method.upper()} {path} does not document {sorted(missing)}"
    assert any(101 <= code < 300 for code in documented), "no success response"  # 101: /ws


# Pages whose errors are HTML pages (the 404 of an unknown board or join code).
HTML_PAGES: Final = {"/join/{code}", "/b/{slug}", "/b/{slug}/present", "/b/{slug}/control"}


async def test_error_responses_are_problem_json(client: Client) -> None:
    doc = await fetch_document(client)
    schemas = doc["components"]["schemas"]
    assert "Problem" in schemas
    for path, item in doc["paths"].items():
        for method, op in item.items():
            if method not in METHODS:
                continue
            for code, response in op["responses"].items():
                if int(code) < 400:
                    continue
                content = response.get("content", {})
                if path in HTML_PAGES:  # a page answers its errors as a page
                    assert list(content) == ["text/html"], (method, path, code)
                    continue
                assert "application/problem+json" in content, (method, path, code)
                if code == "401":
                    assert "WWW-Authenticate" in response.get("headers", {}), (method, path)


async def test_authenticated_operations_declare_bearer_security(client: Client) -> None:
    doc = await fetch_document(client)
    schemes = doc["components"]["securitySchemes"]
    bearer_names = {
        name
        for name, scheme in schemes.items()
        if (scheme.get("type"), scheme.get("scheme")) == ("http", "bearer")
    }
    assert bearer_names
    for (method, path), errors in EXPECTED_ERRORS.items():
        op = doc["paths"].get(path, {}).get(method)
        if op is None:
            continue  # reported by test_api_md_operations_are_documented
        names = {name for requirement in op.get("security", []) for name in requirement}
        if 401 in errors:
            assert names & bearer_names, f"{method.upper()} {path} needs a bearer security entry"
        else:
            assert not names, f"{method.upper()} {path} is public but declares security"


async def test_path_parameters_are_declared(client: Client) -> None:
    doc = await fetch_document(client)
    for path, item in doc["paths"].items():
        names = set(re.findall(r"{([^}]+)}", path))
        for method, op in item.items():
            if method not in METHODS:
                continue
            declared = {
                p["name"]
                for p in op.get("parameters", []) + item.get("parameters", [])
                if p.get("in") == "path"
            }
            assert declared == names, (method, path)


# --- what the handlers really answer is documented ---------------------------------------------

JSON = "application/json"
HUGE = b'{"title": "' + b"x" * 70_000 + b'"}'


class Probe:
    def __init__(
        self,
        method: str,
        path: str,
        status: int,
        *,
        auth: str | None = None,
        json: Any = None,
        data: bytes | None = None,
        content_type: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        self.method = method
        self.path = path
        self.status = status
        self.auth = auth
        self.json = json
        self.data = data
        self.content_type = content_type
        self.headers = headers or {}

    def __repr__(self) -> str:
        return f"{self.method} {self.path} ({self.auth}) -> {self.status}"


PROBES = [
    Probe("get", "/features?limit=0", 422),
    Probe("get", "/features?sort=sideways", 422),
    Probe("get", "/features?cursor=%%%", 422),
    Probe("post", "/features", 401, json={"title": "x"}),
    Probe("post", "/features", 400, auth="voter", data=b"{not json", content_type=JSON),
    Probe("post", "/features", 415, auth="voter", data=b"title=x", content_type="text/plain"),
    Probe("post", "/features", 422, auth="voter", json={"title": ""}),
    Probe("post", "/features", 413, auth="voter", data=HUGE, content_type=JSON),
    Probe("get", "/features/{missing}", 404),
    Probe("get", "/features/abc", 404),
    Probe("patch", "/features/{open}", 401, json={"status": "planned"}),
    Probe("patch", "/features/{open}", 403, auth="voter", json={"status": "planned"}),
    Probe("patch", "/features/{missing}", 404, auth="admin", json={"status": "planned"}),
    Probe("patch", "/features/{open}", 400, auth="admin", data=b"{oops", content_type=JSON),
    Probe("patch", "/features/{open}", 415, auth="admin", data=b"x", content_type="text/plain"),
    Probe("patch", "/features/{open}", 422, auth="admin", json={"status": "someday"}),
    Probe("patch", "/features/{open}", 413, auth="admin", data=HUGE, content_type=JSON),
    Probe("delete", "/features/{open}", 401),
    Probe("delete", "/features/{open}", 403, auth="voter"),
    Probe("delete", "/features/{missing}", 404, auth="admin"),
    *(
        p
        for method in ("put", "post")
        for p in (
            Probe(method, "/features/{open}/vote", 401, json={"value": 1}),
            Probe(method, "/features/{missing}/vote", 404, auth="voter", json={"value": 1}),
            Probe(method, "/features/{done}/vote", 409, auth="voter", json={"value": 1}),
            Probe(method, "/features/{open}/vote", 400, auth="voter", data=b"{",
                  content_type=JSON),
            Probe(method, "/features/{open}/vote", 415, auth="voter", data=b"1",
                  content_type="text/plain"),
            Probe(method, "/features/{open}/vote", 422, auth="voter", json={"value": 2}),
            Probe(method, "/features/{open}/vote", 413, auth="voter", data=HUGE,
                  content_type=JSON),
        )
    ),
    Probe("delete", "/features/{open}/vote", 401),
    Probe("delete", "/features/{missing}/vote", 404, auth="voter"),
    Probe("delete", "/features/{done}/vote", 409, auth="voter"),
    Probe("get", "/me/votes", 401),
    Probe("get", "/features/stats", 304, auth="etag"),
    Probe("get", "/stats", 304, auth="etag"),
    Probe("get", "/ws", 426),
    Probe("patch", "/board", 401, json={"voting_open": False}),
    Probe("patch", "/board", 403, auth="voter", json={"voting_open": False}),
    Probe("patch", "/board", 400, auth="admin", data=b"{", content_type=JSON),
    Probe("patch", "/board", 415, auth="admin", data=b"x", content_type="text/plain"),
    Probe("patch", "/board", 422, auth="admin", json={"voting_open": "no"}),
    Probe("patch", "/board", 413, auth="admin", data=HUGE, content_type=JSON),
    Probe("post", "/board/reset", 401),
    Probe("post", "/board/reset", 403, auth="voter"),
    Probe("get", "/rounds/{missing}", 404),
    Probe("get", "/rounds/1", 404),
    Probe("get", "/export.json?round={missing}", 404),
    Probe("get", "/export.json?round=zero", 422),
    Probe("get", "/export.csv?round={missing}", 404),
    Probe("get", "/export.csv?round=0", 422),
    *(
        p
        for method in ("put", "post", "delete")
        for p in (
            Probe(method, "/features/{open}/vote", 409, auth="voter", json={"value": 1},
                  headers={"X-Lock-Board": "1"}),
        )
    ),
    Probe(
        "get",
        "/ws",
        403,
        headers={
            "Origin": "https://evil.example",
            "Connection": "Upgrade",
            "Upgrade": "websocket",
            "Sec-WebSocket-Version": "13",
            "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
        },
    ),
]


def route_template(path: str) -> str:
    bare = path.split("?")[0]
    bare = re.sub(r"^/rounds/(1|{missing})$", "/rounds/{n}", bare)
    bare = re.sub(r"{(open|done|missing)}", "{id}", bare)
    return re.sub(r"^/features/abc$", "/features/{id}", bare)


@pytest.mark.parametrize("probe", PROBES, ids=repr)
async def test_real_answers_are_documented(
    client: Client, admin: dict[str, str], voter: dict[str, str], probe: Probe
) -> None:
    open_ = await create_feature(client, voter, "Open one")
    done = await create_feature(client, voter, "Done one")
    resp = await client.patch(f"/features/{done['id']}", json={"status": "done"}, headers=admin)
    assert resp.status == 200
    path = probe.path.format(open=open_["id"], done=done["id"], missing=999_999)
    headers: dict[str, str] = dict(probe.headers)
    if headers.pop("X-Lock-Board", None):  # the probe needs a locked board: votes are 409
        resp = await client.patch("/board", json={"voting_open": False}, headers=admin)
        assert resp.status == 200
    if probe.auth == "voter":
        headers.update(voter)
    elif probe.auth == "admin":
        headers.update(admin)
    elif probe.auth == "etag":
        first = await client.get(path)
        headers["If-None-Match"] = first.headers["ETag"]
    if probe.content_type is not None:
        headers["Content-Type"] = probe.content_type
    resp = await client.request(
        probe.method.upper(), path, json=probe.json, data=probe.data, headers=headers
    )
    assert resp.status == probe.status, await resp.text()
    if resp.status >= 400:
        assert resp.content_type == "application/problem+json"
    doc = await fetch_document(client)
    documented = responses_of(doc, probe.method, route_template(probe.path))
    assert str(resp.status) in documented, (
        f"{probe.method.upper()} {route_template(probe.path)} answers {resp.status}, "
        f"but documents only {sorted(documented)}"
    )


# --- the docs page ------------------------------------------------------------------------------


async def test_docs_page_is_self_hosted(client: Client) -> None:
    resp = await client.get("/docs")
    assert resp.status == 200
    assert resp.content_type == "text/html"
    html = await resp.text()
    assert "/static/swagger/swagger-ui-bundle.js" in html
    assert "/openapi.json" in html
    refs = re.findall(r"""(?:src|href)\s*=\s*["']([^"']+)["']""", html)
    assert refs
    remote = [r for r in refs if re.match(r"^(?:[a-z][a-z0-9+.-]*:)?//", r, re.IGNORECASE)]
    assert not remote, f"/docs loads from elsewhere: {remote}"
    assert not re.search(r"https?://", html), "the page mentions an external URL"
    for ref in refs:
        if ref.startswith("data:"):  # inline (the empty favicon), nothing to fetch
            continue
        asset = await client.get(ref)
        assert asset.status == 200, ref
        assert len(await asset.read()) > 0, ref


async def test_swagger_bundle_is_served(client: Client) -> None:
    resp = await client.get("/static/swagger/swagger-ui-bundle.js")
    assert resp.status == 200
    assert "javascript" in resp.content_type
    body = await resp.read()
    assert len(body) > 100_000  # the real bundle, not a stub
    assert b"SwaggerUIBundle" in body
