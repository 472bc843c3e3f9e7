"""The dispatcher: durable inbox, dedupe, per-conversation order, limits, recovery and graceful shutdown.

The agent is the real one on a scripted engine; the platform records deliveries (or, in the crash test, is
a fake HTTP platform that a killed subprocess posted to).
"""

from __future__ import annotations

import asyncio
import os
import random
import re
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import stamina

from agent.engines import ScriptedEngine, scripted_model
from agent.engines.scripted import echo
from agent.messages import IncomingMessage
from agent.runtime import Agent, AgentOptions, Exchange
from agent.storage import Storage, StoreError, open_storage
from agent.storage.sqlite.database import Database
from agent.tools import ToolRunner
from bot.dispatcher import Dispatcher, DispatcherClosed, DispatchOptions
from tests.conftest import ENGINES, REPO
from tests.fakes.platform import FakePlatformServer, RecordingPlatform


def msg(text: str, *, channel: str = "c", user: str = "u", event: str | None = None) -> IncomingMessage:
    return IncomingMessage(platform="test", channel=channel, user=user, text=text, event_id=event or text)


@pytest.fixture(params=ENGINES)
def db_engine(request: pytest.FixtureRequest) -> str:
    """Every dispatcher test holds on SQLite and on PostgreSQL (tests of SQLite itself say so)."""
    return str(request.param)


@pytest.fixture(autouse=True)
def fast_retries() -> Iterator[None]:
    """Three delivery attempts without backoff sleeps."""
    with stamina.set_testing(True, attempts=3, cap=True):
        yield


@pytest.fixture
def echo_engine() -> ScriptedEngine:
    return ScriptedEngine(responder=echo)


def make_agent(storage: Storage, engine: ScriptedEngine, runner: ToolRunner, concurrency: int = 8) -> Agent:
    options = AgentOptions(max_iters=3, max_message_chars=200, concurrency=concurrency)
    return Agent(storage, scripted_model(engine), runner, options)


@pytest.fixture
def echo_agent(storage: Storage, echo_engine: ScriptedEngine, runner: ToolRunner) -> Agent:
    return make_agent(storage, echo_engine, runner)


@pytest.fixture
def platform() -> RecordingPlatform:
    return RecordingPlatform()


@pytest.fixture
async def dispatcher(storage: Storage, echo_agent: Agent, platform: RecordingPlatform) -> AsyncIterator[Dispatcher]:
    async with Dispatcher(storage, echo_agent, [platform], DispatchOptions(rate_limit=None)) as running:
        yield running


async def states(storage: Storage) -> list[tuple[str, bool]]:
    """Each inbox row's state and whether its reply was delivered, in arrival order."""
    return [(e.state.value, e.delivered_at is not None) for e in await storage.inbox.recent()]


async def test_a_redelivered_event_is_answered_once(
    dispatcher: Dispatcher, platform: RecordingPlatform, echo_engine: ScriptedEngine, storage: Storage
) -> None:
    first = msg("what is up?", event="Ev1")
    again = IncomingMessage(**{**first.__dict__, "received_at": first.received_at + 3})  # a Slack retry
    accepted = await asyncio.gather(dispatcher.submit(first), dispatcher.submit(again), dispatcher.submit(first))
    await dispatcher.join()
    assert sorted(accepted) == [False, False, True]
    assert platform.texts() == ["re: what is up?"]
    assert len(echo_engine.requests) == 2  # one ReAct step and the extract step: the agent ran once
    assert await storage.chains.count() == 1
    assert await states(storage) == [("answered", True)]


async def test_the_same_event_key_on_another_platform_is_a_different_message(
    storage: Storage, echo_agent: Agent
) -> None:
    slack, discord = RecordingPlatform("slack"), RecordingPlatform("discord")
    async with Dispatcher(storage, echo_agent, [slack, discord], DispatchOptions(rate_limit=None)) as d:
        for name in ("slack", "discord"):
            assert await d.submit(IncomingMessage(platform=name, channel="c", user="u", text="hi", event_id="1"))
        await d.join()
    assert (slack.texts(), discord.texts()) == (["re: hi"], ["re: hi"])


