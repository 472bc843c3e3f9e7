"""Slack adapter throughput benchmark (not a test).

Signed `app_mention` events through Parley's real `POST /slack/events` (bot/http, Bolt's signature check, the
adapter, the dispatcher's inbox, the real agent with memory and ReAct on a zero-latency scripted model, the
reply posted with chat.postMessage), against a bare slack-bolt `AsyncApp` that posts a fixed reply from its
`app_mention` listener, served the same way by aiohttp. Both talk to the same kind of fake Slack Web API
(tests/fakes/slack.py, its own thread on 127.0.0.1, so Slack answers at once but over real HTTP). Events go
over 50 channels from a bounded number of concurrent clients; a run lasts from the first send until the fake
has received one posted reply per event. Each side runs twice (fresh fake and database each time, warmed up
first) and keeps its better run. Prints events per second for both and the ratio, then how soon a person sees
progress with streaming on and off, and the Web API calls per answer (benchmarks/slack_progress.py). Run with
`make bench`.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web
from slack_bolt.adapter.aiohttp import to_aiohttp_response, to_bolt_request
from slack_bolt.app.async_app import AsyncApp
from slack_sdk.web.async_client import AsyncWebClient

from adapters.slack import SlackAdapter, SlackConfig
from agent.engines import ScriptedEngine, scripted_model
from agent.engines.scripted import echo
from agent.runtime import Agent, AgentOptions
from agent.storage import open_storage
from agent.tools import BUILTIN_TOOLS, ToolRegistry, ToolRunner
from benchmarks.dispatch import ModelOnly
from benchmarks.serving import serve_slack
from benchmarks.slack_progress import report as progress_report
from bot.dispatcher import Dispatcher, DispatchOptions, Responder
from bot.http import serve
from tests.fakes.slack import FakeSlack, event_callback_body, slack_headers

SECRET = "bench-signing-secret"
CHANNELS = 50
TARGET = 0.8
QUIET = ("slack_bolt", "slack_sdk", "parley", "aiohttp", "asyncio", "LiteLLM", "dspy", "httpx")

# Starts one side on the running loop (cleanup pushed onto the stack) and returns its events URL.
Start = Callable[[FakeSlack, int, AsyncExitStack, Path], Awaitable[str]]


@dataclass
class Result:
    name: str
    events: int
    seconds: float

    @property
    def rate(self) -> float:
        return self.events / self.seconds


async def start_parley(
    fake: FakeSlack, concurrency: int, stack: AsyncExitStack, workdir: Path, *, full_agent: bool = True
) -> str:
    """The production wiring (as in tests/test_slack.py): real storage, agent, dispatcher, adapter and HTTP app.
    Without `full_agent` the responder only records the exchange: what Parley's Slack path costs on its own."""
    storage = await open_storage(path=workdir / "bench.db")
    stack.push_async_callback(storage.close)
    runner = ToolRunner(ToolRegistry.of(*BUILTIN_TOOLS))
    stack.callback(runner.close)
    engine = ScriptedEngine(responder=echo)
    agent: Responder = (
        Agent(storage, scripted_model(engine), runner, AgentOptions(concurrency=concurrency))
        if full_agent
        else ModelOnly(0.0)
    )
    config = SlackConfig(bot_token=fake.bot_token, signing_secret=SECRET, api_url=fake.api_url, stream=False)
    adapter = SlackAdapter(config)
    dispatcher = Dispatcher(storage, agent, [adapter], DispatchOptions(rate_limit=None, concurrency=concurrency))
    return await serve_slack(adapter, dispatcher, stack)


async def start_bare(fake: FakeSlack, concurrency: int, stack: AsyncExitStack, workdir: Path) -> str:
    """The smallest Bolt app that answers a mention: a fixed reply in the thread, posted before the ack."""
    client = AsyncWebClient(token=fake.bot_token, base_url=fake.api_url)
    app = AsyncApp(client=client, signing_secret=SECRET, process_before_response=True)

    @app.event("app_mention")
    async def mention(event: dict[str, Any], say: Any) -> None:
        await say(text="fixed reply", thread_ts=event["ts"])

    async def events(request: web.Request) -> web.Response:
        return await to_aiohttp_response(await app.async_dispatch(await to_bolt_request(request)))

    web_app = web.Application()
    web_app.router.add_post("/slack/events", events)
    http = await serve(web_app, "127.0.0.1", 0)
    stack.push_async_callback(http.cleanup)
    return f"http://127.0.0.1:{http.addresses[0][1]}/slack/events"


def mentions(prefix: str, count: int) -> list[bytes]:
    """`count` distinct app_mention bodies (unique event id and ts) spread over CHANNELS channels."""
    now = int(time.time())
    bodies = []
    for i in range(count):
        event = {
            "type": "app_mention",
            "user": f"U{i % 7}",
            "text": f"<@UBOT> question {prefix} {i}",
            "ts": f"{now}.{i:06d}",
            "channel": f"C{i % CHANNELS}",
            "event_ts": f"{now}.{i:06d}",
        }
        bodies.append(event_callback_body(event, event_id=f"Ev{prefix}{i:06d}"))
    return bodies


