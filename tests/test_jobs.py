"""The scheduler and its jobs, each run with a controlled clock: prune, chain export, the metrics summary and a
scheduled report, and the run-slot record that keeps a slot from running twice (also across a restart)."""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from apscheduler.triggers.cron import CronTrigger

from adapters.slack import SlackAdapter, SlackConfig
from agent.approvals import ApprovalRequest, ApprovalState
from agent.engines import ScriptedEngine, scripted_model
from agent.engines.scripted import request_text
from agent.messages import Conversation, IncomingMessage, Reply, Step
from agent.redact import MASK, Redactor
from agent.resilience import CircuitBreaker
from agent.runtime import Agent, AgentOptions
from agent.storage import Storage, StoreError
from agent.storage.models import EXPORT_VERSION, ChainRecord, Execution
from agent.storage.sqlite.database import Database
from agent.tools.runner import ToolRunner
from bot.channels import ChannelConfig
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
from bot.scheduler import Job, JobRun, Scheduler, last_slot
from bot.summary import render, summarise
from tests.conftest import ENGINES, final, step
from tests.fakes.slack import FakeSlack

NOW = datetime(2026, 11, 24, 9, 0, 30, tzinfo=UTC)
DAY = 86400.0
Reopen = Callable[[], Awaitable[Storage]]


@pytest.fixture(params=ENGINES)
def db_engine(request: pytest.FixtureRequest) -> str:
    """Jobs and their run records hold on SQLite and on PostgreSQL."""
    return str(request.param)


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


async def test_a_slot_runs_once_even_across_a_restart(storage: Storage, reopen: Reopen) -> None:
    calls: list[JobRun] = []

    async def work(run: JobRun) -> str:
        calls.append(run)
        return "did it"

    jobs = [Job("work", "0 9 * * *", work)]
    slot = NOW.replace(second=0).isoformat()
    first = Scheduler(storage.jobs, jobs, clock=lambda: NOW)
    assert (await first.run("work", slot=slot)).state == "ok"
    assert (await first.run("work", slot=slot)).state == "skipped"
    await storage.close()

    restarted = await reopen()
    try:
        again = Scheduler(restarted.jobs, jobs, clock=lambda: NOW)
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
        await restarted.close()


async def test_a_run_cut_short_by_a_crash_is_marked_interrupted_and_its_slot_not_run_again(storage: Storage) -> None:
    ran: list[str] = []

    async def work(run: JobRun) -> str:
        ran.append(run.slot)
        return "ok"

    slot = NOW.replace(second=0).isoformat()
    # An earlier process claimed the slot and died.
    assert await storage.jobs.claim("work", slot, started_at=1.0)
    async with Scheduler(storage.jobs, [Job("work", "0 9 * * *", work)], clock=lambda: NOW) as scheduler:
        assert scheduler.running
        assert (await storage.jobs.last_runs())["work"].state == "interrupted"
        assert (await scheduler.run("work", slot=slot)).state == "skipped"
    assert ran == []
    assert not scheduler.running


async def test_apscheduler_fires_the_job_for_its_slot_with_the_job_options(storage: Storage) -> None:
    done = asyncio.Event()

    async def work(run: JobRun) -> str:
        done.set()
        return "fired"

    async with Scheduler(
        storage.jobs, [Job("work", "0 9 * * mon-fri", work)], misfire_grace_s=120, clock=lambda: NOW
    ) as s:
        assert s._apscheduler is not None
        job = s._apscheduler.get_job("work")
        assert (job.coalesce, job.max_instances, job.misfire_grace_time) == (True, 1, 120)
        # Fire it now through APScheduler itself; the clock says 09:00:30, so the run is the 09:00 slot.
        job.modify(next_run_time=datetime.now(UTC))
        await asyncio.wait_for(done.wait(), 10)
        for _ in range(100):
            runs = await storage.jobs.last_runs()
            if "work" in runs and runs["work"].state == "ok":
                break
            await asyncio.sleep(0.02)
    assert runs["work"].slot == NOW.replace(second=0).isoformat()
    assert runs["work"].detail == "fired"


