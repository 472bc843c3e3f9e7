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

Then the answer's own text: a model that writes a longer answer at a steady pace (`--write-chars-per-s`), the
same pace whether it streams its reply or hands it over whole. For each event, the time from its acknowledgement
to the first call that shows answer text in its thread, and to the end of the answer (the stream's stop, or the
post), with the model streaming and not.
Run alone with `python -m benchmarks.slack --progress-only`.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import tempfile
import time
from contextlib import AsyncExitStack
from dataclasses import dataclass
from functools import partial
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
SHORT_ANSWER = "It is **42**."
# What a model writes at length: about 600 characters (some 150 tokens).
LONG_ANSWER = " ".join(
    f"Step {i}: the calculator says 6*7 is **42**, and the answer follows from it as shown." for i in range(7)
)
# The model's pace when it writes the long answer: 8 characters a chunk.
CHUNK_CHARS = 8


def one_tool(request: Request, answer: str = SHORT_ANSWER) -> dict[str, Any]:
    """The calculator, then the answer: one task card and the text, as a typical tool answer streams."""
    text = request_text(request)
    if "next_tool_name" not in text:
        return {"reasoning": "computed", "answer": answer}
    if "[[ ## tool_name_0 ## ]]" not in text:
        return {"next_thought": "compute", "next_tool_name": "calculator", "next_tool_args": {"expression": "6*7"}}
    return {"next_thought": "done", "next_tool_name": "finish", "next_tool_args": {}}


def shows_text(call: Any) -> bool:
    """Whether a Web API call puts answer text in the thread (a stream's markdown, or a posted reply)."""
    if call.method == "chat.postMessage":
        return True
    if call.method not in ("chat.appendStream", "chat.stopStream"):
        return False
    chunks = call.params.get("chunks") or []
    if isinstance(chunks, str):
        chunks = json.loads(chunks)
    return any(c.get("type") == "markdown_text" and c.get("text", "").strip("_ \n") for c in chunks)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * len(ordered)) - 1))]


@dataclass
class Progress:
    name: str
    latencies_ms: list[float]
    calls_per_answer: float
    streamed: int
    answers: int
    # From the acknowledgement to the first answer text in the thread, and to the answer's end.
    text_ms: list[float]
    done_ms: list[float]

    def percentile(self, q: float) -> float:
        return percentile(self.latencies_ms, q)

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
    answer: str = SHORT_ANSWER,
    model_streams: bool = False,
    chunk_delay_s: float = 0.0,
) -> Progress:
    """Send `events` mentions `gap_s` apart over `channels` channels and time each one's first visible sign, its
    first answer text and its end."""
    with FakeSlack() as fake, tempfile.TemporaryDirectory() as tmp:
        async with AsyncExitStack() as stack:
            storage = await open_storage(path=Path(tmp) / "bench.db")
            stack.push_async_callback(storage.close)
            runner = ToolRunner(ToolRegistry.of(*BUILTIN_TOOLS))
            stack.callback(runner.close)
            engine = ScriptedEngine(
                responder=partial(one_tool, answer=answer),
                delay_s=model_s,
                streams=model_streams,
                chunk_chars=CHUNK_CHARS,
                chunk_delay_s=chunk_delay_s,
            )
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
            thread_of: dict[str, str] = {}  # a stream's ts -> the thread it answers in
            text: dict[str, float] = {}
            done: dict[str, float] = {}
            for call in calls:
                where = VISIBLE.get(call.method)
                ts = str(call.params.get(where, "")) if where else ""
                if ts in acked and call.ok:
                    first[ts] = min(first.get(ts, call.at), call.at)
                if call.method == "chat.startStream" and call.ok and call.response:
                    thread_of[str(call.response.get("ts"))] = str(call.params.get("thread_ts"))
                thread = str(call.params.get("thread_ts") or thread_of.get(str(call.params.get("ts")), ""))
                if thread in acked and call.ok and shows_text(call):
                    text.setdefault(thread, call.at)
                if thread in acked and call.ok and call.method in ("chat.stopStream", "chat.postMessage"):
                    done[thread] = max(done.get(thread, call.at), call.at)
            latencies = [max(0.0, first[ts] - acked[ts]) * 1000 for ts in acked if ts in first]
            text_ms = [max(0.0, text[ts] - acked[ts]) * 1000 for ts in acked if ts in text]
            done_ms = [max(0.0, done[ts] - acked[ts]) * 1000 for ts in acked if ts in done]
            streamed = len({c.params.get("thread_ts") for c in calls if c.method == "chat.startStream" and c.ok})
            return Progress(name, latencies, len(calls) / events, streamed, events, text_ms, done_ms)


def report(
    events: int, gap_s: float, model_s: float, workers: int, channels: int, write_chars_per_s: float = 400.0
) -> None:
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
    answer_report(raised, write_chars_per_s, common)


def answer_report(limits: StreamLimits, write_chars_per_s: float, common: dict[str, Any]) -> None:
    """The long answer, written at `write_chars_per_s`, streamed by the model or handed over whole."""
    pace = {"answer": LONG_ANSWER, "chunk_delay_s": CHUNK_CHARS / write_chars_per_s}
    runs = [
        asyncio.run(measure("model streams", stream=True, limits=limits, model_streams=True, **pace, **common)),
        asyncio.run(measure("model writes whole", stream=True, limits=limits, **pace, **common)),
    ]
    print(
        f"\nThe answer's text: {len(LONG_ANSWER)} characters written at {write_chars_per_s:.0f} characters/s "
        "(the same pace streamed or not), streaming on, start budget raised"
    )
    print(f"{'run':<20} {'text p50':>9} {'text p95':>9} {'end p50':>9} {'end p95':>9} {'calls/answer':>13}")
    for run in runs:
        print(
            f"{run.name:<20} {statistics.median(run.text_ms):>9.0f} {percentile(run.text_ms, 0.95):>9.0f} "
            f"{statistics.median(run.done_ms):>9.0f} {percentile(run.done_ms, 0.95):>9.0f} "
            f"{run.calls_per_answer:>13.2f}"
        )