async def send_all(session: aiohttp.ClientSession, url: str, bodies: list[bytes], clients: int) -> None:
    """POST every body, signed, from `clients` concurrent senders; every answer must be a 200."""
    pending = iter(bodies)

    async def sender() -> None:
        for body in pending:
            async with session.post(url, data=body, headers=slack_headers(SECRET, body)) as answer:
                await answer.read()
                if answer.status != 200:
                    raise RuntimeError(f"/slack/events answered {answer.status}")

    await asyncio.gather(*(sender() for _ in range(clients)))


async def replies(fake: FakeSlack, count: int, timeout_s: float) -> None:
    await fake.wait_for(lambda: len(fake.posted()) >= count, timeout_s=timeout_s, what=f"{count} posted replies")


@asynccontextmanager
async def running(start: Start, fake: FakeSlack, concurrency: int) -> AsyncIterator[str]:
    with tempfile.TemporaryDirectory() as tmp:
        async with AsyncExitStack() as stack:
            yield await start(fake, concurrency, stack, Path(tmp))


async def run(name: str, start: Start, events: int, warmup: int, clients: int, concurrency: int) -> Result:
    with FakeSlack() as fake:
        async with running(start, fake, concurrency) as url:
            connector = aiohttp.TCPConnector(limit=clients)
            async with aiohttp.ClientSession(connector=connector) as session:
                await send_all(session, url, mentions("w", warmup), clients)
                await replies(fake, warmup, timeout_s=60)
                bodies = mentions("m", events)  # built before the clock starts; each is signed as it is sent
                started = time.perf_counter()
                await send_all(session, url, bodies, clients)
                await replies(fake, warmup + events, timeout_s=300)
                elapsed = time.perf_counter() - started
    return Result(name, events, elapsed)


def best(results: list[Result]) -> Result:
    return min(results, key=lambda r: r.seconds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=300, help="measured mention events per run")
    parser.add_argument("--warmup", type=int, default=20, help="events sent (and answered) before measuring")
    parser.add_argument("--concurrency", type=int, default=16, help="concurrent HTTP clients")
    parser.add_argument("--workers", type=int, default=16, help="Parley's dispatcher and agent concurrency")
    parser.add_argument("--rounds", type=int, default=2, help="runs per side; the better one is kept")
    parser.add_argument("--progress-only", action="store_true", help="only first visible progress (streaming)")
    parser.add_argument("--progress-events", type=int, default=100, help="mentions per progress run")
    parser.add_argument("--progress-gap-ms", type=float, default=50.0, help="between the progress run's mentions")
    parser.add_argument("--model-s", type=float, default=0.3, help="the progress runs' model latency per call")
    parser.add_argument("--progress-channels", type=int, default=100, help="channels the progress mentions go to")
    parser.add_argument("--progress-workers", type=int, default=32, help="Parley's concurrency in the progress runs")
    parser.add_argument(
        "--write-chars-per-s", type=float, default=400.0, help="the model's writing pace in the answer-text runs"
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    for name in QUIET:
        logging.getLogger(name).setLevel(logging.WARNING)
    if args.progress_only:
        progress_report(
            args.progress_events,
            args.progress_gap_ms / 1000,
            args.model_s,
            args.progress_workers,
            args.progress_channels,
            args.write_chars_per_s,
        )
        return

    sides: dict[str, Start] = {
        "bare Bolt app": start_bare,
        "Parley": start_parley,
        "Parley, no agent": partial(start_parley, full_agent=False),
    }
    runs: dict[str, list[Result]] = {name: [] for name in sides}
    # Alternate the sides so drift (CPU frequency, caches) hits all alike.
    for _ in range(args.rounds):
        for name, start in sides.items():
            runs[name].append(asyncio.run(run(name, start, args.events, args.warmup, args.concurrency, args.workers)))
    bare, parley, transport = (best(runs[name]) for name in sides)

    print(
        f"\nSlack /slack/events: {args.events} signed app_mention events over {CHANNELS} channels, "
        f"{args.concurrency} concurrent clients, Parley workers {args.workers}, zero-latency model, "
        f"best of {args.rounds}"
    )
    print(f"{'name':<17} {'events':>7} {'seconds':>8} {'events/s':>9} {'of bare':>8}")
    for r in (bare, parley, transport):
        print(f"{r.name:<17} {r.events:>7} {r.seconds:>8.2f} {r.rate:>9.1f} {r.rate / bare.rate:>8.2f}")
    ratio = parley.rate / bare.rate
    print(f"ratio Parley/bare: {ratio:.2f}  (target: >= {TARGET})  {'met' if ratio >= TARGET else 'MISSED'}")
    print("'Parley, no agent': the same path with a responder that only records the exchange (no DSPy)")
    progress_report(
        args.progress_events, args.progress_gap_ms / 1000, args.model_s, args.progress_workers, args.progress_channels
    )


if __name__ == "__main__":
    main()
