"""The scheduled jobs: pruning old rows, exporting new reasoning chains, posting the metrics summary, and the
`[[schedules]]` reports. Each is a plain async function of its dependencies and the run; `build_jobs` ties
them to their cron lines from the settings."""

from __future__ import annotations

import fcntl
import json
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator, Mapping
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import BinaryIO

from agent.messages import IncomingMessage
from agent.ports import Poster
from agent.profile import DEFAULT_PROFILE
from agent.redact import Redactor
from agent.resilience import CircuitBreaker
from agent.runtime import Agent
from agent.storage.base import Storage
from agent.storage.models import PrunePolicy
from bot.answering import answer
from bot.app import App
from bot.channels import ChannelResolver
from bot.config import BUILTIN_JOBS, ExportSettings, RetentionSettings, ScheduleSettings, Settings, secret_values
from bot.metrics import observe_job
from bot.scheduler import Job, JobRun, Scheduler
from bot.summary import render, summarise

DAY = 86400.0
PRUNE_JOB, EXPORT_JOB, SUMMARY_JOB = BUILTIN_JOBS
# The first summary covers this much time; later ones start where the previous one did.
FIRST_SUMMARY_S = DAY


class JobError(Exception):
    """A job could not do its work; the message is recorded with the run."""


# Prune ---------------------------------------------------------------------------------------------------


async def prune(
    run: JobRun, *, storage: Storage, retention: RetentionSettings, fact_max_age_days: int, export_enabled: bool = True
) -> str:
    """Delete what is older than its retention. Chains are kept until exported, so an export that has been
    failing loses nothing to the prune."""
    now = run.now.timestamp()
    counts = await storage.prune(
        PrunePolicy(
            now=now,
            fact_max_age_days=fact_max_age_days,
            turns_before=now - retention.turns_days * DAY,
            chains_before=now - retention.chains_days * DAY,
            inbox_before=now - retention.inbox_days * DAY,
            job_runs_before=now - retention.job_runs_days * DAY,
            audit_before=now - retention.audit_days * DAY,
            keep_unexported_of=EXPORT_JOB if export_enabled else None,
            usage_before=now - retention.usage_days * DAY,
        )
    )
    return "pruned " + ", ".join(f"{n} {what}" for what, n in counts.items())


# Export --------------------------------------------------------------------------------------------------

# The export's high-water mark: the id of the last chain in a committed export file.
MARK = "last_id"


async def _mark(storage: Storage) -> int:
    return int(await storage.jobs.mark(EXPORT_JOB, MARK) or 0)


def _export_name(first: int, last: int) -> str:
    return f"chains-{first:010d}-{last:010d}.jsonl"


def _last_id(path: Path) -> int:
    return int(path.name.split(".")[0].rsplit("-", 1)[1])


@dataclass
class _Part:
    """An export file being written: `.part` until the mark that covers it is committed."""

    path: Path
    first: int
    handle: BinaryIO
    last: int = 0
    size: int = 0

    @classmethod
    def open(cls, directory: Path, first: int) -> _Part:
        path = directory / f"{first:010d}.part"
        return cls(path, first, path.open("wb"))

    def write(self, line: bytes, chain_id: int) -> None:
        self.handle.write(line)
        self.last, self.size = chain_id, self.size + len(line)


async def export_chains(run: JobRun, *, storage: Storage, settings: ExportSettings, redactor: Redactor) -> str:
    """Write the chains above the high-water mark to JSON Lines, redacted.

    Each file is written as `.part`, synced, then the mark moves to its last chain in the database, then it is
    renamed: a crash before the mark leaves a `.part` the next run deletes (and exports again), a crash after
    it a `.part` the next run keeps. So a chain is exported once, and none is skipped. A lock file keeps a second
    export (`parley jobs run export_chains` while the service runs) out of the directory meanwhile.
    """
    directory = settings.dir
    directory.mkdir(parents=True, exist_ok=True)
    with _export_lock(directory):
        return await _export(directory, storage, settings, redactor)