async def test_a_failing_job_is_recorded_with_an_error_id_and_counted(storage: Storage) -> None:
    counted: list[tuple[str, str]] = []

    async def broken(run: JobRun) -> str:
        raise RuntimeError("disk full")

    scheduler = Scheduler(
        storage.jobs,
        [Job("broken", "0 9 * * *", broken)],
        clock=lambda: NOW,
        observe=lambda j, o: counted.append((j, o)),
    )
    outcome = await scheduler.run("broken", slot="s1")
    assert outcome.state == "failed" and outcome.error_id and "disk full" in outcome.detail
    record = (await storage.jobs.last_runs())["broken"]
    assert (record.state, record.error_id) == ("failed", outcome.error_id)
    assert counted == [("broken", "failed")]


# Prune -------------------------------------------------------------------------------------------------


ONE_DAY = RetentionSettings(turns_days=1, chains_days=1, audit_days=1, inbox_days=1, job_runs_days=1)


def chain(started_at: float, question: str = "q") -> ChainRecord:
    step = Step("think", "calculator", {"expression": "1+1"}, "2")
    return ChainRecord(question, "a", "answered", "m", started_at, 1.0, steps=(step,))


def request(name: str, created_at: float) -> ApprovalRequest:
    return ApprovalRequest(name, "t", {}, "h", "approve", "slack", "c", "", "u", created_at, created_at + 300)


async def seed_generation(storage: Storage, tag: str, at: float) -> None:
    """One of everything the prune looks at, written through the repositories, dated `at` where a row carries
    its own date and now where the database dates it."""
    fact = {"value": "v", "confidence": 1.0, "created_at": at, "updated_at": at, "last_access": at}
    await storage.import_channel(
        {
            "version": EXPORT_VERSION,
            "channel": "c",
            "facts": [{"key": tag, "access_count": 0, **fact}, {"key": f"popular {tag}", "access_count": 50, **fact}],
            "turns": [{"role": "user", "text": "hi", "user_id": "u", "created_at": at, "thread": ""}],
        }
    )
    await storage.record_exchange(Conversation("chains"), chain(at, tag), Reply("a"))
    await storage.approvals.create(request(f"r-{tag}", at))
    for key, delivered in ((f"{tag}-delivered", True), (f"{tag}-undelivered", False)):
        message = IncomingMessage(platform="slack", channel="k", user="u", text="hi", event_id=key, received_at=at)
        entry = await storage.inbox.accept(message)
        assert entry is not None
        await storage.inbox.answer(entry.id, Reply("a"))
        if delivered:
            await storage.inbox.delivered(entry.id)


async def test_prune_deletes_what_is_past_retention_and_keeps_the_rest(storage: Storage) -> None:
    await seed_generation(storage, "old", time.time() - 2 * DAY)
    await asyncio.sleep(0.05)
    cutoff = time.time()
    await asyncio.sleep(0.05)
    await seed_generation(storage, "new", time.time())

    run = run_at(datetime.fromtimestamp(cutoff + DAY, UTC))
    detail = await prune(run, storage=storage, retention=ONE_DAY, fact_max_age_days=1)

    # The old generation's turns: the imported one, and the two its exchange wrote.
    assert detail.startswith("pruned 1 facts, 3 turns, 0 chains")
    assert [f.key for f in await storage.facts.of_channel("c")] == ["new", "popular new", "popular old"]
    assert [t.created_at > cutoff for t in await storage.turns.of_channel("c")] == [True]
    assert [c["question"] for c in await chains_of(storage)] == ["old", "new"]  # nothing exported yet
    assert [a.request_id for a in await storage.approvals.audit()] == ["r-new"]
    # An undelivered reply waits for the next start, however old.
    assert [e.message.event_id for e in await storage.inbox.recent()] == [
        "old-undelivered",
        "new-delivered",
        "new-undelivered",
    ]

    # Chain 1 is exported now, chain 2 not yet: only chain 1 may go.
    await storage.jobs.set_mark(EXPORT_JOB, "last_id", "1")
    detail = await prune(run, storage=storage, retention=ONE_DAY, fact_max_age_days=1)
    assert "1 chains" in detail and [c["question"] for c in await chains_of(storage)] == ["new"]