async def test_conversations_keep_their_order_under_random_latency(storage: Storage, runner: ToolRunner) -> None:
    rng = random.Random(7)
    engine = ScriptedEngine(responder=echo, delay_s=lambda: rng.uniform(0.0, 0.02))
    agent = make_agent(storage, engine, runner, concurrency=8)
    running: dict[str, int] = {}
    overlap = {"max_global": 0, "max_same_conversation": 0}

    async def watch(message: IncomingMessage, key: str) -> None:
        # Deliveries happen inside the worker: count how many conversations are mid-delivery at once.
        running[message.channel] = running.get(message.channel, 0) + 1
        overlap["max_global"] = max(overlap["max_global"], sum(running.values()))
        overlap["max_same_conversation"] = max(overlap["max_same_conversation"], running[message.channel])
        await asyncio.sleep(rng.uniform(0.0, 0.005))
        running[message.channel] -= 1

    platform = RecordingPlatform(before_deliver=watch)
    options = DispatchOptions(concurrency=8, rate_limit=None)
    async with Dispatcher(storage, agent, [platform], options) as dispatcher:
        submissions = [msg(f"c{c} m{m}", channel=f"c{c}", user=f"u{c}") for m in range(10) for c in range(20)]
        rng.shuffle(submissions)  # conversations interleave; within one, arrival order is m0, m1, ...
        submissions.sort(key=lambda s: int(s.text.split("m")[1]))
        for s in submissions:
            assert await dispatcher.submit(s)
        await dispatcher.join()
    replies = platform.by_conversation()
    assert len(replies) == 20
    for c in range(20):
        assert replies[f"c{c}"] == [f"re: c{c} m{m}" for m in range(10)]
    assert overlap["max_same_conversation"] == 1
    assert 1 < overlap["max_global"] <= 8


async def test_a_message_left_in_the_inbox_is_answered_before_a_later_one_of_its_conversation(
    storage: Storage, echo_agent: Agent, platform: RecordingPlatform
) -> None:
    """A message taken in while its conversation's holder was letting go sits in the inbox, queued nowhere; the
    next holder answers it before the message that made it start."""
    options = DispatchOptions(rate_limit=None, poll_s=60)
    async with Dispatcher(storage, echo_agent, [platform], options) as dispatcher:
        assert await storage.inbox.accept(msg("first")) is not None
        assert await dispatcher.submit(msg("second"))
        await dispatcher.join()
    assert platform.texts() == ["re: first", "re: second"]


@pytest.mark.parametrize("db_engine", ["postgres"])  # replicas share PostgreSQL; on SQLite there is one process
async def test_a_message_another_replica_took_in_goes_before_a_later_one_queued_here(
    storage: Storage, echo_agent: Agent
) -> None:
    """While this replica answers a conversation, another takes in its next message (only the inbox has it) and
    then this one takes in the message after: they are answered in arrival order."""
    running: list[Dispatcher] = []

    async def meanwhile(message: IncomingMessage, key: str) -> None:
        if message.text == "first":
            assert await storage.inbox.accept(msg("second")) is not None
            assert await running[0].submit(msg("third"))

    platform = RecordingPlatform(before_deliver=meanwhile)
    async with Dispatcher(storage, echo_agent, [platform], DispatchOptions(rate_limit=None, poll_s=60)) as dispatcher:
        running.append(dispatcher)
        assert await dispatcher.submit(msg("first"))
        await dispatcher.join()
    assert platform.texts() == ["re: first", "re: second", "re: third"]


async def test_each_user_is_rate_limited_with_a_reply_that_says_when_to_retry(
    storage: Storage, echo_agent: Agent, platform: RecordingPlatform, echo_engine: ScriptedEngine
) -> None:
    options = DispatchOptions(rate_limit="2/minute")
    async with Dispatcher(storage, echo_agent, [platform], options) as dispatcher:
        for text in ("one", "two", "three"):
            await dispatcher.submit(msg(text, user="alice"))
        await dispatcher.submit(msg("hello", user="bob", channel="other"))
        await dispatcher.join()
    by_text = {m.text: r for m, r, _ in platform.delivered}
    assert by_text["one"].text == "re: one" and by_text["two"].text == "re: two"
    limited = by_text["three"]
    assert limited.status == "limited"
    assert "at most 2 messages per minute" in limited.text
    seconds = int(limited.text.rsplit("try again in ", 1)[1].split(" s", 1)[0])
    # Windows are whole minutes, counted in the storage (shared by replicas): the wait ends at the next one.
    assert 1 <= seconds <= 60 and abs((time.time() + seconds + 1) % 60 - 1) < 2
    assert by_text["hello"].text == "re: hello"  # another user has their own quota
    assert len(echo_engine.requests) == 6  # the limited message never reached the model


