"""Parley's Slack path served for a benchmark: the dispatcher, the adapter and the HTTP app, on 127.0.0.1."""

from __future__ import annotations

from contextlib import AsyncExitStack

from adapters.slack import SlackAdapter
from agent.ports import Handlers
from bot.dispatcher import Dispatcher
from bot.http import build_http_app, serve


async def serve_slack(adapter: SlackAdapter, dispatcher: Dispatcher, stack: AsyncExitStack) -> str:
    """Connect the adapter to the dispatcher, serve `POST /slack/events` on a free port, and return its URL.
    Unwound in reverse: the HTTP server first, then the adapter's background calls, then the dispatcher."""
    adapter.connect(Handlers(dispatcher.submit, dispatcher.decide, stop=dispatcher.stop_answer))

    async def ready() -> dict[str, object]:
        return {"database": True}

    http = await serve(build_http_app(slack=adapter, readiness=ready), "127.0.0.1", 0)
    await stack.enter_async_context(dispatcher)
    stack.push_async_callback(adapter.close)
    stack.push_async_callback(http.cleanup)
    return f"http://127.0.0.1:{http.addresses[0][1]}/slack/events"