async def chains_of(storage: Storage) -> list[dict[str, object]]:
    return [c async for c in storage.chains.since(0.0)]


@pytest.mark.parametrize("db_engine", ["sqlite"])
async def test_the_audit_refuses_deletes_outside_the_prune(storage: Storage, db: Database) -> None:
    await storage.approvals.create(request("r1", time.time()))
    for statement in ("UPDATE approval_audit SET outcome = 'denied'", "DELETE FROM approval_audit"):
        with pytest.raises(StoreError, match="append-only"):
            await db.write(lambda conn, sql=statement: conn.execute(sql))
    assert len(await storage.approvals.audit()) == 1


async def test_without_the_export_old_chains_go_but_the_newest_stays(storage: Storage) -> None:
    old = NOW.timestamp() - 400 * DAY
    for i in range(3):
        await storage.record_exchange(Conversation("c"), chain(old, f"q{i}"), Reply("a"))
    await prune(run_at(NOW), storage=storage, retention=RetentionSettings(), fact_max_age_days=30, export_enabled=False)
    # The newest row stays even when old: deleting it would let SQLite hand its id out again.
    assert [c["question"] for c in await chains_of(storage)] == ["q2"]


# Export ------------------------------------------------------------------------------------------------


async def add_chains(storage: Storage, count: int, secret: str = "") -> None:
    for i in range(count):
        question = f"question {i} {secret}".strip()
        await storage.record_exchange(Conversation("c"), chain(time.time() - 1, question), Reply("answer"))


def exported_ids(directory: Path) -> list[int]:
    ids = []
    for path in sorted(directory.glob("chains-*.jsonl")):
        ids.extend(json.loads(line)["id"] for line in path.read_text().splitlines())
    return ids


async def test_export_writes_each_chain_once_across_runs_and_restarts(
    tmp_path: Path, storage: Storage, reopen: Reopen
) -> None:
    secret = "xoxb-1234567890-abcdefghij"
    settings = ExportSettings(dir=tmp_path / "exports", max_file_bytes=1000, keep_files=100, grace_s=0)
    redactor = Redactor([secret])
    await add_chains(storage, 5, secret)
    first = await export_chains(run_at(NOW), storage=storage, settings=settings, redactor=redactor)
    assert first.startswith("exported 5 chains to ")
    assert (await export_chains(run_at(NOW), storage=storage, settings=settings, redactor=redactor)).startswith(
        "exported 0 chains"
    )
    await add_chains(storage, 3)
    await storage.close()

    restarted = await reopen()
    try:
        await export_chains(run_at(NOW), storage=restarted, settings=settings, redactor=redactor)
        all_ids = [c["id"] for c in await chains_of(restarted)]
    finally:
        await restarted.close()
    assert exported_ids(settings.dir) == all_ids == list(range(1, 9))
    files = sorted(settings.dir.glob("chains-*.jsonl"))
    assert len(files) > 2, "files are rotated at max_file_bytes"
    assert all(p.stat().st_size <= settings.max_file_bytes for p in files)
    text = "".join(p.read_text() for p in files)
    assert secret not in text and MASK in text
    assert json.loads(files[0].read_text().splitlines()[0])["steps"][0]["tool"] == "calculator"


async def test_export_after_a_crash_keeps_a_committed_file_and_redoes_an_uncommitted_one(
    tmp_path: Path, storage: Storage
) -> None:
    settings = ExportSettings(dir=tmp_path / "exports", grace_s=0)
    settings.dir.mkdir()
    await add_chains(storage, 4)
    # Crash 1: chains 1-2 written and the mark moved to 2, but the file not yet renamed.
    (settings.dir / "chains-0000000001-0000000002.jsonl.part").write_text('{"id": 1}\n{"id": 2}\n')
    await storage.jobs.set_mark(EXPORT_JOB, "last_id", "2")
    # Crash 2: chains 3-4 half written, the mark not moved.
    (settings.dir / "chains-0000000003-0000000004.jsonl.part").write_text('{"id": 3}\n')
    await export_chains(run_at(NOW), storage=storage, settings=settings, redactor=Redactor())
    assert exported_ids(settings.dir) == [1, 2, 3, 4]
    assert not list(settings.dir.glob("*.part"))


