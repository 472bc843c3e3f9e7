"""Dispatcher throughput benchmark (not a test), on either engine of the storage seam (`--engine sqlite|postgres`).

200 conversations x 5 messages through the real dispatcher (inbox, per-conversation order, delivery) and
the real agent (memory, ReAct, chain and inbox state written together), on a scripted model that takes
100 ms per call, with a global concurrency limit of 64. Every answer takes two model calls (the ReAct step
and the extract step), so the ideal is limit / (2 x 100 ms) messages per second. Prints throughput against
that ideal and checks that every conversation's replies came in order. Run with `make bench`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import tempfile
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

from agent.engines import ScriptedEngine, scripted_model
from agent.engines.scripted import echo
from agent.messages import IncomingMessage, Reply
from agent.runtime import Agent, AgentOptions, Exchange
from agent.storage import Storage, open_storage
from agent.storage.models import ChainRecord
from agent.tools import BUILTIN_TOOLS, ToolRegistry, ToolRunner
from benchmarks.engines import ENGINES, drop_schema, postgres_server, prepare_schema, server_version
from bot.answering import Responder
from bot.dispatcher import Dispatcher, DispatchOptions

MODEL_CALLS_PER_ANSWER = 2
# The settings' default pool (PARLEY_DB__POOL_SIZE): what one replica of `parley run` opens.
POOL_SIZE = 10


class CountingPlatform:
    """Delivers into lists per conversation, as fast as possible."""

    name = "bench"
    resumable = True

    def __init__(self) -> None:
        self.replies: dict[str, list[str]] = {}

    async def deliver(self, message: IncomingMessage, reply: Reply, key: str) -> None:
        self.replies.setdefault(message.channel, []).append(reply.text)


class ModelOnly:
    """A responder that only waits for its two model calls: the dispatcher's own cost (the dispatcher records
    the exchange, as it does the agent's)."""

    def __init__(self, latency_s: float) -> None:
        self.latency_s = latency_s
        self.calls = 0

    async def respond(self, message: IncomingMessage, **_: object) -> Exchange:
        for _ in range(MODEL_CALLS_PER_ANSWER):
            self.calls += 1
            await asyncio.sleep(self.latency_s)
        reply = Reply(f"re: {message.text}")
        return Exchange(reply, ChainRecord(message.text, reply.text, "answered", "sleep", time.time(), 0.0))


@contextlib.asynccontextmanager
async def bench_storage(engine: str, dsn: str | None, pool_size: int) -> AsyncIterator[Storage]:
    """A fresh, empty database for one run: a temporary SQLite file, or a schema dropped afterwards."""
    if engine == "sqlite":
        with tempfile.TemporaryDirectory() as tmp:
            storage = await open_storage(path=Path(tmp) / "bench.db")
            try:
                yield storage
            finally:
                await storage.close()
        return
    assert dsn is not None
    schema = f"bench_dispatch_{uuid.uuid4().hex[:8]}"
    storage = await open_storage(url=await prepare_schema(dsn, schema, fresh=True), pool_size=pool_size)
    try:
        yield storage
    finally:
        await storage.close()
        await drop_schema(dsn, schema)


async def run(
    engine_name: str,
    dsn: str | None,
    conversations: int,
    messages: int,
    latency_s: float,
    limit: int,
    *,
    full_agent: bool,
    pool_size: int = POOL_SIZE,
) -> dict[str, float | bool]:
    async with bench_storage(engine_name, dsn, pool_size) as storage:
        runner = ToolRunner(ToolRegistry.of(*BUILTIN_TOOLS), storage.executions)
        try:
            engine = ScriptedEngine(responder=echo, delay_s=latency_s)
            model_only = ModelOnly(latency_s)
            agent: Responder = model_only
            if full_agent:
                agent = Agent(storage, scripted_model(engine), runner, AgentOptions(concurrency=limit))
            platform = CountingPlatform()
            options = DispatchOptions(concurrency=limit, rate_limit=None)
            async with Dispatcher(storage, agent, [platform], options) as dispatcher:
                started = time.perf_counter()
                for m in range(messages):
                    for c in range(conversations):
                        await dispatcher.submit(
                            IncomingMessage(
                                platform="bench", channel=f"c{c}", user=f"u{c}", text=f"c{c} m{m}", event_id=f"{c}-{m}"
                            )
                        )
                await dispatcher.join()
                elapsed = time.perf_counter() - started
        finally:
            runner.close()
    total = conversations * messages
    in_order = all(
        platform.replies.get(f"c{c}") == [f"re: c{c} m{m}" for m in range(messages)] for c in range(conversations)
    )
    ideal = limit / (MODEL_CALLS_PER_ANSWER * latency_s)
    return {
        "messages": total,
        "seconds": elapsed,
        "throughput": total / elapsed,
        "ideal": ideal,
        "model_calls": (len(engine.requests) if full_agent else model_only.calls) / total,
        "in_order": in_order,
    }


def report(engine: str, dsn: str | None, args: argparse.Namespace) -> None:
    print(
        f"{'responder':<12} {'messages':>9} {'seconds':>8} {'msg/s':>8} {'ideal':>8} {'of ideal':>9} "
        f"{'calls/msg':>10} {'order':>6}"
    )
    for label, full_agent in (("model only", False), ("full agent", True)):
        result = asyncio.run(
            run(
                engine,
                dsn,
                args.conversations,
                args.messages,
                args.latency_ms / 1000,
                args.limit,
                full_agent=full_agent,
                pool_size=args.pool_size,
            )
        )
        share = result["throughput"] / result["ideal"]
        print(
            f"{label:<12} {result['messages']:>9.0f} {result['seconds']:>8.2f} {result['throughput']:>8.1f} "
            f"{result['ideal']:>8.1f} {share:>9.1%} {result['model_calls']:>10.1f} "
            f"{'held' if result['in_order'] else 'BROKEN':>6}"
        )
    print("target: at least 90% of ideal, order held in every conversation")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--engine", choices=ENGINES, default="sqlite")
    parser.add_argument("--conversations", type=int, default=200)
    parser.add_argument("--messages", type=int, default=5)
    parser.add_argument("--latency-ms", type=float, default=100.0)
    parser.add_argument("--limit", type=int, default=64)
    parser.add_argument("--pool-size", type=int, default=POOL_SIZE, help="PostgreSQL connections")
    args = parser.parse_args()
    what = (
        f"{args.conversations} conversations x {args.messages} messages, model {args.latency_ms:g} ms per call, "
        f"limit {args.limit}"
    )
    if args.engine == "sqlite":
        print(f"\nDispatcher on SQLite: {what}")
        report("sqlite", None, args)
        return
    with postgres_server() as (dsn, where):
        print(f"\nDispatcher on PostgreSQL {asyncio.run(server_version(dsn))} ({where}, pool {args.pool_size}): {what}")
        report("postgres", dsn, args)


if __name__ == "__main__":
    main()
