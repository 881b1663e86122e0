"""The happy path end to end: token, propose, vote, stats."""

from __future__ import annotations

from .conftest import Client, create_feature, stats


async def test_vote_moves_stats(client: Client, voter: dict[str, str]) -> None:
    feature = await create_feature(client, voter)
    before = await stats(client)
    resp = await client.put(f"/features/{feature['id']}/vote", json={"value": 1}, headers=voter)
    assert resp.status == 200
    assert await resp.json() == {"feature_id": feature["id"], "value": 1, "up": 1, "down": 0,
                                 "score": 1}
    after = await stats(client)
    assert after["seq"] > before["seq"]
    assert (after["up"], after["total_votes"], after["voters"]) == (1, 1, 1)
    assert after["top"][0]["id"] == feature["id"]
