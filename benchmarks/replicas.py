"""Replica benchmark (not a test): what 1, 2 and 3 `parley run` processes on one PostgreSQL database answer together,
and what the path adds to each answer beyond the model's own time.

Why real processes: the cost of several replicas is in what they share (the inbox, the conversation claims handed
from one process to the next, the database round trips), and on a small machine in the CPU they compete for; an
in-process dispatcher would show none of it. So, as in tests/test_replicas.py: real `parley run` processes on the
embedded PostgreSQL (or PARLEY_BENCH_PG_DSN), Slack over HTTP with the fake Slack (tests/fakes/slack.py), the fake
OpenAI-compatible model (tests/fakes/openai_server.py) taking 100 ms per call, the per-user rate limit off, and
every other setting at its default (agent.concurrency 8 per replica, claim_ttl_s 10, poll_s 1). The scheduler is
off, so no job runs in the middle of a measurement.

Each run sends N conversations x M messages (`what is K+1000?`, so each reply names the message it answers:
the calculator, then finish, then the extract step, three model calls). A conversation is a Slack thread and
sends its next message when the previous reply arrives, as a person would; events go round-robin over the
replicas' ports, as a load balancer sends them, so consecutive messages of one conversation usually land on
different replicas and the conversation's claim changes hands. With N above the replicas' slots this keeps them
all busy: throughput is messages over the time from the first POST to the last reply, against the ideal of every
slot always waiting on the model, min(N, replicas x concurrency) / (3 x 100 ms).

Added latency, per message: the time from the start of the event's POST to the arrival of its reply at the fake
Slack, minus the model time of that message (its model calls, counted from the fake model's requests, x 100 ms).
Under the full load it includes the wait for a slot and for the CPU; an idle phase before it (one conversation,
one message in flight in the whole system) shows the path alone. The replicas' CPU time per message (from /proc)
says what bounds throughput on a small machine. Run with `make bench`.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from benchmarks.engines import drop_schema, postgres_server, prepare_schema, server_version
from tests.fakes.openai_server import FakeOpenAI
from tests.fakes.slack import FakeSlack, event_callback_body, slack_headers

SECRET = "bench-replicas-secret"
CALLS_PER_ANSWER = 3  # calculator step, finish step, extract step
IDLE_MESSAGES = 20
QUESTION = re.compile(r"\[\[ ## question ## \]\]\n[^\n]*?what is (\d+)\+1000\?")


class TimedSlack(FakeSlack):
    """The fake Slack, telling `on_post` when each chat.postMessage arrived (before it is answered), with its
    parameters. Called on the fake's own thread."""

    def __init__(self, on_post: Callable[[float, dict[str, Any]], None]) -> None:
        super().__init__()
        self.on_post = on_post

    async def _api(self, request: web.Request) -> web.StreamResponse:
        arrived = time.perf_counter()
        response = await super()._api(request)
        if request.match_info["method"] == "chat.postMessage" and response.status == 200:
            self.on_post(arrived, await request.json())  # aiohttp keeps the body: this reads it again
        return response


@dataclass
class Replica:
    """One `parley run` process serving Slack over HTTP on its own port; its stderr goes to a file."""

    port: int
    proc: subprocess.Popen[bytes]
    log: Path

    @property
    def events_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/slack/events"

    def failure(self) -> str:
        return f"replica on port {self.port} exited {self.proc.returncode}:\n{self.log.read_text()[-3000:]}"


@dataclass
class Phase:
    """What one phase measured: seconds from the first POST to the last reply, per message the added latency and
    model calls, and the CPU seconds the replicas and this process (the fakes, the sender) spent."""

    messages: int
    seconds: float
    added_s: list[float]
    calls: list[int]
    answered_once: bool
    resent: int
    replica_cpu_s: float
    own_cpu_s: float
    busy_cores: float

    @property
    def throughput(self) -> float:
        return self.messages / self.seconds

    def added_percentile(self, q: int) -> float:
        return statistics.quantiles(self.added_s, n=100, method="inclusive")[q - 1]