async def test_an_oversized_message_gets_a_clear_reply_and_never_reaches_the_model(
    dispatcher: Dispatcher, platform: RecordingPlatform, echo_engine: ScriptedEngine, storage: Storage
) -> None:
    await dispatcher.submit(msg("x" * 5000, event="big"))
    await dispatcher.join()
    [reply] = [r for _, r, _ in platform.delivered]
    assert reply.status == "rejected"
    assert "5,000 characters" in reply.text and "limit is 200" in reply.text
    assert echo_engine.requests == []
    assert await states(storage) == [("answered", True)]


async def test_graceful_shutdown_finishes_the_running_message_and_leaves_the_rest(
    storage: Storage, runner: ToolRunner
) -> None:
    slow = ScriptedEngine(responder=echo, delay_s=0.1)
    platform = RecordingPlatform()
    dispatcher = Dispatcher(storage, make_agent(storage, slow, runner), [platform], DispatchOptions(grace_s=5))
    await dispatcher.start()
    for i in range(3):
        await dispatcher.submit(msg(f"q{i}"))
    await asyncio.sleep(0.05)  # q0 is with the model
    await dispatcher.stop()
    assert platform.texts() == ["re: q0"]
    assert await states(storage) == [("answered", True), ("received", False), ("received", False)]
    with pytest.raises(DispatcherClosed):
        await dispatcher.submit(msg("late"))

    fast = ScriptedEngine(responder=echo)
    async with Dispatcher(storage, make_agent(storage, fast, runner), [platform], DispatchOptions()) as again:
        await again.join()
    assert platform.texts() == ["re: q0", "re: q1", "re: q2"]
    assert len(fast.requests) == 4  # q1 and q2 only
    assert await storage.chains.count() == 3


async def test_a_message_cut_off_by_the_grace_period_is_answered_after_restart(
    storage: Storage, runner: ToolRunner
) -> None:
    hung = ScriptedEngine(responder=echo, delay_s=30)
    platform = RecordingPlatform()
    dispatcher = Dispatcher(storage, make_agent(storage, hung, runner), [platform], DispatchOptions(grace_s=0.1))
    await dispatcher.start()
    await dispatcher.submit(msg("q"))
    await asyncio.sleep(0.05)
    await dispatcher.stop()
    assert platform.texts() == []
    assert await states(storage) == [("processing", False)]
    assert await storage.chains.count() == 0  # a cancelled answer records nothing

    fast = ScriptedEngine(responder=echo)
    async with Dispatcher(storage, make_agent(storage, fast, runner), [platform], DispatchOptions()) as again:
        await again.join()
    assert platform.texts() == ["re: q"]
    assert await storage.chains.count() == 1


async def test_a_reply_interrupted_in_delivery_is_delivered_after_restart_without_answering_again(
    storage: Storage, runner: ToolRunner, echo_engine: ScriptedEngine, echo_agent: Agent
) -> None:
    delivering = asyncio.Event()

    async def hang(message: IncomingMessage, key: str) -> None:
        delivering.set()
        await asyncio.sleep(30)

    stuck = RecordingPlatform(before_deliver=hang)
    dispatcher = Dispatcher(storage, echo_agent, [stuck], DispatchOptions(grace_s=0.1))
    await dispatcher.start()
    await dispatcher.submit(msg("q"))
    await delivering.wait()
    await dispatcher.stop()
    assert await states(storage) == [("answered", False)]
    calls = len(echo_engine.requests)

    platform = RecordingPlatform()
    async with Dispatcher(storage, echo_agent, [platform], DispatchOptions()) as again:
        await again.join()
    assert platform.texts() == ["re: q"]
    [(_, _, key)] = platform.delivered
    assert key == next(iter(stuck.attempts))  # the same idempotency key as the interrupted attempt
    assert len(echo_engine.requests) == calls
    assert await storage.chains.count() == 1
    assert await states(storage) == [("answered", True)]