async def test_a_second_export_at_the_same_time_does_nothing(tmp_path: Path, storage: Storage) -> None:
    settings = ExportSettings(dir=tmp_path / "exports", grace_s=0)
    await add_chains(storage, 2)
    settings.dir.mkdir()
    with _export_lock(settings.dir):
        with pytest.raises(JobError, match="another export"):
            await export_chains(run_at(NOW), storage=storage, settings=settings, redactor=Redactor())
        assert await storage.jobs.mark(EXPORT_JOB, "last_id") is None
    await export_chains(run_at(NOW), storage=storage, settings=settings, redactor=Redactor())
    assert exported_ids(settings.dir) == [1, 2]


async def test_export_leaves_chains_that_ended_within_the_grace_time_for_the_next_run(
    tmp_path: Path, storage: Storage
) -> None:
    """With several replicas, a chain can commit after one with a higher id: the export waits until every chain
    below its mark has surely committed, so the mark never passes one."""
    await storage.record_exchange(Conversation("c"), chain(time.time() - 120, "old"), Reply("a"))
    await storage.record_exchange(Conversation("c"), chain(time.time(), "just now"), Reply("a"))
    settings = ExportSettings(dir=tmp_path / "exports", grace_s=60)
    assert (await export_chains(run_at(NOW), storage=storage, settings=settings, redactor=Redactor())).startswith(
        "exported 1 chains"
    )
    assert exported_ids(settings.dir) == [1]
    await export_chains(
        run_at(NOW), storage=storage, settings=settings.model_copy(update={"grace_s": 0}), redactor=Redactor()
    )
    assert exported_ids(settings.dir) == [1, 2]


async def test_export_keeps_only_the_newest_files(tmp_path: Path, storage: Storage) -> None:
    settings = ExportSettings(dir=tmp_path / "exports", max_file_bytes=1000, keep_files=2, grace_s=0)
    for _ in range(4):
        await add_chains(storage, 1)
        await export_chains(run_at(NOW), storage=storage, settings=settings, redactor=Redactor())
    assert exported_ids(settings.dir) == [3, 4]


# Metrics summary ---------------------------------------------------------------------------------------


async def answered_message(
    storage: Storage, key: str, received_at: float, status: str = "answered", *, delivered: bool = True
) -> None:
    message = IncomingMessage(platform="slack", channel="k", user="u", text="hi", event_id=key, received_at=received_at)
    entry = await storage.inbox.accept(message)
    assert entry is not None
    await storage.inbox.answer(entry.id, Reply("a", status=status))
    if delivered:
        await storage.inbox.delivered(entry.id)
    else:
        await storage.inbox.fail(entry.id, "e1", "delivery failed")