@dataclass
class Traffic:
    """Sends the events and matches the replies: a conversation is a Slack thread with one message in flight."""

    replicas: list[Replica]
    session: aiohttp.ClientSession
    loop: asyncio.AbstractEventLoop
    timeout_s: float
    turn: Iterator[int] = field(default_factory=itertools.count)
    replies: defaultdict[str, list[tuple[float, str]]] = field(default_factory=lambda: defaultdict(list))
    waiting: dict[str, asyncio.Future[tuple[float, str]]] = field(default_factory=dict)
    resent: int = 0

    def posted(self, arrived: float, params: dict[str, Any]) -> None:
        """From the fake Slack's thread: a reply arrived."""
        self.loop.call_soon_threadsafe(self._reply, str(params.get("channel")), arrived, str(params.get("text")))

    def _reply(self, channel: str, arrived: float, text: str) -> None:
        self.replies[channel].append((arrived, text))
        future = self.waiting.pop(channel, None)
        if future is not None and not future.done():
            future.set_result((arrived, text))

    async def send(self, body: bytes) -> None:
        """POST to the next replica; a refused or failed delivery goes to the one after, as Slack retries it."""
        for attempt in range(2 * len(self.replicas)):
            replica = self.replicas[next(self.turn) % len(self.replicas)]
            headers = slack_headers(SECRET, body, retry_num=attempt or None)
            try:
                async with self.session.post(replica.events_url, data=body, headers=headers) as answer:
                    await answer.read()
                    if answer.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            self.resent += 1
        raise RuntimeError("no replica accepted an event")

    async def conversation(self, name: str, first: int, messages: int) -> list[tuple[int, float, float]]:
        """Send `messages` messages in one thread, each once the previous reply arrived: (K, sent, replied)."""
        channel = f"C{name}"
        timings = []
        for m in range(messages):
            k = first + m
            event = {
                "type": "app_mention",
                "user": f"U{name}",
                "text": f"<@UBOT> what is {k}+1000?",
                "ts": f"1700000000.{m + 1:06d}",
                "thread_ts": "1700000000.000000",
                "channel": channel,
            }
            body = event_callback_body(event, event_id=f"Ev{name}-{m}")
            reply = self.waiting[channel] = self.loop.create_future()
            sent = time.perf_counter()
            await self.send(body)
            try:
                arrived, text = await asyncio.wait_for(reply, self.timeout_s)
            except TimeoutError:
                raise RuntimeError(f"no reply to message {m} of {channel} within {self.timeout_s:g} s") from None
            if not re.fullmatch(rf"{k + 1000}(\.0+)?", text.strip()):
                raise RuntimeError(f"{channel} message {m}: expected {k + 1000}, got {text!r}")
            timings.append((k, sent, arrived))
        return timings

    async def phase(self, prefix: str, conversations: int, messages: int, model: FakeOpenAI) -> Phase:
        """All conversations side by side; then a short wait for any reply posted twice."""
        seen = len(model.requests)
        cpu_before, own_before, busy_before = replicas_cpu_s(self.replicas), time.process_time(), machine_busy_s()
        started = time.perf_counter()
        runs = [self.conversation(f"{prefix}{c}", c * 1000, messages) for c in range(conversations)]
        timings = [t for run in await asyncio.gather(*runs) for t in run]
        elapsed = max(arrived for _, _, arrived in timings) - started
        cpu, own = replicas_cpu_s(self.replicas) - cpu_before, time.process_time() - own_before
        busy = (machine_busy_s() - busy_before) / elapsed
        await asyncio.sleep(1.0)
        calls = model_calls(model.requests[seen:])
        latency_s = model.latency_s
        added = [arrived - sent - calls[k] * latency_s for k, sent, arrived in timings]
        channels = [f"C{prefix}{c}" for c in range(conversations)]
        once = all(len(self.replies[ch]) == messages for ch in channels)
        resent, self.resent = self.resent, 0
        return Phase(len(timings), elapsed, added, [calls[k] for k, _, _ in timings], once, resent, cpu, own, busy)


def model_calls(requests: list[dict[str, Any]]) -> Counter[int]:
    """Model calls per message of one phase, by its K: the question field of each request names the message (the
    conversation's earlier turns are in another field)."""
    counts: Counter[int] = Counter()
    for body in requests:
        user = "\n".join(str(m.get("content")) for m in body["messages"] if m["role"] == "user")
        match = QUESTION.search(user)
        if match:
            counts[int(match.group(1))] += 1
    return counts


def replicas_cpu_s(replicas: list[Replica]) -> float:
    """User + system CPU seconds the replica processes used so far (Linux /proc; NaN elsewhere)."""
    total = 0.0
    for replica in replicas:
        try:
            fields = Path(f"/proc/{replica.proc.pid}/stat").read_text().rpartition(")")[2].split()
        except OSError:
            return float("nan")
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime
    return total


