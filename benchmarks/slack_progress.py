"""How soon a person sees that Parley works on their Slack message, streaming on and off (not a test).

Signed `app_mention` events go through Parley's real `POST /slack/events` (Bolt, the adapter, the dispatcher's
inbox, the real agent on a scripted model that takes `--model-s` per call and calls one tool) to the fake Slack
(tests/fakes/slack.py, its own thread on 127.0.0.1), which stamps every Web API call as it arrives. For each
event: the time from its acknowledgement (the HTTP response to the event, as the sender sees it) to the first
call that shows something in its thread: the stream's start (streaming on), else the progress reaction or the
reply itself (streaming off). Also the Web API calls per answer (auth.test aside).

Three runs: streaming off; on, with the start budget raised above Slack's so every answer streams (the fake has
no rate limits; Slack's Tier 2 allows 20+ chat.startStream calls a minute per workspace); on, within that budget
(answers beyond it are posted whole, with the reaction as their sign of progress).
Run alone with `python -m benchmarks.slack --progress-only`.
"""

from __future__ import annotations

import asyncio
import statistics
import tempfile
import time
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
from dspy.lm15 import Request

from adapters.slack import SlackAdapter, SlackConfig
from adapters.slack_stream import StreamLimits
from agent.engines import ScriptedEngine, scripted_model
from agent.engines.scripted import request_text
from agent.runtime import Agent, AgentOptions
from agent.storage import open_storage
from agent.tools import BUILTIN_TOOLS, ToolRegistry, ToolRunner
from benchmarks.serving import serve_slack
from bot.dispatcher import Dispatcher, DispatchOptions
from tests.fakes.slack import FakeSlack, event_callback_body, slack_headers

SECRET = "bench-signing-secret"
TARGET_P95_MS = 300.0
# What shows a person, in their thread, that Parley is on it (the approval prompt is not among them here).
VISIBLE = {"chat.startStream": "thread_ts", "reactions.add": "timestamp", "chat.postMessage": "thread_ts"}


def one_tool(request: Request) -> dict[str, Any]:
    """The calculator, then the answer: one task card and the text, as a typical tool answer streams."""
    text = request_text(request)
    if "next_tool_name" not in text:
        return {"reasoning": "computed", "answer": "It is **42**."}
    if "[[ ## tool_name_0 ## ]]" not in text:
        return {"next_thought": "compute", "next_tool_name": "calculator", "next_tool_args": {"expression": "6*7"}}
    return {"next_thought": "done", "next_tool_name": "finish", "next_tool_args": {}}


@dataclass
class Progress:
    name: str
    latencies_ms: list[float]
    calls_per_answer: float
    streamed: int
    answers: int

    def percentile(self, q: float) -> float:
        ordered = sorted(self.latencies_ms)
        return ordered[min(len(ordered) - 1, max(0, round(q * len(ordered)) - 1))]

    @property
    def p50(self) -> float:
        return statistics.median(self.latencies_ms)


async def measure(
    name: str,
    *,
    stream: bool,
    limits: StreamLimits,
    events: int,
    gap_s: float,
    model_s: float,
    workers: int,
    channels: int,
) -> Progress:
    """Send `events` mentions `gap_s` apart over `channels` channels and time each one's first visible sign."""
    with FakeSlack() as fake, tempfile.TemporaryDirectory() as tmp:
        async with AsyncExitStack() as stack:
            storage = await open_storage(path=Path(tmp) / "bench.db")
            stack.push_async_callback(storage.close)
            runner = ToolRunner(ToolRegistry.of(*BUILTIN_TOOLS))
            stack.callback(runner.close)
            engine = ScriptedEngine(responder=one_tool, delay_s=model_s)
            agent = Agent(storage, scripted_model(engine), runner, AgentOptions(concurrency=workers, max_iters=3))
            config = SlackConfig(fake.bot_token, SECRET, api_url=fake.api_url, stream=stream)
            adapter = SlackAdapter(config)
            adapter.streams.limits = limits
            dispatcher = Dispatcher(storage, agent, [adapter], DispatchOptions(rate_limit=None, concurrency=workers))
            url = await serve_slack(adapter, dispatcher, stack)
            acked: dict[str, float] = {}
            now = int(time.time())
            async with aiohttp.ClientSession() as session:

                async def mention(i: int) -> None:
                    ts = f"{now}.{i:06d}"
                    event = {"type": "app_mention", "user": f"U{i % 7}", "text": f"<@UBOT> q{i}", "ts": ts}
                    body = event_callback_body({**event, "channel": f"C{i % channels}"}, event_id=f"Ev{i:06d}")
                    async with session.post(url, data=body, headers=slack_headers(SECRET, body)) as answer:
                        await answer.read()
                        acked[ts] = time.time()

                sends = []
                for i in range(events):
                    sends.append(asyncio.create_task(mention(i)))
                    await asyncio.sleep(gap_s)
                await asyncio.gather(*sends)
                await fake.wait_for(lambda: len(acked) == events, timeout_s=60)
                await dispatcher.join()
                await asyncio.gather(*adapter._background, return_exceptions=True)
            calls = [c for c in fake.calls if c.method != "auth.test"]
            first: dict[str, float] = {}
            for call in calls:
                where = VISIBLE.get(call.method)
                ts = str(call.params.get(where, "")) if where else ""
                if ts in acked and call.ok:
                    first[ts] = min(first.get(ts, call.at), call.at)
            latencies = [max(0.0, first[ts] - acked[ts]) * 1000 for ts in acked if ts in first]
            streamed = len({c.params.get("thread_ts") for c in calls if c.method == "chat.startStream" and c.ok})
            return Progress(name, latencies, len(calls) / events, streamed, events)


def report(events: int, gap_s: float, model_s: float, workers: int, channels: int) -> None:
    """Measure the three runs and print their table."""
    raised = StreamLimits(starts_per_minute=100_000, appends_per_minute=100_000)
    common: dict[str, Any] = {
        "events": events,
        "gap_s": gap_s,
        "model_s": model_s,
        "workers": workers,
        "channels": channels,
    }
    runs = [
        asyncio.run(measure("streaming off", stream=False, limits=StreamLimits(), **common)),
        asyncio.run(measure("streaming on", stream=True, limits=raised, **common)),
        asyncio.run(measure("on, Slack's budget", stream=True, limits=StreamLimits(), **common)),
    ]
    print(
        f"\nFirst visible progress after the event's acknowledgement: {events} mentions {gap_s * 1000:.0f} ms apart "
        f"over {channels} channels, model {model_s * 1000:.0f} ms per call, one tool step (3 model calls), "
        f"Parley workers {workers}"
    )
    print(f"{'run':<20} {'p50 ms':>8} {'p95 ms':>8} {'max ms':>8} {'calls/answer':>13} {'streamed':>9}")
    for run in runs:
        print(
            f"{run.name:<20} {run.p50:>8.1f} {run.percentile(0.95):>8.1f} {max(run.latencies_ms):>8.1f} "
            f"{run.calls_per_answer:>13.2f} {run.streamed:>5}/{run.answers}"
        )
    p95 = runs[1].percentile(0.95)
    print(f"target: p95 <= {TARGET_P95_MS:.0f} ms with streaming on: {'met' if p95 <= TARGET_P95_MS else 'MISSED'}")