async def test_summary_counts_a_known_set_of_events(storage: Storage) -> None:
    now = time.time()
    since, until = now - DAY, now + 60
    inside, outside = since + 60, since - 60
    # Received `lag` seconds ago and delivered now: the latency is the lag.
    for i, (status, lag) in enumerate(
        [("answered", 1), ("answered", 2), ("answered", 3), ("fallback", 4), ("error", 10)]
    ):
        await answered_message(storage, f"e{i}", now - lag, status)
    await answered_message(storage, "lost", inside, delivered=False)
    await answered_message(storage, "old", outside)  # before the window: not counted
    for calls, tokens_in, tokens_out, started in ((2, 100, 10, inside), (3, 200, 20, inside), (9, 9, 9, outside)):
        record = replace(chain(started), model_calls=calls, input_tokens=tokens_in, output_tokens=tokens_out)
        await storage.record_exchange(Conversation("c"), record, Reply("a"))
    for tool, outcome in (("calculator", "ok"), ("calculator", "ok"), ("http_get", "timeout"), ("http_get", "ok")):
        await storage.executions.record(Execution(tool, {}, outcome, "", 1.0, inside))
    for i, state in enumerate(("approved", "approved", "denied", "expired", "pending")):
        created = request(f"r{i}", inside)
        await storage.approvals.create(created)
        if state != "pending":
            await storage.approvals.settle(created, ApprovalState(state), actor="slack:boss", now=inside + 1)

    breaker = CircuitBreaker("primary", failure_threshold=1)
    with pytest.raises(RuntimeError):
        async with breaker.guard():
            raise RuntimeError("provider down")
    # The breaker opened just now: move the change into the window.
    breaker.metrics.transitions[0] = breaker.metrics.transitions[0]._replace(at=inside)

    summary = await summarise(storage, since, until, [breaker])
    assert (summary.handled, summary.answered, summary.fallback, summary.failed) == (6, 3, 1, 2)
    assert (summary.p50_s, summary.p95_s) == (pytest.approx(3.0, abs=0.5), pytest.approx(10.0, abs=0.5))
    assert (summary.model_calls, summary.input_tokens, summary.output_tokens) == (5, 300, 30)
    assert {k: (v.calls, v.failed) for k, v in summary.tools.items()} == {"calculator": (2, 0), "http_get": (2, 1)}
    assert summary.approvals == {"requested": 5, "approved": 2, "denied": 1, "expired": 1, "pending": 1}
    assert summary.breaker_changes == {"primary closed→open": 1}
    text = render(summary)
    for line in (
        "Messages: 6 handled, 3 answered, 2 failed, 1 fallback replies",
        "Model: 5 calls, 300 tokens in, 30 out",
        "Tools: calculator 2 (0 failed), http_get 2 (1 failed)",
        "Approvals: 5 requested, 2 granted, 1 denied, 1 expired",
        "Breaker changes: primary closed→open ×1",
    ):
        assert line in text
    assert re.search(r"Latency: p50 3\.\d\d s, p95 10\.\d\d s", text)


async def test_the_summary_job_posts_what_happened_since_the_previous_summary(storage: Storage) -> None:
    settings = Settings(summary={"channels": ["slack:T1/C1", "discord:9/8"], "cron": "0 9 * * mon"})
    slack, discord = Poster(), Poster()
    deps = JobDeps(storage=storage, redactor=Redactor(), posters={"slack": slack, "discord": discord}, breakers=list)
    scheduler = Scheduler(storage.jobs, build_jobs(settings, deps), clock=lambda: NOW)

    await answered_message(storage, "before", NOW.timestamp() - 3 * DAY)
    await answered_message(storage, "between", NOW.timestamp() + 3 * DAY)
    assert (await scheduler.run("metrics_summary", slot="w1", now=NOW)).state == "ok"
    next_week = NOW + timedelta(days=7)
    assert (await scheduler.run("metrics_summary", slot="w2", now=next_week)).state == "ok"
    assert [channel for channel, _ in slack.posts] == ["slack:T1/C1", "slack:T1/C1"]
    assert [channel for channel, _ in discord.posts] == ["discord:9/8", "discord:9/8"]
    # The first covers the last day (nothing: "before" is three days old); the second the week since.
    assert "Messages: 0 handled" in slack.posts[0][1]
    assert "Messages: 1 handled, 1 answered" in slack.posts[1][1]


async def test_summary_to_a_platform_that_is_not_running_fails_the_run(storage: Storage) -> None:
    settings = Settings(summary={"channels": ["discord:9/8"]})
    deps = JobDeps(storage=storage, redactor=Redactor(), posters={}, breakers=list)
    outcome = await Scheduler(storage.jobs, build_jobs(settings, deps), clock=lambda: NOW).run("metrics_summary")
    assert outcome.state == "failed" and "no discord adapter" in outcome.detail


# Scheduled reports -------------------------------------------------------------------------------------


async def test_a_scheduled_report_is_answered_with_the_channel_memory_and_posted_to_slack(
    storage: Storage, runner: ToolRunner
) -> None:
    engine = ScriptedEngine([step("finish"), final("Open questions: the Q3 budget.")])
    agent = Agent(storage, scripted_model(engine), runner, AgentOptions(max_iters=2))
    await storage.facts.add("slack:T1/C1", "open question", "who owns the Q3 budget")
    schedule = ScheduleSettings(
        name="standup", cron="0 9 * * mon-fri", platform="slack", channel="T1/C1", prompt="Summarise open questions"
    )
    with FakeSlack() as fake:
        adapter = SlackAdapter(SlackConfig("xoxb-test", "secret", api_url=fake.api_url, stream=False))
        try:
            detail = await report(
                run_at(NOW, job="standup"), schedule=schedule, agent=agent, storage=storage, posters={"slack": adapter}
            )
        finally:
            await adapter.close()
        posted = fake.posted()
    assert "posted" in detail
    assert [(p["channel"], p["text"]) for p in posted] == [("C1", "Open questions: the Q3 budget.")]
    prompt = request_text(engine.requests[0])
    assert "who owns the Q3 budget" in prompt and "Summarise open questions" in prompt


