"""Input is matched whole: "$" in re.match (and in msgspec's re.search patterns) also accepts a
trailing newline, so "1\\n" (a URL's %0A) once passed as feature id 1, round 1 or limit 2."""

from __future__ import annotations

import re

import pytest

from service import api
from service.config import ConfigError, load_settings

from .conftest import Client, create_feature, stats

NEWLINES = ("%0A", "%0D%0A", "%0D")


@pytest.fixture
async def fid(client: Client, admin: dict[str, str]) -> int:
    return int((await create_feature(client, admin))["id"])


@pytest.mark.parametrize("tail", NEWLINES)
@pytest.mark.parametrize("method", ["PUT", "POST", "DELETE"])
async def test_a_vote_on_an_id_with_a_newline_is_404_and_counts_nothing(
    client: Client, voter: dict[str, str], fid: int, method: str, tail: str
) -> None:
    resp = await client.request(
        method, f"/features/{fid}{tail}/vote", json={"value": 1}, headers=voter
    )
    assert resp.status == 404, await resp.text()
    assert resp.content_type == "application/problem+json"
    assert (await stats(client))["total_votes"] == 0
    mine = await client.get("/me/votes", headers=voter)
    assert (await mine.json())["votes"] == {}


@pytest.mark.parametrize("tail", NEWLINES)
@pytest.mark.parametrize("method", ["GET", "PATCH", "DELETE"])
async def test_a_feature_id_with_a_newline_is_404(
    client: Client, admin: dict[str, str], fid: int, method: str, tail: str
) -> None:
    resp = await client.request(
        method, f"/features/{fid}{tail}", json={"title": "Renamed"}, headers=admin
    )
    assert resp.status == 404, await resp.text()
    still = await client.get(f"/features/{fid}")
    assert (await still.json())["title"] == "Dark mode"  # not renamed, not deleted


async def test_the_control_requests_without_a_newline_work(
    client: Client, voter: dict[str, str], fid: int
) -> None:
    vote = await client.put(f"/features/{fid}/vote", json={"value": 1}, headers=voter)
    assert vote.status == 200
    assert (await client.get("/features?limit=2")).status == 200
    assert (await client.get("/export.json?round=1")).status == 200


@pytest.mark.parametrize("tail", NEWLINES)
async def test_a_limit_with_a_newline_is_422(client: Client, fid: int, tail: str) -> None:
    resp = await client.get(f"/features?limit=2{tail}")
    assert resp.status == 422, await resp.text()
    assert (await resp.json())["errors"][0]["loc"] == "query.limit"


@pytest.mark.parametrize("tail", NEWLINES)
@pytest.mark.parametrize("path", ["/export.json", "/export.csv"])
async def test_a_round_query_with_a_newline_is_422(client: Client, path: str, tail: str) -> None:
    resp = await client.get(f"{path}?round=1{tail}")
    assert resp.status == 422, await resp.text()
    assert (await resp.json())["errors"][0]["loc"] == "query.round"


@pytest.mark.parametrize("tail", NEWLINES)
async def test_a_round_number_with_a_newline_is_404(
    client: Client, admin: dict[str, str], tail: str
) -> None:
    assert (await client.post("/board/reset", headers=admin)).status == 200  # round 1 closed
    assert (await client.get("/rounds/1")).status == 200
    resp = await client.get(f"/rounds/1{tail}")
    assert resp.status == 404, await resp.text()


@pytest.mark.parametrize("tail", NEWLINES)
async def test_a_cursor_with_a_newline_is_422(
    client: Client, admin: dict[str, str], tail: str
) -> None:
    for title in ("a", "b", "c"):
        await create_feature(client, admin, title)
    first = await (await client.get("/features?limit=1")).json()
    cursor = first["next_cursor"]
    assert (await client.get("/features", params={"limit": "1", "cursor": cursor})).status == 200
    resp = await client.get(f"/features?limit=1&cursor={cursor}{tail}")
    assert resp.status == 422, await resp.text()


def test_an_idempotency_key_must_match_whole() -> None:
    """No HTTP client can send a newline inside a header (it ends the field), so the rule
    itself is checked: a key with a trailing newline is not a key."""
    assert api._IDEMPOTENCY_KEY.fullmatch("abc-123")
    assert not api._IDEMPOTENCY_KEY.fullmatch("abc-123\n")
    assert not re.fullmatch(api._IDEMPOTENCY_KEY, "x" * 256)


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("FV_LOG_LEVEL", "info\n"),
        ("FV_LOG_FORMAT", "json\n"),
        ("FV_STORE", "memory\n"),
        ("FV_REDIS_PREFIX", "fv:\n"),
        ("FV_PUBLIC_URL", "https://votes.example\n"),
    ],
)
def test_a_setting_with_a_trailing_newline_is_refused(name: str, value: str) -> None:
    with pytest.raises(ConfigError) as refused:
        load_settings(env={name: value}, use_default_file=False)
    assert refused.value.setting == name.removeprefix("FV_").lower()
    load_settings(env={name: value.rstrip("\n")}, use_default_file=False)  # the control