def machine_busy_s() -> float:
    """CPU seconds the whole machine spent busy so far, every process included (Linux /proc/stat; NaN elsewhere):
    other work on a shared machine shows here."""
    try:
        fields = [int(f) for f in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    except (OSError, ValueError):
        return float("nan")
    idle = fields[3] + fields[4]  # idle, iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def replica_env(workdir: Path, url: str, slack: FakeSlack, model: FakeOpenAI, concurrency: int) -> dict[str, str]:
    """The environment of every replica: only what the benchmark sets, none of the caller's PARLEY_* or tokens."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PARLEY_", "SLACK_", "DISCORD_", "SENTRY_"))}
    env.update(
        PARLEY_DB__URL=url,
        PARLEY_DB__PATH=str(workdir / "unused.db"),
        PARLEY_EXPORT__DIR=str(workdir / "exports"),
        PARLEY_ATTACHMENTS__FILES_DIR=str(workdir / "files"),
        PARLEY_LM__MODEL="openai/fake-model",
        PARLEY_LM__API_BASE=model.url,
        PARLEY_LM__API_KEY="sk-bench",
        PARLEY_SLACK__BOT_TOKEN=slack.bot_token,
        PARLEY_SLACK__SIGNING_SECRET=SECRET,
        PARLEY_SLACK__API_URL=slack.api_url,
        PARLEY_DISPATCH__RATE_LIMIT="off",
        PARLEY_SCHEDULER__ENABLED="false",
        PARLEY_AGENT__CONCURRENCY=str(concurrency),
        PARLEY_LOG__LEVEL="WARNING",
    )
    return env


@contextmanager
def started(count: int, env: dict[str, str], workdir: Path) -> Iterator[list[Replica]]:
    """`count` replicas, stopped with SIGTERM (then killed) on the way out."""
    replicas = []
    try:
        for i in range(count):
            port, log = free_port(), workdir / f"replica-{i}.log"
            with log.open("wb") as err:
                proc = subprocess.Popen(
                    [sys.executable, "-m", "bot", "run"],
                    env={**env, "PARLEY_HTTP__PORT": str(port)},
                    cwd=workdir,
                    stdout=subprocess.DEVNULL,
                    stderr=err,
                )
            replicas.append(Replica(port, proc, log))
        yield replicas
    finally:
        for replica in replicas:
            if replica.proc.poll() is None:
                replica.proc.send_signal(signal.SIGTERM)
        for replica in replicas:
            try:
                replica.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                replica.proc.kill()
                replica.proc.wait()


async def ready(session: aiohttp.ClientSession, replicas: list[Replica], timeout_s: float = 120.0) -> None:
    """Until every replica's /readyz says ready (the database migrated, Slack's token checked)."""
    deadline = time.monotonic() + timeout_s
    pending = list(replicas)
    while pending:
        replica = pending[0]
        if replica.proc.poll() is not None:
            raise RuntimeError(replica.failure())
        try:
            async with session.get(f"http://127.0.0.1:{replica.port}/readyz") as answer:
                if (await answer.json(content_type=None)).get("ready"):
                    pending.pop(0)
                    continue
        except (aiohttp.ClientError, json.JSONDecodeError):
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"not ready after {timeout_s:g} s: {replica.failure()}")
        await asyncio.sleep(0.2)


@asynccontextmanager
async def fresh_schema(dsn: str) -> AsyncIterator[str]:
    """An empty schema of the server for one run (the replicas migrate it), dropped afterwards."""
    schema = f"bench_replicas_{uuid.uuid4().hex[:8]}"
    url = await prepare_schema(dsn, schema, fresh=True)
    try:
        yield url
    finally:
        await drop_schema(dsn, schema)


@dataclass
class Result:
    replicas: int
    idle: Phase
    loaded: Phase


async def run(dsn: str, count: int, args: argparse.Namespace) -> Result:
    loop = asyncio.get_running_loop()
    holder: list[Traffic] = []

    def posted(arrived: float, params: dict[str, Any]) -> None:
        for traffic in holder:  # none before the replicas are up: nothing is posted then
            traffic.posted(arrived, params)

    slack = TimedSlack(posted)
    latency_s = args.latency_ms / 1000
    with slack, FakeOpenAI(latency_s=latency_s) as model, tempfile.TemporaryDirectory() as tmp:
        async with fresh_schema(dsn) as url:
            env = replica_env(Path(tmp), url, slack, model, args.concurrency)
            with started(count, env, Path(tmp)) as replicas:
                connector = aiohttp.TCPConnector(limit=0)
                timeout = aiohttp.ClientTimeout(total=30)
                async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
                    await ready(session, replicas)
                    traffic = Traffic(replicas, session, loop, timeout_s=60.0)
                    holder.append(traffic)
                    # Each replica's first answers pay for lazy imports and new connections: not measured.
                    await traffic.phase("w", 2 * count, 2, model)
                    idle = await traffic.phase("i", 1, IDLE_MESSAGES, model)
                    loaded = await traffic.phase("m", args.conversations, args.messages, model)
                for replica in replicas:
                    if replica.proc.poll() is not None:
                        raise RuntimeError(replica.failure())
    return Result(count, idle, loaded)


def report(results: list[Result], args: argparse.Namespace) -> None:
    latency_s = args.latency_ms / 1000
    print(
        f"{'replicas':>8} {'messages':>9} {'seconds':>8} {'msg/s':>7} {'ideal':>7} {'of ideal':>9} {'calls/msg':>10} "
        f"{'added p50':>10} {'added p95':>10} {'idle p50':>9} {'idle p95':>9} {'cpu/msg':>8} {'busy':>5} {'once':>5}"
    )
    for r in results:
        loaded, idle = r.loaded, r.idle
        slots = min(args.conversations, r.replicas * args.concurrency)
        ideal = slots / (CALLS_PER_ANSWER * latency_s)
        calls = sum(loaded.calls) / len(loaded.calls)
        once = loaded.answered_once and idle.answered_once
        print(
            f"{r.replicas:>8} {loaded.messages:>9} {loaded.seconds:>8.2f} {loaded.throughput:>7.1f} {ideal:>7.1f} "
            f"{loaded.throughput / ideal:>9.1%} {calls:>10.1f} {ms(loaded.added_percentile(50)):>10} "
            f"{ms(loaded.added_percentile(95)):>10} {ms(idle.added_percentile(50)):>9} "
            f"{ms(idle.added_percentile(95)):>9} {ms(loaded.replica_cpu_s / loaded.messages):>8} "
            f"{loaded.busy_cores:>5.2f} {'held' if once else 'BROKEN':>5}"
        )
        if loaded.resent or idle.resent:
            print(f"{'':>8} ({loaded.resent + idle.resent} events resent to another replica)")
    first = results[0].loaded.throughput
    own = sum(r.loaded.own_cpu_s for r in results) / sum(r.loaded.messages for r in results)
    print(
        "throughput over the first row: "
        + ", ".join(f"{r.replicas} replicas {r.loaded.throughput / first:.2f}x" for r in results)
        + f". Machine: {os.cpu_count()} cores, shared by the replicas, PostgreSQL, the fakes and the sender "
        f"(these took {ms(own)} of CPU per message)."
    )
    print(
        "added = reply at the fake Slack - event POST - model time (calls x latency); under full load it includes "
        f"the wait for a slot and for the CPU. idle: {IDLE_MESSAGES} messages of one conversation, one at a time. "
        "cpu/msg: the replicas' CPU time per message. busy: cores the whole machine kept busy (any process)."
    )


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.0f}ms"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--replicas", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--conversations", type=int, default=50)
    parser.add_argument("--messages", type=int, default=4)
    parser.add_argument("--latency-ms", type=float, default=100.0, help="the fake model's time per call")
    parser.add_argument("--concurrency", type=int, default=8, help="PARLEY_AGENT__CONCURRENCY of each replica")
    args = parser.parse_args()
    with postgres_server() as (dsn, where):
        version = asyncio.run(server_version(dsn))
        results = [asyncio.run(run(dsn, count, args)) for count in args.replicas]
    print(
        f"\nReplicas: `parley run` processes on PostgreSQL {version} ({where}); {args.conversations} conversations x "
        f"{args.messages} messages, one in flight per conversation, events round-robin over the replicas; model "
        f"{args.latency_ms:g} ms per call, agent.concurrency {args.concurrency} per replica, rate limit off"
    )
    report(results, args)


if __name__ == "__main__":
    main()
