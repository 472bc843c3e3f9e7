"""The job scheduler: APScheduler 3 fires each job on its cron line, and the `job_runs` table makes every run
slot happen at most once, whatever fires it (a restart inside the misfire grace time, a second process).

APScheduler owns timing (coalescing missed runs, one instance at a time, the grace time); this module owns what
a run is: claiming its slot, running it inside a log and Sentry context, recording the outcome and counting it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Collection, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.triggers.cron import CronTrigger
from structlog.contextvars import bound_contextvars

from agent.messages import new_error_id
from agent.storage.base import Jobs
from bot.observe import run_context

log = logging.getLogger("parley.scheduler")


@dataclass(frozen=True)
class JobRun:
    """What a job is told about its run: its slot, the time it runs at, and when the last good run began."""

    job: str
    slot: str
    now: datetime
    # The start of the previous successful run of this job (not a manual one), or None for the first.
    since: float | None


@dataclass(frozen=True)
class Job:
    """A scheduled job: `run` does the work and returns one line saying what it did."""

    name: str
    cron: str
    run: Callable[[JobRun], Awaitable[str]]
    description: str = ""


@dataclass(frozen=True)
class Outcome:
    """A run's result: `ok`, `failed`, or `skipped` when its slot had run (or was running) already."""

    state: str
    detail: str = ""
    error_id: str | None = None


RunObserver = Callable[[str, str], None]


def last_slot(trigger: CronTrigger, now: datetime, grace_s: float) -> datetime | None:
    """The latest fire time of `trigger` at or before `now`, looking back at most `grace_s`, in UTC: the slot that
    a run at `now` stands for (with coalescing, several missed fire times are one run, of the latest).

    Stepping and comparing happen in UTC: on a daylight-saving fall-back day a local wall time occurs twice,
    and stepping in local time would find the same fire time again, forever.
    """
    now = now.astimezone(UTC)
    found = None
    candidate = trigger.get_next_fire_time(None, now - timedelta(seconds=grace_s))
    while candidate is not None and candidate.astimezone(UTC) <= now:
        found = candidate.astimezone(UTC)
        candidate = trigger.get_next_fire_time(candidate, found + timedelta(microseconds=1))
    return found


class Scheduler:
    """Use as `async with Scheduler(...)`: starts APScheduler on the running loop, shuts it down on exit."""

    def __init__(
        self,
        records: Jobs,
        jobs: Sequence[Job],
        *,
        timezone: str = "UTC",
        misfire_grace_s: int = 300,
        clock: Callable[[], datetime] | None = None,
        observe: RunObserver | None = None,
        owner: str = "",
        live_owners: Callable[[], Awaitable[Collection[str]]] | None = None,
    ) -> None:
        # Where runs are claimed and recorded: a slot is claimed once, whichever process fires it.
        self.records = records
        # This replica, recorded with its runs; and who else is live: at start, only the runs of replicas that
        # are gone are marked interrupted, not those another replica is running now.
        self.owner = owner
        self.live_owners = live_owners
        self.zone = ZoneInfo(timezone)
        self.jobs = {job.name: job for job in jobs}
        self.triggers = {job.name: CronTrigger.from_crontab(job.cron, timezone=self.zone) for job in jobs}
        self.misfire_grace_s = misfire_grace_s
        self.clock = clock or (lambda: datetime.now(self.zone))
        self.observe = observe
        self._apscheduler: AsyncIOScheduler | None = None
        self._runs: set[asyncio.Task[None]] = set()

    @property
    def running(self) -> bool:
        return self._apscheduler is not None and self._apscheduler.running

    async def __aenter__(self) -> Scheduler:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def start(self) -> None:
        """Mark runs a process that is gone left unfinished, then schedule every job."""
        live = await self.live_owners() if self.live_owners is not None else ()
        interrupted = await self.records.interrupt_running(now=time.time(), keep_owners=live)
        if interrupted:
            log.warning("%d job runs were interrupted by the end of an earlier process", interrupted)
        scheduler = AsyncIOScheduler(timezone=self.zone)
        for name, trigger in self.triggers.items():
            scheduler.add_job(
                self._fire,
                trigger=trigger,
                args=(name,),
                id=name,
                name=name,
                coalesce=True,
                max_instances=1,
                misfire_grace_time=self.misfire_grace_s,
            )
        scheduler.start()
        self._apscheduler = scheduler

    async def stop(self) -> None:
        """Stop firing and cancel the runs in progress (before the database closes under them); their rows say
        `interrupted` at the next start, and their slots do not run again."""
        if self._apscheduler is not None and self._apscheduler.running:
            self._apscheduler.shutdown(wait=False)
        self._apscheduler = None
        for task in self._runs:
            task.cancel()
        await asyncio.gather(*self._runs, return_exceptions=True)

    async def _fire(self, name: str) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._runs.add(task)
        try:
            now = self.clock()
            # Slots are UTC times, so a change of time zone setting does not make a slot new again.
            slot = last_slot(self.triggers[name], now, self.misfire_grace_s) or now.astimezone(UTC)
            await self.run(name, slot=slot.isoformat(), now=now)
        finally:
            self._runs.discard(task)

    async def run(self, name: str, *, slot: str | None = None, now: datetime | None = None) -> Outcome:
        """Run a job for a slot unless that slot ran already; no slot means a manual run, now, once."""
        job = self.jobs.get(name)
        if job is None:
            raise KeyError(f"no job {name!r}; jobs: {', '.join(self.jobs)}")
        now = now or self.clock()
        slot = slot or f"manual:{now.isoformat()}"
        started = now.timestamp()
        since = await self._since(name)
        claimed = await self.records.claim(name, slot, started_at=started, owner=self.owner)
        if not claimed:
            log.info("job %s: slot %s has run already", name, slot)
            self._count(name, "skipped")
            return Outcome("skipped")
        with run_context(job=name, slot=slot):
            try:
                detail = await job.run(JobRun(name, slot, now, since))
            except Exception as exc:
                error_id = new_error_id()
                with bound_contextvars(error_id=error_id):
                    log.exception("job %s failed (error id %s): %s", name, error_id, type(exc).__name__)
                outcome = Outcome("failed", f"{type(exc).__name__}: {exc}"[:500], error_id)
            else:
                log.info("job %s: %s", name, detail)
                outcome = Outcome("ok", detail)
        await self.records.finish(
            name, slot, outcome.state, finished_at=time.time(), detail=outcome.detail, error_id=outcome.error_id
        )
        self._count(name, outcome.state)
        return outcome

    def _count(self, name: str, state: str) -> None:
        if self.observe is not None:
            self.observe(name, state)

    async def _since(self, name: str) -> float | None:
        return await self.records.last_ok(name)


def next_fire(cron: str, timezone: str, now: datetime) -> datetime | None:
    """When a cron line fires next after `now`, in `timezone`."""
    fire: datetime | None = CronTrigger.from_crontab(cron, timezone=ZoneInfo(timezone)).get_next_fire_time(None, now)
    return fire