@contextmanager
def _export_lock(directory: Path) -> Iterator[None]:
    with (directory / ".export.lock").open("w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise JobError(f"another export is writing to {directory}; nothing done") from None
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


async def _export(directory: Path, storage: Storage, settings: ExportSettings, redactor: Redactor) -> str:
    mark = await _mark(storage)
    _recover(directory, mark)
    exported = files = 0
    part: _Part | None = None
    # Only chains that ended a grace time ago: ids are handed out as answers end, so every chain below the
    # mark has committed by then, whichever replica recorded it.
    settled = time.time() - settings.grace_s
    try:
        async for chain in storage.chains.since(0.0, after_id=mark, ended_before=settled):
            line = (json.dumps(redactor.data(chain), ensure_ascii=False) + "\n").encode()
            if part is not None and part.size + len(line) > settings.max_file_bytes:
                await _commit(storage, part)
                files, part = files + 1, None
            if part is None:
                part = _Part.open(directory, chain["id"])
            part.write(line, chain["id"])
            exported += 1
        if part is not None:
            await _commit(storage, part)
            files, part = files + 1, None
    finally:
        if part is not None:  # cut short: the next run deletes the file
            part.handle.close()
    removed = _rotate(directory, settings.keep_files)
    return f"exported {exported} chains to {files} files" + (f", removed {removed} old files" if removed else "")


def _recover(directory: Path, mark: int) -> None:
    """Finish what a crashed export left: keep a staged file the mark covers, drop the rest."""
    for leftover in sorted(directory.glob("chains-*.jsonl.part")):
        if _last_id(leftover.with_suffix("")) <= mark:
            leftover.rename(leftover.with_suffix(""))
        else:
            leftover.unlink()
    for unfinished in directory.glob("[0-9]*.part"):  # cut short while being written
        unfinished.unlink()


async def _commit(storage: Storage, part: _Part) -> None:
    """Sync the file under its final name's `.part`, move the mark, then give it its final name."""
    final = part.path.parent / _export_name(part.first, part.last)
    staged = final.with_name(final.name + ".part")
    part.handle.flush()
    os.fsync(part.handle.fileno())
    part.handle.close()
    part.path.rename(staged)
    _sync_dir(staged.parent)  # the staged name survives a power cut before the mark does
    await storage.jobs.set_mark(EXPORT_JOB, MARK, str(part.last))
    staged.rename(final)
    _sync_dir(final.parent)


def _sync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _rotate(directory: Path, keep: int) -> int:
    files = sorted(directory.glob("chains-*.jsonl"))
    old = files[:-keep] if len(files) > keep else []
    for path in old:
        path.unlink()
    return len(old)


# Metrics summary -----------------------------------------------------------------------------------------


async def metrics_summary(
    run: JobRun,
    *,
    storage: Storage,
    breakers: Callable[[], Iterable[CircuitBreaker]],
    targets: Iterable[str],
    posters: Mapping[str, Poster],
) -> str:
    """Post what happened since the previous summary to every target channel."""
    until = run.now.timestamp()
    since = run.since if run.since is not None else until - FIRST_SUMMARY_S
    text = render(await summarise(storage, since, until, breakers()))
    targets = list(targets)
    for target in targets:
        await _poster(posters, target.partition(":")[0]).post(target, text)
    return f"posted the summary to {', '.join(targets)}"


def _poster(posters: Mapping[str, Poster], platform: str) -> Poster:
    poster = posters.get(platform)
    if poster is None:
        raise JobError(f"no {platform} adapter is running to post to")
    return poster


# Scheduled reports ---------------------------------------------------------------------------------------


def report_message(schedule: ScheduleSettings, slot: str) -> IncomingMessage:
    """The prompt as a message in the target channel: the agent answers it with that channel's memory."""
    workspace, _, channel = schedule.channel.rpartition("/")
    return IncomingMessage(
        platform=schedule.platform,
        channel=channel,
        workspace=workspace,
        user="scheduler",
        text=schedule.prompt,
        event_id=f"schedule:{schedule.name}:{slot}",
    )


async def report(
    run: JobRun,
    *,
    schedule: ScheduleSettings,
    agent: Agent,
    storage: Storage,
    posters: Mapping[str, Poster],
    channels: ChannelResolver | None = None,
) -> str:
    """Answer the schedule's prompt and post the answer; an answer the agent could not give is not posted. The
    answer follows the target channel's settings (instructions, model, tools, mode), as a message there would."""
    poster = _poster(posters, schedule.platform)
    message = report_message(schedule, run.slot)
    profile = (await channels.resolve(message)).profile if channels is not None else DEFAULT_PROFILE
    reply = await answer(agent, storage, message, profile=profile)
    if reply.status != "answered":
        raise JobError(f"the agent could not answer ({reply.status}, error id {reply.error_id}); nothing posted")
    await poster.post(message.conversation.channel, reply.text)
    return f"posted {len(reply.text)} characters to {message.conversation.channel}"


# Wiring --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class JobDeps:
    """What the jobs need from the running service. `agent` (and `channels`, the channel settings the reports
    follow) are needed only by `[[schedules]]` reports."""

    storage: Storage
    redactor: Redactor
    posters: Mapping[str, Poster]
    breakers: Callable[[], Iterable[CircuitBreaker]]
    agent: Agent | None = None
    channels: ChannelResolver | None = None


JobFn = Callable[[JobRun], Awaitable[str]]


def job_table(settings: Settings) -> list[tuple[str, str, str]]:
    """Every job that runs with these settings: (name, cron line, what it does)."""
    table = [(PRUNE_JOB, settings.scheduler.prune_cron, "delete rows older than their retention")]
    if settings.export.enabled:
        table.append((EXPORT_JOB, settings.export.cron, f"export new reasoning chains to {settings.export.dir}"))
    if settings.summary.channels:
        table.append(
            (
                SUMMARY_JOB,
                settings.summary.cron,
                f"post the metrics summary to {len(settings.summary.channels)} channels",
            )
        )
    table.extend(
        (s.name, s.cron, f"answer a prompt and post it to {s.platform}:{s.channel}") for s in settings.schedules
    )
    return table


def build_jobs(settings: Settings, deps: JobDeps) -> list[Job]:
    """The jobs of `job_table`, each bound to its dependencies."""
    runs: dict[str, JobFn] = {
        PRUNE_JOB: partial(
            prune,
            storage=deps.storage,
            retention=settings.retention,
            fact_max_age_days=settings.memory.fact_max_age_days,
            export_enabled=settings.export.enabled,
        ),
        EXPORT_JOB: partial(export_chains, storage=deps.storage, settings=settings.export, redactor=deps.redactor),
        SUMMARY_JOB: partial(
            metrics_summary,
            storage=deps.storage,
            breakers=deps.breakers,
            targets=settings.summary.channels,
            posters=deps.posters,
        ),
    }
    for schedule in settings.schedules:
        if deps.agent is not None:
            runs[schedule.name] = partial(
                report,
                schedule=schedule,
                agent=deps.agent,
                storage=deps.storage,
                posters=deps.posters,
                channels=deps.channels,
            )
    return [Job(name, cron, runs[name], description) for name, cron, description in job_table(settings) if name in runs]


def job_deps(parley: App, posters: Mapping[str, Poster]) -> JobDeps:
    """The jobs' dependencies, from the running app and the platforms that can post."""
    return JobDeps(
        storage=parley.storage,
        redactor=Redactor(secret_values(parley.settings)),
        posters=posters,
        breakers=lambda: [breaker for _, breaker in parley.agent.all_paths],
        agent=parley.agent,
        channels=parley.channels,
    )


async def live_replicas(storage: Storage, ttl_s: float) -> list[str]:
    """The ids of the replicas whose heartbeat is fresh."""
    return [r.id for r in await storage.replicas.live(now=time.time(), ttl_s=ttl_s)]


@asynccontextmanager
async def scheduled_jobs(parley: App, posters: Mapping[str, Poster]) -> AsyncIterator[Scheduler | None]:
    """The scheduler with every job of the settings, when this process runs it (`scheduler.enabled`)."""
    settings = parley.settings
    if not settings.scheduler.enabled:
        yield None
        return
    scheduler = Scheduler(
        parley.storage.jobs,
        build_jobs(settings, job_deps(parley, posters)),
        timezone=settings.scheduler.timezone,
        misfire_grace_s=settings.scheduler.misfire_grace_s,
        observe=observe_job,
        owner=parley.replica.id,
        live_owners=partial(live_replicas, parley.storage, settings.dispatch.claim_ttl_s),
    )
    async with scheduler:
        yield scheduler
