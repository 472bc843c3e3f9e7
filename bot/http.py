"""Parley's one HTTP server (aiohttp): Slack's events endpoint, health, readiness and metrics."""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable

from aiohttp import web
from aiohttp.typedefs import Handler
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest
from structlog.contextvars import bound_contextvars

from adapters.slack import SlackAdapter
from agent.messages import APOLOGY, new_error_id

log = logging.getLogger("parley.http")

Readiness = Callable[[], Awaitable[dict[str, object]]]
SLACK_EVENTS = "/slack/events"


@web.middleware
async def last_resort(request: web.Request, handler: Handler) -> web.StreamResponse:
    """No request from outside gets a 500: what a handler failed on is logged once with an error id (an error
    log is a Sentry event) and answered with the id; for Slack a 200, so Slack does not resend it three times."""
    try:
        return await handler(request)
    except web.HTTPException:
        raise  # aiohttp's own answers: 404, 405, 413 for a body over the size limit
    except Exception as exc:
        error_id = new_error_id()
        with bound_contextvars(error_id=error_id):
            log.error("%s %s failed (error id %s)", request.method, request.path, error_id, exc_info=exc)
        body = {"ok": False, "error_id": error_id, "text": APOLOGY.format(error_id=error_id)}
        return web.json_response(body, status=200 if request.path == SLACK_EVENTS else 503)


def build_http_app(*, slack: SlackAdapter | None, readiness: Readiness) -> web.Application:
    """`POST /slack/events` (when Slack runs in HTTP mode), `GET /healthz`, `GET /readyz`, `GET /metrics`."""
    app = web.Application(client_max_size=1024**2, middlewares=[last_resort])

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
        app.router.add_post(SLACK_EVENTS, slack.handle_http)
    return app


async def serve(app: web.Application, host: str, port: int) -> web.AppRunner:
    """Start listening; the caller cleans the returned runner up on shutdown."""
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    return runner
