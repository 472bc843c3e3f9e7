"""The scheduler and its jobs, each run with a controlled clock: prune, chain export, the metrics summary and a
scheduled report, and the run-slot record that keeps a slot from running twice (also across a restart)."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from apscheduler.triggers.cron import CronTrigger

from adapters.slack import SlackAdapter, SlackConfig
from agent.engines import ScriptedEngine, scripted_model
from agent.engines.scripted import request_text
from agent.memory import ChainRecord, Memory
from agent.messages import Conversation, Step
from agent.redact import MASK, Redactor
from agent.resilience import CircuitBreaker
from agent.runtime import Agent, AgentOptions
from agent.store import Store
from agent.tools.runner import ToolRunner
from bot.config import ExportSettings, RetentionSettings, ScheduleSettings, Settings
from bot.jobs import (
    EXPORT_JOB,
    JobDeps,
    JobError,
    _export_lock,
    build_jobs,
    export_chains,
    job_table,
    prune,
    report,
)
from bot.scheduler import Job, JobRun, Scheduler, last_runs, last_slot
from bot.summary import render, summarise
from tests.conftest import final, step
from tests.fakes.slack import FakeSlack

NOW = datetime(2026, 11, 24, 9, 0, 30, tzinfo=UTC)
DAY = 86400.0


def run_at(now: datetime, since: float | None = None, job: str = "job") -> JobRun:
    return JobRun(job, now.isoformat(), now, since)


class Poster:
    """A platform that only posts (the job side of an adapter)."""

    def __init__(self) -> None:
        self.posts: list[tuple[str, str]] = []

    async def post(self, channel: str, text: str) -> None:
        self.posts.append((channel, text))


# The run slot ------------------------------------------------------------------------------------------


def test_last_slot_is_the_latest_fire_time_within_the_grace_time() -> None:
    weekdays = CronTrigger.from_crontab("0 9 * * mon-fri", timezone=UTC)
    # Tuesday 09:00:30: the 09:00 slot.
    assert last_slot(weekdays, NOW, 300) == NOW.replace(second=0)
    # Ten minutes late is past a five-minute grace: no slot (the scheduler would not have fired).
    assert last_slot(weekdays, NOW + timedelta(minutes=10), 300) is None
    # Day names: Saturday has no slot, however long the grace.
    saturday = datetime(2026, 11, 28, 9, 0, 30, tzinfo=UTC)
    assert last_slot(weekdays, saturday, 3600) is None
    # A run inside the repeated hour of a fall-back day: each of the two 01:30s is its own slot, in UTC.
    new_york = ZoneInfo("America/New_York")
    nightly = CronTrigger.from_crontab("30 1 * * *", timezone=new_york)
    first, second = (datetime(2026, 11, 1, 1, 30, 30, tzinfo=new_york, fold=fold) for fold in (0, 1))
    assert last_slot(nightly, first, 300) == datetime(2026, 11, 1, 5, 30, tzinfo=UTC)
    assert last_slot(nightly, second, 300) == datetime(2026, 11, 1, 6, 30, tzinfo=UTC)
    # Missed fire times coalesce into the latest.
    every_minute = CronTrigger.from_crontab("* * * * *", timezone=UTC)
    assert last_slot(every_minute, NOW, 300) == NOW.replace(second=0)


async def test_a_slot_runs_once_even_across_a_restart(tmp_path: Path) -> None:
    calls: list[JobRun] = []

    async def work(run: JobRun) -> str:
        calls.append(run)
        return "did it"

    jobs = [Job("work", "0 9 * * *", work)]
    slot = NOW.replace(second=0).isoformat()
    store = await Store.open(tmp_path / "p.db")
    first = Scheduler(store, jobs, clock=lambda: NOW)
    assert (await first.run("work", slot=slot)).state == "ok"
    assert (await first.run("work", slot=slot)).state == "skipped"
    await store.close()

    store = await Store.open(tmp_path / "p.db")
    try:
        again = Scheduler(store, jobs, clock=lambda: NOW)
        assert (await again.run("work", slot=slot)).state == "skipped"
        assert len(calls) == 1
        # The next day's slot runs, and knows when the previous good run began.
        tomorrow = NOW + timedelta(days=1)
        assert (await again.run("work", slot=tomorrow.replace(second=0).isoformat(), now=tomorrow)).state == "ok"
        assert calls[1].since == NOW.timestamp()
        # A manual run is a slot of its own.
        assert (await again.run("work")).state == "ok"
        assert len(calls) == 3
    finally:
        await store.close()


async def test_a_run_cut_short_by_a_crash_is_marked_interrupted_and_its_slot_not_run_again(store: Store) -> None:
    ran: list[str] = []

    async def work(run: JobRun) -> str:
        ran.append(run.slot)
        return "ok"

    slot = NOW.replace(second=0).isoformat()
    # An earlier process claimed the slot and died.
    await store.write(
        lambda db: db.execute("INSERT INTO job_runs (job, slot, started_at) VALUES ('work', ?, ?)", (slot, 1.0))
    )
    async with Scheduler(store, [Job("work", "0 9 * * *", work)], clock=lambda: NOW) as scheduler:
        assert scheduler.running
        assert (await last_runs(store))["work"].state == "interrupted"
        assert (await scheduler.run("work", slot=slot)).state == "skipped"
    assert ran == []
    assert not scheduler.running


async def test_apscheduler_fires_the_job_for_its_slot_with_the_job_options(store: Store) -> None:
    done = asyncio.Event()

    async def work(run: JobRun) -> str:
        done.set()
        return "fired"

    async with Scheduler(store, [Job("work", "0 9 * * mon-fri", work)], misfire_grace_s=120, clock=lambda: NOW) as s:
        assert s._apscheduler is not None
        job = s._apscheduler.get_job("work")
        assert (job.coalesce, job.max_instances, job.misfire_grace_time) == (True, 1, 120)
        # Fire it now through APScheduler itself; the clock says 09:00:30, so the run is the 09:00 slot.
        job.modify(next_run_time=datetime.now(UTC))
        await asyncio.wait_for(done.wait(), 10)
        for _ in range(100):
            runs = await last_runs(store)
            if "work" in runs and runs["work"].state == "ok":
                break
            await asyncio.sleep(0.02)
    assert runs["work"].slot == NOW.replace(second=0).isoformat()
    assert runs["work"].detail == "fired"


async def test_a_failing_job_is_recorded_with_an_error_id_and_counted(store: Store) -> None:
    counted: list[tuple[str, str]] = []

    async def broken(run: JobRun) -> str:
        raise RuntimeError("disk full")

    scheduler = Scheduler(
        store, [Job("broken", "0 9 * * *", broken)], clock=lambda: NOW, observe=lambda j, o: counted.append((j, o))
    )
    outcome = await scheduler.run("broken", slot="s1")
    assert outcome.state == "failed" and outcome.error_id and "disk full" in outcome.detail
    record = (await last_runs(store))["broken"]
    assert (record.state, record.error_id) == ("failed", outcome.error_id)
    assert counted == [("broken", "failed")]


# Prune -------------------------------------------------------------------------------------------------


async def test_prune_deletes_what_is_past_retention_and_keeps_the_rest(store: Store, memory: Memory) -> None:
    now = NOW.timestamp()
    old, recent = now - 400 * DAY, now - 1 * DAY
    conv = Conversation("c")

    def seed(db: sqlite3.Connection) -> None:
        for key, last_access, count in (("stale", old, 0), ("fresh", recent, 0), ("popular", old, 50)):
            db.execute(
                "INSERT INTO facts (channel, key, value, access_count, created_at, updated_at, last_access, "
                "key_terms, value_terms) VALUES ('c', ?, 'v', ?, ?, ?, ?, '', '')",
                (key, count, old, old, last_access),
            )
        db.execute(
            "INSERT INTO conversations (channel, thread, created_at, updated_at) VALUES ('c', '', ?, ?)", (old, old)
        )
        for created in (old, recent):
            db.execute(
                "INSERT INTO turns (conversation_id, channel, role, text, created_at) VALUES (1, 'c', 'user', 'hi', ?)",
                (created,),
            )
        for i, started in enumerate((old, old, recent), start=1):
            db.execute(
                "INSERT INTO chains (id, channel, question, answer, status, model, started_at, duration_ms) "
                "VALUES (?, 'c', 'q', 'a', 'answered', 'm', ?, 1)",
                (i, started),
            )
            db.execute(
                "INSERT INTO chain_steps (chain_id, idx, thought, tool, args, observation) "
                "VALUES (?, 0, '', '', '{}', '')",
                (i,),
            )
        # Chain 1 was exported, chain 2 not yet: only chain 1 may go.
        db.execute("INSERT INTO job_state (job, key, value) VALUES (?, 'last_id', '1')", (EXPORT_JOB,))
        for at in (old, recent):
            db.execute("INSERT INTO approval_audit (at, action, outcome) VALUES (?, 'requested', 'pending')", (at,))
        for key, updated, delivered in (("a", old, old), ("b", old, None), ("c", recent, recent)):
            db.execute(
                "INSERT INTO inbox (platform, event_key, conversation, message, received_at, updated_at, delivered_at) "
                "VALUES ('slack', ?, 'k', '{}', ?, ?, ?)",
                (key, updated, updated, delivered),
            )

    await store.write(seed)
    detail = await prune(run_at(NOW), memory=memory, retention=RetentionSettings(), fact_max_age_days=30)

    assert detail.startswith("pruned 1 facts, 1 turns, 1 chains")
    assert [f.key for f in await memory.facts("c")] == ["fresh", "popular"]
    assert len(await memory.recent_turns(conv)) == 1
    assert [r[0] for r in await store.fetchall("SELECT id FROM chains ORDER BY id")] == [2, 3]
    assert [r[0] for r in await store.fetchall("SELECT DISTINCT chain_id FROM chain_steps ORDER BY 1")] == [2, 3]
    assert [r[0] for r in await store.fetchall("SELECT at FROM approval_audit")] == [recent]
    # An undelivered reply waits for the next start, however old.
    assert sorted(r[0] for r in await store.fetchall("SELECT event_key FROM inbox")) == ["b", "c"]
    # The audit is still append-only for everything else.
    with pytest.raises(sqlite3.IntegrityError, match="append-only"):
        await store.write(lambda db: db.execute("DELETE FROM approval_audit"))


async def test_without_the_export_old_chains_go_but_the_newest_stays(store: Store, memory: Memory) -> None:
    old = NOW.timestamp() - 400 * DAY

    def seed(db: sqlite3.Connection) -> None:
        for _ in range(3):
            db.execute(
                "INSERT INTO chains (channel, question, answer, status, model, started_at, duration_ms) "
                "VALUES ('c', 'q', 'a', 'answered', 'm', ?, 1)",
                (old,),
            )

    await store.write(seed)
    await prune(run_at(NOW), memory=memory, retention=RetentionSettings(), fact_max_age_days=30, export_enabled=False)
    # The newest row stays even when old: deleting it would let SQLite hand its id out again.
    assert [r[0] for r in await store.fetchall("SELECT id FROM chains")] == [3]


# Export ------------------------------------------------------------------------------------------------


async def add_chains(memory: Memory, count: int, secret: str = "") -> None:
    for i in range(count):
        chain = ChainRecord(
            question=f"question {i} {secret}".strip(),
            answer="answer",
            status="answered",
            model="m",
            started_at=time.time(),
            duration_ms=1.0,
            steps=(Step("think", "calculator", {"expression": "1+1"}, "2"),),
        )
        await memory.record_exchange(Conversation("c"), chain, reply_text="answer")


def exported_ids(directory: Path) -> list[int]:
    ids = []
    for path in sorted(directory.glob("chains-*.jsonl")):
        ids.extend(json.loads(line)["id"] for line in path.read_text().splitlines())
    return ids


async def test_export_writes_each_chain_once_across_runs_and_restarts(tmp_path: Path) -> None:
    secret = "xoxb-1234567890-abcdefghij"
    settings = ExportSettings(dir=tmp_path / "exports", max_file_bytes=1000, keep_files=100)
    redactor = Redactor([secret])
    store = await Store.open(tmp_path / "p.db")
    memory = Memory(store)
    await add_chains(memory, 5, secret)
    first = await export_chains(run_at(NOW), memory=memory, settings=settings, redactor=redactor)
    assert first.startswith("exported 5 chains to ")
    assert (await export_chains(run_at(NOW), memory=memory, settings=settings, redactor=redactor)).startswith(
        "exported 0 chains"
    )
    await add_chains(memory, 3)
    await store.close()

    store = await Store.open(tmp_path / "p.db")  # a restart
    memory = Memory(store)
    try:
        await export_chains(run_at(NOW), memory=memory, settings=settings, redactor=redactor)
        all_ids = [r[0] for r in await store.fetchall("SELECT id FROM chains ORDER BY id")]
    finally:
        await store.close()
    assert exported_ids(settings.dir) == all_ids == list(range(1, 9))
    files = sorted(settings.dir.glob("chains-*.jsonl"))
    assert len(files) > 2, "files are rotated at max_file_bytes"
    assert all(p.stat().st_size <= settings.max_file_bytes for p in files)
    text = "".join(p.read_text() for p in files)
    assert secret not in text and MASK in text
    assert json.loads(files[0].read_text().splitlines()[0])["steps"][0]["tool"] == "calculator"


async def test_export_after_a_crash_keeps_a_committed_file_and_redoes_an_uncommitted_one(
    tmp_path: Path, memory: Memory, store: Store
) -> None:
    settings = ExportSettings(dir=tmp_path / "exports")
    settings.dir.mkdir()
    await add_chains(memory, 4)
    # Crash 1: chains 1-2 written and the mark moved to 2, but the file not yet renamed.
    (settings.dir / "chains-0000000001-0000000002.jsonl.part").write_text('{"id": 1}\n{"id": 2}\n')
    await store.write(
        lambda db: db.execute("INSERT INTO job_state (job, key, value) VALUES (?, 'last_id', '2')", (EXPORT_JOB,))
    )
    # Crash 2: chains 3-4 half written, the mark not moved.
    (settings.dir / "chains-0000000003-0000000004.jsonl.part").write_text('{"id": 3}\n')
    await export_chains(run_at(NOW), memory=memory, settings=settings, redactor=Redactor())
    assert exported_ids(settings.dir) == [1, 2, 3, 4]
    assert not list(settings.dir.glob("*.part"))


async def test_a_second_export_at_the_same_time_does_nothing(tmp_path: Path, memory: Memory, store: Store) -> None:
    settings = ExportSettings(dir=tmp_path / "exports")
    await add_chains(memory, 2)
    settings.dir.mkdir()
    with _export_lock(settings.dir):
        with pytest.raises(JobError, match="another export"):
            await export_chains(run_at(NOW), memory=memory, settings=settings, redactor=Redactor())
        assert await store.fetchone("SELECT value FROM job_state WHERE job = ?", (EXPORT_JOB,)) is None
    await export_chains(run_at(NOW), memory=memory, settings=settings, redactor=Redactor())
    assert exported_ids(settings.dir) == [1, 2]


async def test_export_keeps_only_the_newest_files(tmp_path: Path, memory: Memory) -> None:
    settings = ExportSettings(dir=tmp_path / "exports", max_file_bytes=1000, keep_files=2)
    for _ in range(4):
        await add_chains(memory, 1)
        await export_chains(run_at(NOW), memory=memory, settings=settings, redactor=Redactor())
    assert exported_ids(settings.dir) == [3, 4]


# Metrics summary ---------------------------------------------------------------------------------------


async def test_summary_counts_a_known_set_of_events(store: Store) -> None:
    since, until = NOW.timestamp() - DAY, NOW.timestamp()
    inside, outside = since + 60, since - 60

    def seed(db: sqlite3.Connection) -> None:
        replies = [("answered", 1.0), ("answered", 2.0), ("answered", 3.0), ("fallback", 4.0), ("error", 10.0)]
        for i, (status, lag) in enumerate(replies):
            db.execute(
                "INSERT INTO inbox (platform, event_key, conversation, message, state, reply, received_at, "
                "updated_at, delivered_at) VALUES ('slack', ?, 'k', '{}', 'answered', ?, ?, ?, ?)",
                (f"e{i}", json.dumps({"status": status}), inside, inside, inside + lag),
            )
        db.execute(
            "INSERT INTO inbox (platform, event_key, conversation, message, state, reply, received_at, updated_at) "
            "VALUES ('slack', 'lost', 'k', '{}', 'failed', ?, ?, ?)",
            (json.dumps({"status": "answered"}), inside, inside),
        )
        db.execute(  # before the window: not counted
            "INSERT INTO inbox (platform, event_key, conversation, message, state, reply, received_at, updated_at, "
            "delivered_at) VALUES ('slack', 'old', 'k', '{}', 'answered', ?, ?, ?, ?)",
            (json.dumps({"status": "answered"}), outside, outside, outside + 1),
        )
        for calls, tokens_in, tokens_out, started in ((2, 100, 10, inside), (3, 200, 20, inside), (9, 9, 9, outside)):
            db.execute(
                "INSERT INTO chains (channel, question, answer, status, model, started_at, duration_ms, model_calls, "
                "input_tokens, output_tokens) VALUES ('c', 'q', 'a', 'answered', 'm', ?, 1, ?, ?, ?)",
                (started, calls, tokens_in, tokens_out),
            )
        for tool, outcome in (("calculator", "ok"), ("calculator", "ok"), ("http_get", "timeout"), ("http_get", "ok")):
            db.execute(
                "INSERT INTO tool_executions (tool, args, outcome, observation, duration_ms, started_at) "
                "VALUES (?, '{}', ?, '', 1, ?)",
                (tool, outcome, inside),
            )
        for i, state in enumerate(("approved", "approved", "denied", "expired", "pending")):
            db.execute(
                "INSERT INTO approvals (id, tool, args, args_hash, level, platform, channel, requester, state, "
                "created_at, expires_at) VALUES (?, 't', '{}', 'h', 'approve', 'slack', 'c', 'u', ?, ?, ?)",
                (f"r{i}", state, inside, inside + 300),
            )

    await store.write(seed)
    breaker = CircuitBreaker("primary", failure_threshold=1)
    with pytest.raises(RuntimeError):
        async with breaker.guard():
            raise RuntimeError("provider down")
    # The breaker opened just now: move the change into the window.
    breaker.metrics.transitions[0] = breaker.metrics.transitions[0]._replace(at=inside)

    summary = await summarise(store, since, until, [breaker])
    assert (summary.handled, summary.answered, summary.fallback, summary.failed) == (6, 3, 1, 2)
    assert (summary.p50_s, summary.p95_s) == (3.0, 10.0)
    assert (summary.model_calls, summary.input_tokens, summary.output_tokens) == (5, 300, 30)
    assert {k: (v.calls, v.failed) for k, v in summary.tools.items()} == {"calculator": (2, 0), "http_get": (2, 1)}
    assert summary.approvals == {"requested": 5, "approved": 2, "denied": 1, "expired": 1, "pending": 1}
    assert summary.breaker_changes == {"primary closed→open": 1}
    text = render(summary)
    for line in (
        "Messages: 6 handled, 3 answered, 2 failed, 1 fallback replies",
        "Latency: p50 3.00 s, p95 10.00 s",
        "Model: 5 calls, 300 tokens in, 30 out",
        "Tools: calculator 2 (0 failed), http_get 2 (1 failed)",
        "Approvals: 5 requested, 2 granted, 1 denied, 1 expired",
        "Breaker changes: primary closed→open ×1",
    ):
        assert line in text


async def test_the_summary_job_posts_what_happened_since_the_previous_summary(store: Store, memory: Memory) -> None:
    settings = Settings(summary={"channels": ["slack:T1/C1", "discord:9/8"], "cron": "0 9 * * mon"})
    slack, discord = Poster(), Poster()
    deps = JobDeps(memory=memory, redactor=Redactor(), posters={"slack": slack, "discord": discord}, breakers=list)
    scheduler = Scheduler(store, build_jobs(settings, deps), clock=lambda: NOW)

    answered = json.dumps({"status": "answered"})
    seeds = [
        (key, answered, at, at, at + 1)
        for key, at in (("before", NOW.timestamp() - 3 * DAY), ("between", NOW.timestamp() + 3 * DAY))
    ]

    def seed(db: sqlite3.Connection) -> None:
        db.executemany(
            "INSERT INTO inbox (platform, event_key, conversation, message, state, reply, received_at, updated_at, "
            "delivered_at) VALUES ('slack', ?, 'k', '{}', 'answered', ?, ?, ?, ?)",
            seeds,
        )

    await store.write(seed)
    assert (await scheduler.run("metrics_summary", slot="w1", now=NOW)).state == "ok"
    next_week = NOW + timedelta(days=7)
    assert (await scheduler.run("metrics_summary", slot="w2", now=next_week)).state == "ok"
    assert [channel for channel, _ in slack.posts] == ["slack:T1/C1", "slack:T1/C1"]
    assert [channel for channel, _ in discord.posts] == ["discord:9/8", "discord:9/8"]
    # The first covers the last day (nothing: "before" is three days old); the second the week since.
    assert "Messages: 0 handled" in slack.posts[0][1]
    assert "Messages: 1 handled, 1 answered" in slack.posts[1][1]


async def test_summary_to_a_platform_that_is_not_running_fails_the_run(store: Store, memory: Memory) -> None:
    settings = Settings(summary={"channels": ["discord:9/8"]})
    deps = JobDeps(memory=memory, redactor=Redactor(), posters={}, breakers=list)
    outcome = await Scheduler(store, build_jobs(settings, deps), clock=lambda: NOW).run("metrics_summary")
    assert outcome.state == "failed" and "no discord adapter" in outcome.detail


# Scheduled reports -------------------------------------------------------------------------------------


async def test_a_scheduled_report_is_answered_with_the_channel_memory_and_posted_to_slack(
    memory: Memory, runner: ToolRunner
) -> None:
    engine = ScriptedEngine([step("finish"), final("Open questions: the Q3 budget.")])
    agent = Agent(memory, scripted_model(engine), runner, AgentOptions(max_iters=2))
    await memory.add_fact("slack:T1/C1", "open question", "who owns the Q3 budget")
    schedule = ScheduleSettings(
        name="standup", cron="0 9 * * mon-fri", platform="slack", channel="T1/C1", prompt="Summarise open questions"
    )
    with FakeSlack() as fake:
        adapter = SlackAdapter(
            SlackConfig("xoxb-test", "secret", api_url=fake.api_url), memory=memory, registry=runner.registry
        )
        try:
            detail = await report(
                run_at(NOW, job="standup"), schedule=schedule, agent=agent, posters={"slack": adapter}
            )
        finally:
            await adapter.close()
        posted = fake.posted()
    assert "posted" in detail
    assert [(p["channel"], p["text"]) for p in posted] == [("C1", "Open questions: the Q3 budget.")]
    prompt = request_text(engine.requests[0])
    assert "who owns the Q3 budget" in prompt and "Summarise open questions" in prompt


async def test_a_report_the_agent_could_not_answer_is_not_posted(
    store: Store, memory: Memory, runner: ToolRunner
) -> None:
    engine = ScriptedEngine([RuntimeError("provider down")] * 4)
    agent = Agent(memory, scripted_model(engine), runner, AgentOptions(max_iters=2))
    settings = Settings(
        schedules=[{"name": "daily", "cron": "0 9 * * *", "platform": "console", "channel": "team", "prompt": "hi"}]
    )
    console = Poster()
    deps = JobDeps(memory=memory, redactor=Redactor(), posters={"console": console}, breakers=list, agent=agent)
    outcome = await Scheduler(store, build_jobs(settings, deps), clock=lambda: NOW).run("daily")
    assert outcome.state == "failed" and "fallback" in outcome.detail
    assert console.posts == []


def test_days_of_the_week_must_be_names() -> None:
    # APScheduler counts from Monday = 0, crontab from Sunday = 0: a number would run on the wrong days.
    with pytest.raises(ValueError, match="as names"):
        Settings(scheduler={"prune_cron": "0 9 * * 1-5"})
    with pytest.raises(ValueError, match="as names"):
        ScheduleSettings(name="x", cron="0 9 * * 0", platform="console", channel="team", prompt="p")
    assert Settings(scheduler={"prune_cron": "0  9 * * mon-fri"}).scheduler.prune_cron == "0 9 * * mon-fri"


def test_the_job_table_follows_the_settings() -> None:
    assert [name for name, *_ in job_table(Settings())] == ["prune", "export_chains"]
    settings = Settings(
        export={"enabled": False},
        summary={"channels": ["console:team"]},
        schedules=[
            {"name": "standup", "cron": "0 9 * * mon-fri", "platform": "slack", "channel": "T/C", "prompt": "p"}
        ],
    )
    assert [name for name, *_ in job_table(settings)] == ["prune", "metrics_summary", "standup"]


async def test_stopping_cancels_a_run_in_progress_and_the_next_start_marks_it_interrupted(store: Store) -> None:
    started, cancelled = asyncio.Event(), asyncio.Event()

    async def slow(run: JobRun) -> str:
        started.set()
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            cancelled.set()
            raise
        return "never"

    jobs = [Job("slow", "0 9 * * *", slow)]
    scheduler = Scheduler(store, jobs, clock=lambda: NOW)
    await scheduler.start()
    assert scheduler._apscheduler is not None
    scheduler._apscheduler.get_job("slow").modify(next_run_time=datetime.now(UTC))
    await asyncio.wait_for(started.wait(), 10)
    await asyncio.wait_for(scheduler.stop(), 5)
    assert cancelled.is_set()
    assert (await last_runs(store))["slow"].state == "running"
    async with Scheduler(store, jobs, clock=lambda: NOW) as again:
        assert (await last_runs(store))["slow"].state == "interrupted"
        assert (await again.run("slow", slot=NOW.replace(second=0).isoformat())).state == "skipped"
