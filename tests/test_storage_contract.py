"""The storage contract: every repository of the seam behaves the same on SQLite and on PostgreSQL.

Each test runs once per engine, on a fresh database (a SQLite file, or a PostgreSQL schema), and reads back only
through the repositories: what is asserted is what the rest of Parley can rely on, whichever engine it runs on.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import replace

import pytest

from agent.approvals import ApprovalRequest, ApprovalState, PromptLocation
from agent.attachments import Attachment, AttachmentRecord, OutFile
from agent.messages import Conversation, IncomingMessage, Reply, Step
from agent.storage import Storage, StoreError
from agent.storage.errors import ClaimLost
from agent.storage.models import (
    EXPORT_VERSION,
    STORED_OBSERVATION_CHARS,
    TABLES,
    ChainRecord,
    Execution,
    PrunePolicy,
    State,
    UsageRecord,
    conversation_key,
)
from agent.storage.postgres.storage import PostgresStorage
from agent.storage.sqlite.storage import SqliteStorage
from tests.conftest import ENGINES


@pytest.fixture(params=ENGINES)
def db_engine(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def chain(question: str = "q", *, started_at: float | None = None, steps: tuple[Step, ...] = ()) -> ChainRecord:
    return ChainRecord(question, "a", "answered", "m", time.time() if started_at is None else started_at, 1.5, steps)


def message(event: str, *, platform: str = "slack", channel: str = "C1", text: str = "hi") -> IncomingMessage:
    return IncomingMessage(platform=platform, channel=channel, user="U1", text=text, event_id=event)


def request(name: str = "r1", *, channel: str = "slack:T/C", expires_in: float = 300) -> ApprovalRequest:
    now = time.time()
    return ApprovalRequest(
        name,
        "deploy",
        {"service": "api", "n": 2},
        "h" * 64,
        "approve",
        "slack",
        channel,
        "",
        "U1",
        now,
        now + expires_in,
    )


# Turns and notes -------------------------------------------------------------------------------------------


async def test_turns_are_kept_per_conversation_and_bounded_per_channel(storage: Storage) -> None:
    top, thread = Conversation("c"), Conversation("c", "t1")
    await storage.turns.add(top, "user", "one", user_id="u")
    await storage.turns.add(thread, "user", "in a thread", user_id="u")
    await storage.turns.add(top, "assistant", "two")
    assert [(t.role, t.text) for t in await storage.turns.recent(top)] == [("user", "one"), ("assistant", "two")]
    assert [(t.text, t.thread) for t in await storage.turns.recent(thread)] == [("in a thread", "t1")]
    assert [t.text for t in await storage.turns.of_channel("c")] == ["one", "in a thread", "two"]
    assert await storage.turns.recent(Conversation("other")) == []
    for i in range(105):  # the storage keeps the newest 100 turns of a channel (its max_turns)
        await storage.turns.add(top, "user", f"m{i}")
    kept = await storage.turns.of_channel("c", limit=500)
    assert len(kept) == 100 and kept[-1].text == "m104" and kept[0].text == "m5"


async def test_notes_upsert_per_conversation(storage: Storage) -> None:
    conv = Conversation("c", "t")
    await storage.notes.set(conv, "goal", "ship")
    await storage.notes.set(conv, "goal", "ship on Friday")
    await storage.notes.set(conv, "owner", "ana")
    assert await storage.notes.of(conv) == {"goal": "ship on Friday", "owner": "ana"}
    assert await storage.notes.of(Conversation("c")) == {}


# Facts -----------------------------------------------------------------------------------------------------


async def test_a_fact_upserts_by_key_and_counts_accesses(storage: Storage) -> None:
    await storage.facts.add("c", " standup ", " at 9:30 ")
    await storage.facts.add("c", "standup", "at 10:00", confidence=0.5)
    [fact] = await storage.facts.of_channel("c")
    assert (fact.key, fact.value, fact.confidence, fact.access_count) == ("standup", "at 10:00", 0.5, 1)
    touched = await storage.facts.get("c", "standup")
    assert touched is not None and touched.access_count == 2 and touched.last_access >= fact.last_access
    assert await storage.facts.get("c", "missing") is None
    assert await storage.facts.get("other", "standup") is None


async def test_relevant_facts_rank_key_matches_first_and_stay_in_their_channel(storage: Storage) -> None:
    await storage.facts.add("c", "deploy day", "Thursday, after the review")
    await storage.facts.add("c", "review owner", "ana runs the deploy review")
    await storage.facts.add("c", "lunch", "pizza on Friday")
    await storage.facts.add("elsewhere", "deploy day", "Monday")
    found = await storage.facts.relevant("c", "when is the deploy?", k=5)
    assert [f.key for f in found] == ["deploy day", "review owner"]
    assert [f.value for f in await storage.facts.relevant("elsewhere", "deploy")] == ["Monday"]
    assert [f.key for f in await storage.facts.relevant("c", "deploy", k=1)] == ["deploy day"]
    assert await storage.facts.relevant("c", "what is the", k=5) == []  # only common words
    assert await storage.facts.relevant("c", "deploy", k=0) == []


@pytest.mark.parametrize(
    "query",
    [
        'deploy" OR "lunch',
        "deploy AND NOT",
        "NEAR(deploy lunch)",
        "deploy*",
        "deploy'; DROP TABLE facts; --",
        "(deploy) & !",
    ],
)
async def test_query_syntax_in_a_question_is_only_words(storage: Storage, query: str) -> None:
    await storage.facts.add("c", "deploy day", "Thursday")
    await storage.facts.add("c", "lunch", "pizza")
    found = {f.key for f in await storage.facts.relevant("c", query)}
    assert "deploy day" in found
    assert len(await storage.facts.of_channel("c")) == 2


async def test_relevant_with_touch_marks_the_facts_used(storage: Storage) -> None:
    await storage.facts.add("c", "deploy day", "Thursday")
    await storage.facts.add("c", "lunch", "pizza")
    await storage.facts.relevant("c", "deploy", touch=True)
    counts = {f.key: f.access_count for f in await storage.facts.of_channel("c")}
    assert counts == {"deploy day": 1, "lunch": 0}


async def test_prune_keeps_recent_and_often_used_facts(storage: Storage) -> None:
    old = time.time() - 40 * 86400
    fact = {"confidence": 1.0, "created_at": old, "updated_at": old, "last_access": old}
    await storage.import_channel(
        {
            "version": EXPORT_VERSION,
            "channel": "c",
            "facts": [
                {"key": "stale", "value": "v", "access_count": 10, **fact},
                {"key": "popular", "value": "v", "access_count": 11, **fact},
            ],
        }
    )
    await storage.facts.add("c", "fresh", "v")
    assert await storage.facts.prune(30, now=time.time()) == 1
    assert [f.key for f in await storage.facts.of_channel("c")] == ["fresh", "popular"]


# Chains and the exchange -----------------------------------------------------------------------------------


async def test_an_exchange_records_the_chain_its_steps_the_turns_and_the_inbox_answer(storage: Storage) -> None:
    entry = await storage.inbox.accept(message("E1", text="what is 6*7?"))
    assert entry is not None
    steps = (
        Step("compute", "calculator", {"expression": "6*7", "nested": {"a": [1, "é"]}}, "42", model_ms=3.5),
        Step("", "", {}, "42", kind="conclusion"),
    )
    record = replace(chain("what is 6*7?", steps=steps), model_calls=2, input_tokens=120, output_tokens=7)
    conv = Conversation("slack:T/C1")
    reply = await storage.record_exchange(conv, record, Reply("42", status="answered"), inbox_id=entry.id)
    assert reply.chain_id is not None and reply.text == "42"
    assert await storage.chains.steps(reply.chain_id) == list(steps)
    assert [(t.role, t.text) for t in await storage.turns.recent(conv)] == [
        ("user", "what is 6*7?"),
        ("assistant", "42"),
    ]
    stored = await storage.inbox.get(entry.id)
    assert stored is not None and stored.state is State.ANSWERED
    assert stored.reply == Reply("42", chain_id=reply.chain_id, status="answered")
    [exported] = [c async for c in storage.chains.since(0.0)]
    assert (exported["id"], exported["channel"], exported["question"], exported["input_tokens"]) == (
        reply.chain_id,
        "slack:T/C1",
        "what is 6*7?",
        120,
    )
    assert exported["steps"][0]["args"] == {"expression": "6*7", "nested": {"a": [1, "é"]}}


async def test_a_chain_keeps_its_files_without_their_content_and_the_inbox_keeps_a_replys_files(
    storage: Storage,
) -> None:
    shared = Attachment("notes.txt", "text/plain", 12, "https://files.example/F1", origin="thread")
    entry = await storage.inbox.accept(replace(message("E1"), attachments=(shared,)))
    assert entry is not None
    files = (
        AttachmentRecord("notes.txt", "text/plain", 12, "ab" * 32, "used"),
        AttachmentRecord("deck.key", "application/x-keynote", None, "", "skipped", "unsupported type"),
        AttachmentRecord("rows.csv", "text/csv", 3_000_000_000, "cd" * 32, "posted", direction="out"),
    )
    out = OutFile("rows.csv", b"a,b\n1,\xff\n")
    reply = await storage.record_exchange(
        Conversation("c"), replace(chain("q"), attachments=files), Reply("a", files=(out,)), inbox_id=entry.id
    )
    assert reply.chain_id is not None and reply.files == (out,)
    assert await storage.chains.attachments(reply.chain_id) == list(files)
    [exported] = [c async for c in storage.chains.since(0.0)]
    assert [a["name"] for a in exported["attachments"]] == ["notes.txt", "deck.key", "rows.csv"]
    [left] = await storage.inbox.unfinished(["slack"])
    assert left.message.attachments == (shared,) and left.message.attachments[0].fetch is None
    assert left.reply is not None and left.reply.files == (out,)
    await storage.forget("c")
    assert await storage.chains.attachments(reply.chain_id) == []


async def test_a_refused_message_records_only_its_inbox_answer(storage: Storage) -> None:
    entry = await storage.inbox.accept(message("E1"))
    assert entry is not None
    reply = await storage.record_exchange(
        Conversation("c"), None, Reply("too long", status="rejected"), inbox_id=entry.id
    )
    assert reply.chain_id is None
    assert await storage.chains.count() == 0 and await storage.turns.of_channel("c") == []
    stored = await storage.inbox.get(entry.id)
    assert stored is not None and stored.reply == Reply("too long", status="rejected")


async def test_chains_page_by_id_filter_by_channel_and_time_and_add_up(storage: Storage) -> None:
    calc = Step("t", "calculator", {}, "1")
    for i in range(5):
        conv = Conversation("a" if i % 2 == 0 else "b")
        record = replace(chain(f"q{i}", started_at=1000.0 + i, steps=(calc, calc)), model_calls=1, input_tokens=10)
        await storage.record_exchange(conv, record, Reply("a"))
    everything = [c["question"] async for c in storage.chains.since(0.0, batch=2)]
    assert everything == ["q0", "q1", "q2", "q3", "q4"]
    assert [c["question"] async for c in storage.chains.since(1002.0, channel="a")] == ["q2", "q4"]
    ids = [c["id"] async for c in storage.chains.since(0.0)]
    assert [c["question"] async for c in storage.chains.since(0.0, after_id=ids[2])] == ["q3", "q4"]
    assert await storage.chains.count() == 5 and await storage.chains.count(1003.0, "b") == 1
    stats = await storage.chains.stats()
    assert (stats.chains, stats.by_status, stats.mean_steps, stats.model_calls, stats.input_tokens) == (
        5,
        {"answered": 5},
        2.0,
        5,
        50,
    )
    assert stats.tool_usage == {"calculator": 10} and stats.mean_duration_ms == pytest.approx(1.5)


async def test_forget_erases_one_channel_and_export_import_moves_it(storage: Storage) -> None:
    conv = Conversation("c", "t")
    await storage.facts.add("c", "deploy day", "Thursday")
    await storage.notes.set(conv, "goal", "ship")
    await storage.record_exchange(conv, chain("hello"), Reply("hi"))
    await storage.facts.add("keep", "lunch", "pizza")
    data = await storage.export_channel("c")
    counts = await storage.forget("c")
    assert counts["facts"] == 1 and counts["turns"] == 2 and counts["chains"] == 1
    assert await storage.facts.of_channel("c") == [] and await storage.turns.of_channel("c") == []
    assert await storage.notes.of(conv) == {} and await storage.chains.count(channel="c") == 0
    assert [f.key for f in await storage.facts.of_channel("keep")] == ["lunch"]

    await storage.import_channel(data, "moved")
    assert [f.key for f in await storage.facts.relevant("moved", "deploy")] == ["deploy day"]
    assert [(t.text, t.thread) for t in await storage.turns.of_channel("moved")] == [("hello", "t"), ("hi", "t")]
    assert await storage.notes.of(Conversation("moved", "t")) == {"goal": "ship"}
    with pytest.raises(ValueError, match="version"):
        await storage.import_channel({**data, "version": 99})


# Inbox -----------------------------------------------------------------------------------------------------


async def test_the_inbox_drops_redeliveries_and_tracks_each_message_to_delivery(storage: Storage) -> None:
    first = await storage.inbox.accept(message("E1"))
    assert first is not None and first.state is State.RECEIVED and first.message.event_id == "E1"
    assert await storage.inbox.accept(message("E1", text="again")) is None
    assert await storage.inbox.accept(message("E1", platform="discord")) is not None  # another platform's event
    second = await storage.inbox.accept(message("E2"))
    assert second is not None
    assert [await storage.inbox.start(first.id), await storage.inbox.start(first.id)] == [1, 2]
    await storage.inbox.answer(first.id, Reply("sorry", status="error", error_id="e1"), error="RuntimeError")
    await storage.inbox.start(second.id)
    await storage.inbox.answer(second.id, Reply("ok"))
    await storage.inbox.delivered(second.id)
    pending = await storage.inbox.unfinished(["slack"])
    assert [(e.id, e.state, e.attempts) for e in pending] == [(first.id, State.ANSWERED, 2)]
    assert pending[0].reply == Reply("sorry", status="error", error_id="e1")
    assert pending[0].delivery_key == f"parley-{first.id}"
    await storage.inbox.fail(first.id, "e2", "delivery failed")
    assert await storage.inbox.unfinished(["slack"]) == []
    assert [e.message.platform for e in await storage.inbox.unfinished(["discord", "console"])] == ["discord"]
    assert await storage.inbox.unfinished([]) == []
    states = [(e.message.event_id, e.state, e.delivered_at is not None) for e in await storage.inbox.recent()]
    assert states == [("E1", State.FAILED, False), ("E1", State.RECEIVED, False), ("E2", State.ANSWERED, True)]
    assert [e.message.event_id for e in await storage.inbox.recent(limit=1)] == ["E2"]
    assert await storage.inbox.get(10_000) is None


async def test_a_read_sees_every_write_that_returned_before_it_while_other_reads_run(storage: Storage) -> None:
    """The dispatcher drops a queued message the inbox no longer lists as finished elsewhere: a read that missed
    a write which had already returned (an older snapshot, shared with a read still under way) would make it
    skip a message and answer it last."""
    others_read = asyncio.Event()
    stop = asyncio.Event()

    async def reader() -> None:
        while not stop.is_set():
            await storage.inbox.get(1)
            await storage.inbox.unfinished_of("slack|other|")
            others_read.set()

    readers = [asyncio.create_task(reader()) for _ in range(8)]
    try:
        await others_read.wait()
        for i in range(150):
            entry = await storage.inbox.accept(message(f"E{i}", channel="C9"))
            assert entry is not None
            listed = [e.id for e in await storage.inbox.unfinished_of(conversation_key(entry.message))]
            assert listed[-1:] == [entry.id], f"write {i} missing from a read made after it returned"
            assert await storage.inbox.get(entry.id) is not None
    finally:
        stop.set()
        await asyncio.gather(*readers)


async def test_the_message_a_reply_streams_into_is_kept_until_delivery_and_fenced_by_the_claim(
    storage: Storage,
) -> None:
    entry = await storage.inbox.accept(message("E1"))
    assert entry is not None and entry.stream == ""
    now = time.time()
    claim = await storage.claims.take(conversation_key(entry.message), "r1", ttl_s=60, now=now)
    assert claim is not None
    await storage.inbox.start(entry.id, claim=claim)
    await storage.inbox.streaming(entry.id, "1700000000.000100", claim=claim)
    [left] = await storage.inbox.unfinished(["slack"])
    assert (left.id, left.stream, left.state) == (entry.id, "1700000000.000100", State.PROCESSING)
    taken = await storage.claims.take(conversation_key(entry.message), "r2", ttl_s=60, now=now + 61)
    assert taken is not None  # r1's claim expired: r2 takes the conversation over
    with pytest.raises(ClaimLost):  # the replica that lost the conversation cannot move the stream
        await storage.inbox.streaming(entry.id, "other", claim=claim)
    await storage.inbox.streaming(entry.id, "1700000000.000200", claim=taken)
    await storage.inbox.answer(entry.id, Reply("done"), claim=taken)
    stored = await storage.inbox.get(entry.id)
    assert stored is not None and stored.stream == "1700000000.000200" and stored.state is State.ANSWERED
    await storage.inbox.streaming(entry.id, "")
    cleared = await storage.inbox.get(entry.id)
    assert cleared is not None and cleared.stream == ""


# Tool executions -------------------------------------------------------------------------------------------


async def test_executions_are_kept_per_run_with_statistics_per_tool(storage: Storage) -> None:
    for i in range(20):
        outcome = "ok" if i % 5 else "error"
        await storage.executions.record(
            Execution(
                "calculator", {"expression": f"{i}+1"}, outcome, "x" * 3000, float(i + 1), 1000.0 + i, run_id="r1"
            )
        )
    await storage.executions.record(Execution("http_get", {"url": "u"}, "ok", "page", 7.0, 2000.0, run_id="r2"))
    run = await storage.executions.for_run("r1")
    assert len(run) == 20 and run[0].args == {"expression": "0+1"}
    assert len(run[0].observation) == STORED_OBSERVATION_CHARS
    assert [e.tool for e in await storage.executions.recent(2)] == ["calculator", "http_get"]
    stats = await storage.executions.stats()
    calc = stats["calculator"]
    assert (calc.calls, calc.successes, calc.failures, calc.mean_ms, calc.p95_ms) == (20, 16, 4, 10.5, 19.0)
    assert stats["http_get"].p95_ms == 7.0


# Approvals -------------------------------------------------------------------------------------------------


async def test_a_decision_is_a_compare_and_set_and_every_attempt_is_audited(storage: Storage) -> None:
    asked = request()
    await storage.approvals.create(asked)
    stored = await storage.approvals.get(asked.id)
    assert stored == asked
    assert [r.id for r in await storage.approvals.pending()] == [asked.id]
    now = time.time()
    won = await storage.approvals.settle(asked, ApprovalState.APPROVED, actor="slack:boss", now=now)
    assert won is not None and (won.state, won.decided_by) == (ApprovalState.APPROVED, "slack:boss")
    assert await storage.approvals.settle(asked, ApprovalState.DENIED, actor="slack:deputy", now=now) is None
    await storage.approvals.refuse("nope", actor="slack:mallory", reason="unknown", request=None)
    await storage.approvals.note("policy_denied", "denied", tool="rm", channel="c", actor="policy")
    audit = [(a.action, a.actor, a.outcome) for a in await storage.approvals.audit()]
    assert audit == [
        ("requested", "slack:U1", "pending"),
        ("approved", "slack:boss", "approved"),
        ("denied", "slack:deputy", "refused"),
        ("decision_refused", "slack:mallory", "refused"),
        ("policy_denied", "policy", "denied"),
    ]
    assert await storage.approvals.audit(since=time.time() + 60) == []
    assert await storage.approvals.pending() == []


async def test_an_expired_request_takes_no_decision_but_can_be_marked_expired(storage: Storage) -> None:
    late = request(expires_in=-1)
    await storage.approvals.create(late)
    now = time.time()
    assert await storage.approvals.settle(late, ApprovalState.APPROVED, actor="slack:boss", now=now) is None
    expired = await storage.approvals.settle(late, ApprovalState.EXPIRED, actor="parley", now=now, reason="timeout")
    assert expired is not None and (expired.state, expired.reason) == (ApprovalState.EXPIRED, "timeout")


async def test_restart_expiry_and_prompts_left_open(storage: Storage) -> None:
    first, second = request("r1"), request("r2")
    for asked in (first, second):
        await storage.approvals.create(asked)
    where = PromptLocation("slack", "C1", "1700.1")
    await storage.approvals.shown(first.id, where)
    expired = await storage.approvals.expire_pending("restart", now=time.time())
    assert sorted(r.id for r in expired) == ["r1", "r2"]
    assert all(r.state is ApprovalState.EXPIRED and r.reason == "restart" for r in expired)
    [still_open] = await storage.approvals.open_prompts()
    assert (still_open.id, still_open.prompt) == ("r1", where)
    await storage.approvals.prompt_closed(first.id, now=time.time())
    assert await storage.approvals.open_prompts() == []


async def test_grants_allow_a_tool_in_one_channel_until_revoked(storage: Storage) -> None:
    await storage.approvals.grant("deploy", "c", "slack:boss", now=1000.0)
    await storage.approvals.grant("deploy", "c", "slack:deputy", now=2000.0)
    grant = await storage.approvals.granted("deploy", "c")
    assert grant is not None and (grant.granted_by, grant.granted_at) == ("slack:deputy", 2000.0)
    assert await storage.approvals.granted("deploy", "other") is None
    assert [(g.tool, g.channel) for g in await storage.approvals.grants()] == [("deploy", "c")]
    assert await storage.approvals.revoke("deploy", "c", "cli:me")
    assert not await storage.approvals.revoke("deploy", "c", "cli:me")
    assert await storage.approvals.grants() == []
    actions = [(a.action, a.outcome) for a in await storage.approvals.audit()]
    assert actions[-2:] == [("revoked", "revoked"), ("revoked", "not_found")]


# Channel settings and usage --------------------------------------------------------------------------------

A, B = "slack:T1/C1", "slack:T1"


async def test_a_channel_setting_is_set_replaced_and_reset_and_every_change_is_audited(storage: Storage) -> None:
    settings = storage.channel_settings
    assert await settings.set(A, "model", "fast", actor="slack:boss", now=100.0) is None
    assert await settings.set(A, "model", "smart", actor="slack:deputy", now=200.0) == "fast"
    await settings.set(A, "instructions", "Answer in French.", actor="slack:boss", now=210.0)
    await settings.set(B, "tools", "calculator, current_time", actor="cli:ops", now=220.0)
    assert await settings.values([A, B, "slack:T1/C9"]) == {
        A: {"instructions": "Answer in French.", "model": "smart"},
        B: {"tools": "calculator, current_time"},
    }
    assert await settings.values([]) == {}
    assert await settings.reset(A, "model", actor="slack:boss", now=300.0) == "smart"
    assert await settings.reset(A, "model", actor="slack:boss", now=310.0) is None  # not set: nothing audited
    assert await settings.reset("slack:T9/C9", "mode", actor="slack:boss", now=320.0) is None
    assert await settings.values([A]) == {A: {"instructions": "Answer in French."}}
    changes = [(c.key, c.old, c.new, c.actor, c.at) for c in await settings.history(A)]
    assert changes == [
        ("model", None, "fast", "slack:boss", 100.0),
        ("model", "fast", "smart", "slack:deputy", 200.0),
        ("instructions", None, "Answer in French.", "slack:boss", 210.0),
        ("model", "smart", None, "slack:boss", 300.0),
    ]
    assert [c.scope for c in await settings.history()] == [A, A, A, B, A]
    assert [(c.key, c.at) for c in await settings.history(since=220.0)] == [("tools", 220.0), ("model", 300.0)]
    await storage.forget(A)  # the channel's memory goes; how it is configured stays
    assert await settings.values([A]) == {A: {"instructions": "Answer in French."}}


async def raw(storage: Storage, sql: str) -> None:
    """One statement past the repositories, as a person with database access would run it."""
    if isinstance(storage, SqliteStorage):
        await storage.db.write(lambda conn: conn.execute(sql))
    else:
        assert isinstance(storage, PostgresStorage)
        await storage.db.execute(sql)


def prune_policy(now: float, *, audit_before: float = 0.0, usage_before: float = 0.0) -> PrunePolicy:
    """Prunes only the audits and usage older than the cutoffs given."""
    return PrunePolicy(now, 1e6, 0.0, 0.0, 0.0, 0.0, audit_before, usage_before=usage_before)


async def test_the_setting_audit_refuses_edits_and_only_the_prune_drops_old_rows(storage: Storage) -> None:
    await storage.channel_settings.set(A, "model", "fast", actor="slack:boss", now=100.0)
    await storage.channel_settings.set(A, "model", "smart", actor="slack:boss", now=200.0)
    for statement in ("UPDATE setting_changes SET actor = 'someone else'", "DELETE FROM setting_changes"):
        with pytest.raises(StoreError, match="append-only"):
            await raw(storage, statement)
    assert len(await storage.channel_settings.history()) == 2
    counts = await storage.prune(prune_policy(time.time(), audit_before=150.0))
    assert counts["setting changes"] == 1
    assert [c.new for c in await storage.channel_settings.history()] == ["smart"]
    with pytest.raises(StoreError, match="append-only"):  # the prune's cutoff does not outlive its transaction
        await raw(storage, "DELETE FROM setting_changes")


def used(at: float, user: str, channel: str, model: str, tokens: tuple[int, int], cost: float | None) -> UsageRecord:
    return UsageRecord(at, user.split(":")[0], channel, user, model, 2, tokens[0], tokens[1], cost)


async def test_an_answer_records_its_usage_in_the_exchange_and_forget_keeps_it(storage: Storage) -> None:
    conv = Conversation(A)
    record = replace(
        chain("q", started_at=1000.0),
        platform="slack",
        user_id="U1",
        model="openai/gpt-4o-mini",
        model_calls=3,
        input_tokens=120,
        output_tokens=7,
        cost=0.0012,
    )
    await storage.record_exchange(conv, record, Reply("a"))
    await storage.record_exchange(conv, replace(record, started_at=1001.0, output_tokens=None, cost=None), Reply("b"))
    await storage.record_exchange(conv, replace(record, model_calls=0), Reply("refused before any model call"))
    spent = await storage.usage.spent(since=0.0, user="slack:U1")
    assert (spent.key, spent.answers, spent.calls, spent.input_tokens, spent.output_tokens) == ("", 2, 6, 240, 7)
    assert spent.cost == pytest.approx(0.0012) and spent.tokens == 247
    [by_model] = await storage.usage.totals(since=0.0, by="model")
    assert by_model.key == "openai/gpt-4o-mini"
    await storage.forget(A)
    assert await storage.chains.count() == 0
    assert (await storage.usage.spent(since=0.0, channel=A)).answers == 2  # usage is the bill: forget keeps it


async def test_usage_is_summed_per_user_channel_or_both_and_grouped_most_tokens_first(storage: Storage) -> None:
    rows = [
        used(100.0, "slack:U1", A, "fast", (100, 10), 0.01),
        used(110.0, "slack:U1", "slack:T1/C2", "smart", (1000, 100), None),
        used(120.0, "slack:U2", A, "fast", (50, 5), 0.02),
        used(130.0, "discord:9", "discord:G1/C1", "local", (10, 1), 0.0),
        used(50.0, "slack:U1", A, "fast", (7, 7), 1.0),  # before the window
    ]
    for row in rows:
        await storage.usage.record(row)
    user = await storage.usage.spent(since=100.0, user="slack:U1")
    assert (user.answers, user.calls, user.tokens, user.cost) == (2, 4, 1210, pytest.approx(0.01))
    channel = await storage.usage.spent(since=100.0, channel=A)
    assert (channel.answers, channel.tokens, channel.cost) == (2, 165, pytest.approx(0.03))
    both = await storage.usage.spent(since=100.0, user="slack:U1", channel=A)
    assert (both.answers, both.tokens) == (1, 110)
    unpriced = await storage.usage.spent(since=100.0, channel="slack:T1/C2")
    assert unpriced.answers == 1 and unpriced.cost is None  # no row with a price: unknown, not 0
    nothing = await storage.usage.spent(since=100.0, user="slack:nobody")
    assert (nothing.answers, nothing.tokens, nothing.cost) == (0, 0, None)
    everything = await storage.usage.spent(since=0.0)
    assert (everything.answers, everything.tokens) == (5, 1290)

    by_user = await storage.usage.totals(since=100.0, by="user")
    assert [(t.key, t.tokens) for t in by_user] == [("slack:U1", 1210), ("slack:U2", 55), ("discord:9", 11)]
    assert by_user[0].cost == pytest.approx(0.01) and by_user[2].cost == 0.0
    by_channel = await storage.usage.totals(since=100.0, by="channel", limit=2)
    assert [(t.key, t.answers) for t in by_channel] == [("slack:T1/C2", 1), (A, 2)]
    by_model = await storage.usage.totals(since=0.0, by="model", until=125.0)
    assert [(t.key, t.tokens, t.cost) for t in by_model] == [
        ("smart", 1100, None),
        ("fast", 179, pytest.approx(1.03)),
    ]
    with pytest.raises(ValueError, match="grouped by"):
        await storage.usage.totals(since=0.0, by="tool")


async def test_prune_drops_usage_older_than_its_cutoff_only(storage: Storage) -> None:
    for at in (100.0, 200.0, 300.0):
        await storage.usage.record(used(at, "slack:U1", A, "fast", (10, 1), None))
    assert (await storage.prune(prune_policy(time.time())))["usage rows"] == 0  # no cutoff: the bill stays
    assert (await storage.prune(prune_policy(time.time(), usage_before=250.0)))["usage rows"] == 2
    assert (await storage.usage.spent(since=0.0)).answers == 1


# Jobs ------------------------------------------------------------------------------------------------------


async def test_a_job_slot_is_claimed_once_and_its_runs_are_recorded(storage: Storage) -> None:
    assert await storage.jobs.claim("prune", "s1", started_at=100.0)
    assert not await storage.jobs.claim("prune", "s1", started_at=101.0)
    await storage.jobs.finish("prune", "s1", "ok", finished_at=105.0, detail="pruned 3 facts")
    assert await storage.jobs.claim("prune", "manual:x", started_at=200.0)
    await storage.jobs.finish("prune", "manual:x", "ok", finished_at=201.0)
    assert await storage.jobs.claim("prune", "s2", started_at=300.0)
    await storage.jobs.finish("prune", "s2", "failed", finished_at=301.0, error_id="e1", detail="boom")
    assert await storage.jobs.claim("export", "s1", started_at=400.0)
    assert await storage.jobs.last_ok("prune") == 100.0  # manual and failed runs do not count
    assert await storage.jobs.last_ok("never") is None
    last = await storage.jobs.last_runs()
    assert (last["prune"].slot, last["prune"].error_id, last["export"].state) == ("s2", "e1", "running")
    assert [r.slot for r in await storage.jobs.runs("prune")] == ["s1", "manual:x", "s2"]
    assert await storage.jobs.interrupt_running(now=500.0) == 1
    interrupted = (await storage.jobs.last_runs())["export"]
    assert (interrupted.state, interrupted.finished_at) == ("interrupted", 500.0)


async def test_job_marks_are_per_job_and_key(storage: Storage) -> None:
    assert await storage.jobs.mark("export", "last_id") is None
    await storage.jobs.set_mark("export", "last_id", "7")
    await storage.jobs.set_mark("export", "last_id", "9")
    await storage.jobs.set_mark("other", "last_id", "1")
    assert await storage.jobs.mark("export", "last_id") == "9"


# The whole store -------------------------------------------------------------------------------------------


async def test_status_counts_every_table_and_ping_writes(storage: Storage) -> None:
    await storage.facts.add("c", "k", "v")
    await storage.ping(now=time.time())
    status = await storage.status()
    assert status.engine == storage.engine and status.schema_version == status.latest_version > 0
    assert set(status.rows) == set(TABLES)
    assert status.rows["facts"] == 1 and status.rows["job_state"] == 1


async def test_a_closed_storage_refuses_work_with_a_store_error(storage: Storage) -> None:
    await storage.close()
    with pytest.raises(StoreError):
        await storage.facts.add("c", "k", "v")
    await storage.close()  # closing twice is harmless


# The seam itself -------------------------------------------------------------------------------------------

DRIVERS = {"sqlite3", "aiosqlite", "asyncpg"}
# The read-only `sql_query` tool opens the user's own SQLite file, not Parley's database.
ALLOWED = {"agent/tools/sql.py"}


def test_no_module_outside_the_storage_package_imports_a_database_driver() -> None:
    import ast

    from tests.conftest import REPO

    offenders = []
    for package in ("agent", "adapters", "bot"):
        for path in sorted((REPO / package).rglob("*.py")):
            relative = path.relative_to(REPO).as_posix()
            if relative.startswith("agent/storage/") or relative in ALLOWED:
                continue
            for node in ast.walk(ast.parse(path.read_text())):
                names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
                if isinstance(node, ast.ImportFrom) and node.module:
                    names = [node.module]
                offenders += [f"{relative}: {n}" for n in names if n.split(".")[0] in DRIVERS]
    assert offenders == []
