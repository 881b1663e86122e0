"""/ws limits at their edges, with real aiohttp clients over loopback sockets."""

from __future__ import annotations

import pytest
from aiohttp import WSMsgType

from service.app import create_app

from .conftest import AiohttpClient, make_settings
from .test_ws import receive_json, wait_closed

MAX_MSG = 256


@pytest.mark.parametrize("size", [MAX_MSG - 1, MAX_MSG])
async def test_a_message_of_at_most_ws_max_msg_size_is_answered(
    aiohttp_client: AiohttpClient, size: int
) -> None:
    client = await aiohttp_client(create_app(make_settings(ws_max_msg_size=MAX_MSG)))
    async with client.ws_connect("/ws") as ws:
        await receive_json(ws)
        # Valid JSON of exactly `size` bytes: {"type":"ping","pad":"xxx..."}
        head = '{"type":"ping","pad":"'
        message = head + "x" * (size - len(head) - 2) + '"}'
        assert len(message.encode()) == size
        await ws.send_str(message)
        answer = await receive_json(ws)
        assert answer["type"] in ("pong", "error"), answer
        assert not ws.closed


async def test_one_byte_over_ws_max_msg_size_closes_with_1009(
    aiohttp_client: AiohttpClient,
) -> None:
    client = await aiohttp_client(create_app(make_settings(ws_max_msg_size=MAX_MSG)))
    async with client.ws_connect("/ws") as ws:
        await receive_json(ws)
        await ws.send_str("x" * (MAX_MSG + 1))
        msg = await wait_closed(ws, 5)
        assert msg.type is WSMsgType.CLOSE, (msg.type, msg.data)
        assert msg.data == 1009
