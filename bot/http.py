"""Parley's one HTTP server (aiohttp): Slack's events endpoint, health, readiness and metrics."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

from adapters.slack import SlackAdapter

Readiness = Callable[[], Awaitable[dict[str, object]]]


def build_http_app(*, slack: SlackAdapter | None, readiness: Readiness) -> web.Application:
    """`POST /slack/events` (when Slack runs in HTTP mode), `GET /healthz`, `GET /readyz`, `GET /metrics`."""
    app = web.Application(client_max_size=1024**2)

    async def healthz(request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def readyz(request: web.Request) -> web.Response:
        checks = await readiness()
        ready = all(v is True or (isinstance(v, dict) and v.get("ok")) for v in checks.values())
        body = json.dumps({"ready": ready, "checks": checks}, default=str)
        return web.Response(text=body, status=200 if ready else 503, content_type="application/json")

    async def metrics(request: web.Request) -> web.Response:
        return web.Response(body=generate_latest(REGISTRY), headers={"Content-Type": CONTENT_TYPE_LATEST})

    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
    if slack is not None:
        app.router.add_post("/slack/events", slack.handle_http)
    return app


async def serve(app: web.Application, host: str, port: int) -> web.AppRunner:
    """Start listening; the caller cleans the returned runner up on shutdown."""
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    return runner
