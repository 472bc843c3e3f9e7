"""Agent pipeline overhead benchmark (not a test).

The same questions through Parley's agent path (memory context, the tool runner with validation and an
execution record per call, step recording, the chain and turns written to SQLite) and through a bare
`dspy.ReAct` with the same tools, both on a zero-latency scripted engine. Runs of 1 and 5 tool steps.
Prints time per question for both, the ratio, and model calls per answered question. Run with `make bench`.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import dspy
from dspy.lm15 import Request

from agent.engines import ScriptedEngine, scripted_model
from agent.engines.scripted import request_text
from agent.messages import IncomingMessage
from agent.runtime import Agent, AgentOptions, Answer
from agent.storage import open_storage
from agent.tools import BUILTIN_TOOLS, ToolRegistry, ToolRunner
from bot.answering import answer


def responder(tool_steps: int) -> Callable[[Request], dict[str, object]]:
    """A model that calls the calculator `tool_steps` times, then finishes, then answers."""

    def respond(request: Request) -> dict[str, object]:
        text = request_text(request)
        if "next_thought" not in text:
            return {"reasoning": "computed", "answer": "84"}
        done = text.count("[[ ## observation_")
        if done < tool_steps:
            return {
                "next_thought": "compute",
                "next_tool_name": "calculator",
                "next_tool_args": {"expression": f"12*{done + 1}"},
            }
        return {"next_thought": "done", "next_tool_name": "finish", "next_tool_args": {}}

    return respond


async def timed(ask: Callable[[int], Awaitable[object]], questions: int) -> list[float]:
    for i in range(5):  # warm-up
        await ask(i)
    samples = []
    for i in range(questions):
        started = time.perf_counter()
        await ask(i)
        samples.append((time.perf_counter() - started) * 1000)
    return samples


async def bench(tool_steps: int, questions: int, workdir: Path) -> dict[str, float]:
    engine = ScriptedEngine(responder=responder(tool_steps))
    model = scripted_model(engine)

    bare = dspy.ReAct(Answer, tools=list(BUILTIN_TOOLS), max_iters=tool_steps + 2)

    async def ask_bare(i: int) -> object:
        with dspy.context(lm=model.lm, adapter=dspy.JSONAdapter()):
            return await bare.acall(context="(nothing remembered yet)", question=f"what is 12*7? ({i})")

    storage = await open_storage(path=workdir / f"bench-{tool_steps}.db")
    runner = ToolRunner(ToolRegistry.of(*BUILTIN_TOOLS), storage.executions)
    agent = Agent(storage, model, runner, AgentOptions(max_iters=tool_steps + 2))

    async def ask_parley(i: int) -> object:
        message = IncomingMessage(platform="console", channel=f"c{i % 20}", user="u", text=f"what is 12*7? ({i})")
        reply = await answer(agent, storage, message)
        assert reply.status == "answered", reply.text
        return reply

    # Interleave rounds so drift (CPU frequency, caches) hits both paths alike.
    bare_ms: list[float] = []
    parley_ms: list[float] = []
    for _ in range(3):
        bare_ms += await timed(ask_bare, questions // 3)
        before = len(engine.requests)
        parley_ms += await timed(ask_parley, questions // 3)
        calls = (len(engine.requests) - before) / (questions // 3 + 5)
    runner.close()
    await storage.close()
    return {
        "steps": tool_steps,
        "bare": statistics.median(bare_ms),
        "parley": statistics.median(parley_ms),
        "calls": calls,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--questions", type=int, default=150, help="questions per path and step count")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        rows = [asyncio.run(bench(n, args.questions, Path(tmp))) for n in (1, 5)]
    print(f"{'tool steps':>10} {'bare ReAct ms':>14} {'Parley ms':>10} {'ratio':>6} {'model calls/answer':>19}")
    for r in rows:
        ratio = r["parley"] / r["bare"]
        print(f"{r['steps']:>10} {r['bare']:>14.2f} {r['parley']:>10.2f} {ratio:>6.2f} {r['calls']:>19.1f}")
    print("median per question; target: ratio <= 1.15 at 1 step, < 1.00 at 5 steps")


if __name__ == "__main__":
    main()
