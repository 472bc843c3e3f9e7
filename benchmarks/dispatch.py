"""Dispatcher throughput benchmark (not a test).

200 conversations x 5 messages through the real dispatcher (inbox, per-conversation order, delivery) and
the real agent (memory, ReAct, chain and inbox state written together), on a scripted model that takes
100 ms per call, with a global concurrency limit of 64. Every answer takes two model calls (the ReAct step
and the extract step), so the ideal is limit / (2 x 100 ms) messages per second. Prints throughput against
that ideal and checks that every conversation's replies came in order. Run with `make bench`.
"""

from __future__ import annotations

import argparse
import asyncio
import sqlite3
import tempfile
import time
from pathlib import Path

from agent.engines import ScriptedEngine, scripted_model
from agent.engines.scripted import echo
from agent.inbox import Inbox
from agent.memory import ChainRecord, Memory
from agent.messages import IncomingMessage, Reply
from agent.runtime import Agent, AgentOptions, Commit
from agent.store import Store
from agent.tools import BUILTIN_TOOLS, ToolRegistry, ToolRunner
from bot.dispatcher import Dispatcher, DispatchOptions, Responder

MODEL_CALLS_PER_ANSWER = 2


class CountingPlatform:
    """Delivers into lists per conversation, as fast as possible."""

    name = "bench"
    resumable = True

    def __init__(self) -> None:
        self.replies: dict[str, list[str]] = {}

    async def deliver(self, message: IncomingMessage, reply: Reply, key: str) -> None:
        self.replies.setdefault(message.channel, []).append(reply.text)


class ModelOnly:
    """A responder that only waits for its two model calls and records the reply: the dispatcher's own cost."""

    def __init__(self, memory: Memory, latency_s: float) -> None:
        self.memory = memory
        self.latency_s = latency_s
        self.calls = 0

    async def respond(self, message: IncomingMessage, *, commit: Commit | None = None) -> Reply:
        for _ in range(MODEL_CALLS_PER_ANSWER):
            self.calls += 1
            await asyncio.sleep(self.latency_s)
        reply = Reply(f"re: {message.text}")
        chain = ChainRecord(message.text, reply.text, "answered", "sleep", time.time(), 0.0)

        def also(db: sqlite3.Connection, chain_id: int) -> None:
            if commit is not None:
                commit(db, reply)

        await self.memory.record_exchange(message.conversation, chain, reply_text=reply.text, also=also)
        return reply


async def run(
    conversations: int, messages: int, latency_s: float, limit: int, *, full_agent: bool
) -> dict[str, float | bool]:
    with tempfile.TemporaryDirectory() as tmp:
        store = await Store.open(Path(tmp) / "bench.db")
        runner = ToolRunner(ToolRegistry.of(*BUILTIN_TOOLS))
        try:
            engine = ScriptedEngine(responder=echo, delay_s=latency_s)
            agent: Responder
            if full_agent:
                agent = Agent(Memory(store), scripted_model(engine), runner, AgentOptions(concurrency=limit))
            else:
                agent = ModelOnly(Memory(store), latency_s)
            platform = CountingPlatform()
            options = DispatchOptions(concurrency=limit, rate_limit=None)
            async with Dispatcher(Inbox(store), agent, [platform], options) as dispatcher:
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
            await store.close()
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
        "model_calls": (len(engine.requests) if full_agent else agent.calls) / total,
        "in_order": in_order,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--conversations", type=int, default=200)
    parser.add_argument("--messages", type=int, default=5)
    parser.add_argument("--latency-ms", type=float, default=100.0)
    parser.add_argument("--limit", type=int, default=64)
    args = parser.parse_args()
    print(
        f"\nDispatcher: {args.conversations} conversations x {args.messages} messages, "
        f"model {args.latency_ms:g} ms per call, limit {args.limit}"
    )
    print(
        f"{'responder':<12} {'messages':>9} {'seconds':>8} {'msg/s':>8} {'ideal':>8} {'of ideal':>9} "
        f"{'calls/msg':>10} {'order':>6}"
    )
    for label, full_agent in (("model only", False), ("full agent", True)):
        result = asyncio.run(
            run(args.conversations, args.messages, args.latency_ms / 1000, args.limit, full_agent=full_agent)
        )
        share = result["throughput"] / result["ideal"]
        print(
            f"{label:<12} {result['messages']:>9.0f} {result['seconds']:>8.2f} {result['throughput']:>8.1f} "
            f"{result['ideal']:>8.1f} {share:>9.1%} {result['model_calls']:>10.1f} "
            f"{'held' if result['in_order'] else 'BROKEN':>6}"
        )
    print("target: at least 90% of ideal, order held in every conversation")


if __name__ == "__main__":
    main()