async def test_a_report_the_agent_could_not_answer_is_not_posted(storage: Storage, runner: ToolRunner) -> None:
    engine = ScriptedEngine([RuntimeError("provider down")] * 4)
    agent = Agent(storage, scripted_model(engine), runner, AgentOptions(max_iters=2))
    settings = Settings(
        schedules=[{"name": "daily", "cron": "0 9 * * *", "platform": "console", "channel": "team", "prompt": "hi"}]
    )
    console = Poster()
    deps = JobDeps(storage=storage, redactor=Redactor(), posters={"console": console}, breakers=list, agent=agent)
    outcome = await Scheduler(storage.jobs, build_jobs(settings, deps), clock=lambda: NOW).run("daily")
    assert outcome.state == "failed" and "fallback" in outcome.detail
    assert console.posts == []


async def test_a_report_follows_the_settings_of_the_channel_it_posts_to(storage: Storage, runner: ToolRunner) -> None:
    engine = ScriptedEngine([step("finish"), final("Arr, all quiet.")])
    agent = Agent(storage, scripted_model(engine), runner, AgentOptions(max_iters=2))
    settings = Settings(
        channels={"slack:T1/C1": {"instructions": "Answer like a pirate.", "tools": ["calculator"]}},
        schedules=[{"name": "news", "cron": "0 9 * * *", "platform": "slack", "channel": "T1/C1", "prompt": "News?"}],
    )
    slack = Poster()
    deps = JobDeps(
        storage=storage,
        redactor=Redactor(),
        posters={"slack": slack},
        breakers=list,
        agent=agent,
        channels=ChannelConfig(settings, storage),
    )
    outcome = await Scheduler(storage.jobs, build_jobs(settings, deps), clock=lambda: NOW).run("news")
    assert outcome.state == "ok", outcome.detail
    assert slack.posts == [("slack:T1/C1", "Arr, all quiet.")]
    prompt = request_text(engine.requests[0])
    assert "Answer like a pirate." in prompt and "calculator" in prompt and "current_time" not in prompt


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


async def test_stopping_cancels_a_run_in_progress_and_the_next_start_marks_it_interrupted(storage: Storage) -> None:
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
    scheduler = Scheduler(storage.jobs, jobs, clock=lambda: NOW)
    await scheduler.start()
    assert scheduler._apscheduler is not None
    scheduler._apscheduler.get_job("slow").modify(next_run_time=datetime.now(UTC))
    await asyncio.wait_for(started.wait(), 10)
    await asyncio.wait_for(scheduler.stop(), 5)
    assert cancelled.is_set()
    assert (await storage.jobs.last_runs())["slow"].state == "running"
    async with Scheduler(storage.jobs, jobs, clock=lambda: NOW) as again:
        assert (await storage.jobs.last_runs())["slow"].state == "interrupted"
        assert (await again.run("slow", slot=NOW.replace(second=0).isoformat())).state == "skipped"


@pytest.mark.parametrize("db_engine", ["postgres"])
async def test_a_starting_replica_marks_only_the_runs_of_gone_replicas_interrupted(storage: Storage) -> None:
    """Several replicas share the job table: one starting must not mark another's run in progress."""
    assert await storage.jobs.claim("report", "s1", started_at=1.0, owner="live-replica")
    assert await storage.jobs.claim("prune", "s1", started_at=1.0, owner="gone-replica")

    async def live() -> list[str]:
        return ["live-replica", "me"]

    async with Scheduler(storage.jobs, [], clock=lambda: NOW, owner="me", live_owners=live):
        runs = await storage.jobs.last_runs()
    assert (runs["report"].state, runs["prune"].state) == ("running", "interrupted")