async def test_transient_delivery_failures_are_retried_and_permanent_ones_fail_with_an_error_id(
    storage: Storage, echo_agent: Agent, caplog: pytest.LogCaptureFixture
) -> None:
    from agent.ports import DeliveryError

    failures = {"flaky": 2, "broken": 99}

    async def fail_some(message: IncomingMessage, key: str) -> None:
        if failures.get(message.text, 0) > 0:
            failures[message.text] -= 1
            raise DeliveryError("platform answered 503", transient=message.text == "flaky")

    platform = RecordingPlatform(before_deliver=fail_some)
    async with Dispatcher(storage, echo_agent, [platform], DispatchOptions(rate_limit=None)) as dispatcher:
        await dispatcher.submit(msg("flaky", channel="a"))
        await dispatcher.submit(msg("broken", channel="b"))
        await dispatcher.join()
    assert platform.texts() == ["re: flaky"]
    assert platform.attempts.most_common() == [("parley-1", 3), ("parley-2", 1)]
    assert await states(storage) == [("answered", True), ("failed", False)]
    [error_id] = re.findall(r"could not deliver the reply to test message 2 \(error id (\w+)\)", caplog.text)
    assert error_id


async def test_a_crashing_responder_still_gets_the_user_an_apology_with_an_error_id(
    storage: Storage, platform: RecordingPlatform, caplog: pytest.LogCaptureFixture
) -> None:
    class Broken:
        async def respond(self, message: IncomingMessage, **_: object) -> Exchange:
            raise RuntimeError("secret internals")

    async with Dispatcher(storage, Broken(), [platform], DispatchOptions()) as dispatcher:
        await dispatcher.submit(msg("q"))
        await dispatcher.join()
    [reply] = [r for _, r, _ in platform.delivered]
    assert reply.status == "error" and reply.error_id and reply.error_id in reply.text
    assert "secret" not in reply.text and "RuntimeError" not in reply.text
    assert reply.error_id in caplog.text
    [entry] = await storage.inbox.recent()
    assert entry.reply is not None and entry.reply.error_id == reply.error_id
    assert await states(storage) == [("answered", True)]


async def test_a_message_that_keeps_crashing_the_process_is_given_up_with_an_apology(
    storage: Storage, echo_agent: Agent, platform: RecordingPlatform, echo_engine: ScriptedEngine
) -> None:
    inbox = storage.inbox
    entry = await inbox.accept(msg("poison"))
    assert entry is not None
    for _ in range(3):  # three processes died while answering it
        await inbox.start(entry.id)
    async with Dispatcher(storage, echo_agent, [platform], DispatchOptions(max_attempts=3)) as dispatcher:
        await dispatcher.join()
    [reply] = [r for _, r, _ in platform.delivered]
    assert "after 3 attempts" in reply.text and reply.error_id
    assert echo_engine.requests == []
    assert await states(storage) == [("answered", True)]


async def test_messages_of_a_platform_that_cannot_resume_are_not_replayed(
    storage: Storage, echo_agent: Agent, echo_engine: ScriptedEngine
) -> None:
    await storage.inbox.accept(IncomingMessage(platform="console", channel="c", user="u", text="old", event_id="s1-1"))
    console = RecordingPlatform("console", resumable=False)
    async with Dispatcher(storage, echo_agent, [console], DispatchOptions()) as dispatcher:
        await dispatcher.join()
    assert console.delivered == []
    assert echo_engine.requests == []


