"""The HTML pages as served (no browser): templates render, the QR code and join URL are right."""

from __future__ import annotations

import re

import pytest
from aiohttp import web

from service.app import create_app
from service.pages import qr_svg

from .conftest import AiohttpClient, Client, make_settings

SCRIPT_SRC = re.compile(r'<script[^>]*\bsrc="([^"]+)"')


@pytest.mark.parametrize(
    ("path", "script"), [("/", "/static/js/dashboard.js"), ("/present", "/static/js/present.js")]
)
async def test_page_renders_with_its_script(client: Client, path: str, script: str) -> None:
    resp = await client.get(path)
    assert resp.status == 200
    assert resp.content_type == "text/html"
    html = await resp.text()
    assert SCRIPT_SRC.findall(html) == [script]
    assert "<script>" not in html, "no inline scripts (a strict CSP must stay possible)"
    js = await client.get(script)
    assert js.status == 200
    assert "javascript" in js.content_type


@pytest.mark.parametrize(
    "module", ["api.js", "board.js", "live.js", "dashboard.js", "present.js"]
)
async def test_static_modules_are_served(client: Client, module: str) -> None:
    resp = await client.get(f"/static/js/{module}")
    assert resp.status == 200
    assert "innerHTML" not in await resp.text(), "user text must go in with textContent"


async def main_code(client: Client) -> str:
    code: str = (await (await client.get("/boards/main")).json())["join_code"]
    return code


async def test_present_uses_the_request_host_by_default(client: Client) -> None:
    html = await (await client.get("/present")).text()
    host = f"127.0.0.1:{client.port}"
    assert f'<strong id="join-url">{host}/join</strong>' in html
    assert qr_svg(f"http://{host}/join/{await main_code(client)}") in html


async def test_present_uses_the_public_url(aiohttp_client: AiohttpClient) -> None:
    app: web.Application = create_app(make_settings(public_url="https://votes.example.org/"))
    client = await aiohttp_client(app)
    html = await (await client.get("/present")).text()
    assert '<strong id="join-url">votes.example.org/join</strong>' in html
    url = f"https://votes.example.org/join/{await main_code(client)}"
    assert qr_svg(url) in html
    assert "<svg" in qr_svg(url)


async def test_hostile_host_header_is_escaped(client: Client) -> None:
    resp = await client.get("/present", headers={"Host": 'evil"><script>x</script>'})
    html = await resp.text()
    assert "<script>x</script>" not in html
