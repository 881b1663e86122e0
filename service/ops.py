"""Operations endpoints: health, readiness, metrics, the OpenAPI document and its docs page."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Final

import aiohttp_jinja2
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from . import keys
from .errors import RETRY_AFTER_SECONDS, problem_response
from .schemas import Health, encoder
from .store import StoreUnavailable

READY_TIMEOUT: Final = 1.0
_HEALTHY: Final = encoder.encode(Health(status="ok"))

routes = web.RouteTableDef()


@routes.get("/healthz")
async def healthz(request: web.Request) -> web.Response:
    return web.Response(body=_HEALTHY, content_type="application/json")


@routes.get("/readyz")
async def readyz(request: web.Request) -> web.Response:
    retry = {"Retry-After": RETRY_AFTER_SECONDS}
    if request.app[keys.LIFECYCLE].draining:
        return problem_response(503, "this instance is shutting down", headers=retry)
    try:
        await asyncio.wait_for(request.app[keys.STORE].ping(), READY_TIMEOUT)
    except (StoreUnavailable, TimeoutError) as exc:
        return problem_response(503, f"the store is not reachable: {exc}", headers=retry)
    return web.Response(body=_HEALTHY, content_type="application/json")


@routes.get("/metrics")
async def metrics(request: web.Request) -> web.Response:
    instance = request.app[keys.METRICS]
    with contextlib.suppress(StoreUnavailable):  # the rest of the scrape still answers
        instance.boards.set(await request.app[keys.CORE].boards.count())
    body = generate_latest(instance.registry)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


@routes.get("/openapi.json")
async def openapi(request: web.Request) -> web.Response:
    return web.Response(body=request.app[keys.OPENAPI_BODY], content_type="application/json")


@routes.get("/docs")
@aiohttp_jinja2.template("docs.html")
async def docs(request: web.Request) -> dict[str, str]:
    return {"title": "Feature Votes API"}