@pytest.mark.slow
def test_a_killed_process_answers_every_message_exactly_once_after_restart(
    db_engine: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    conversations, messages = 6, 10
    total = conversations * messages
    database = request.getfixturevalue("pg_url") if db_engine == "postgres" else str(tmp_path / "crash.db")
    env = {**os.environ, "PYTHONPATH": str(REPO)}

    def worker() -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            [sys.executable, "-m", "tests.fakes.crash_worker", database, server.url, str(conversations), str(messages)],
            cwd=REPO,
            env=env,
            stderr=subprocess.PIPE,
        )

    with FakePlatformServer() as server:
        first = worker()
        deadline = time.monotonic() + 60
        while server.shown_count() < total // 3:
            assert first.poll() is None, first.stderr.read().decode() if first.stderr else ""
            assert time.monotonic() < deadline, "the worker posted nothing"
            time.sleep(0.005)
        first.send_signal(signal.SIGKILL)
        first.wait()
        killed_at = server.shown_count()
        assert killed_at < total, "the worker finished before it was killed"

        second = worker()
        _, err = second.communicate(timeout=120)
        assert second.returncode == 0, err.decode()

    per_message: dict[str, int] = {}
    for post in server.shown.values():
        per_message[post["in_reply_to"]] = per_message.get(post["in_reply_to"], 0) + 1
    assert per_message == {f"c{c}-m{m}": 1 for c in range(conversations) for m in range(messages)}
    order: dict[str, list[str]] = {}
    for post in server.shown.values():  # in the order the platform first showed them
        assert post["text"] == "re: " + post["in_reply_to"].replace("-", " ")
        order.setdefault(post["channel"], []).append(post["in_reply_to"])
    assert order == {f"c{c}": [f"c{c}-m{m}" for m in range(messages)] for c in range(conversations)}
    # Only replies in flight at the kill were posted again (with the same key), and each message was
    # answered by the agent once: the chain is written in the same transaction as the inbox state.
    assert len(server.posts) - total <= 4
    asyncio.run(answered_once(database, total))


async def answered_once(database: str, total: int) -> None:
    """Every message has exactly one chain, and no reply is left to deliver."""
    storage = await open_storage(url=database if database.startswith("postgresql") else None, path=database)
    try:
        assert await storage.chains.count() == total
        assert await storage.inbox.unfinished(["test"]) == []
    finally:
        await storage.close()


@pytest.mark.parametrize("db_engine", ["sqlite"])
async def test_the_inbox_state_lands_with_the_exchange_or_not_at_all(
    echo_agent: Agent, storage: Storage, db: Database
) -> None:
    """If the inbox write fails, the turns and the chain are rolled back with it (one transaction)."""
    entry = await storage.inbox.accept(msg("q"))
    assert entry is not None
    await db.write(
        lambda conn: conn.execute(
            "CREATE TRIGGER refuse BEFORE UPDATE ON inbox BEGIN SELECT RAISE(ABORT, 'refused'); END"
        )
    )
    exchange = await echo_agent.respond(entry.message)
    with pytest.raises(StoreError, match="refused"):
        await storage.record_exchange(entry.message.conversation, exchange.chain, exchange.reply, inbox_id=entry.id)
    assert await storage.chains.count() == 0
    assert await storage.turns.recent(entry.message.conversation) == []
    assert await states(storage) == [("received", False)]

    await db.write(lambda conn: conn.execute("DROP TRIGGER refuse"))
    reply = await storage.record_exchange(entry.message.conversation, exchange.chain, exchange.reply, inbox_id=entry.id)
    stored = await storage.inbox.get(entry.id)
    assert stored is not None and stored.reply is not None
    assert (stored.state, stored.reply.text, stored.reply.chain_id) == ("answered", reply.text, reply.chain_id)
    assert await storage.chains.count() == 1


@pytest.mark.parametrize("db_engine", ["sqlite"])
async def test_a_database_failure_on_one_message_does_not_stop_the_others(
    dispatcher: Dispatcher,
    platform: RecordingPlatform,
    storage: Storage,
    db: Database,
    caplog: pytest.LogCaptureFixture,
) -> None:
    await db.write(
        lambda db: db.execute(
            "CREATE TRIGGER refuse BEFORE UPDATE ON inbox WHEN new.event_key = 'cursed' "
            "BEGIN SELECT RAISE(ABORT, 'disk I/O error'); END"
        )
    )
    for text in ("cursed", "fine", "also fine"):
        await dispatcher.submit(msg(text))
    await dispatcher.join()
    # Retried, then the user is told, and the conversation goes on in order; the row waits for the next start.
    apology, *rest = platform.texts()
    assert apology.startswith("Sorry, something went wrong") and rest == ["re: fine", "re: also fine"]
    assert "message 1 could not be handled" in caplog.text
    assert await states(storage) == [("received", False), ("answered", True), ("answered", True)]


async def test_a_message_from_a_platform_without_an_adapter_is_refused_before_it_is_stored(
    dispatcher: Dispatcher, storage: Storage
) -> None:
    with pytest.raises(ValueError, match="no platform 'slack'"):
        await dispatcher.submit(IncomingMessage(platform="slack", channel="c", user="u", text="hi", event_id="E1"))
    assert await states(storage) == []
