"""Operations: /metrics moves as messages flow and parses as Prometheus text, Sentry events reach an ingest
server on 127.0.0.1 tagged and without tokens, /readyz reports a broken database, logs carry the message's
context and no secrets."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import pytest
import sentry_sdk
import structlog
from prometheus_client.parser import text_string_to_metric_families

from adapters.slack import SlackAdapter, SlackConfig
from agent.engines import ScriptedEngine, scripted_model
from agent.engines.scripted import echo
from agent.messages import IncomingMessage
from agent.ports import ChatPlatform
from agent.runtime import Exchange
from agent.storage.models import conversation_key
from agent.storage.sqlite.storage import SqliteStorage
from bot.app import App, build_app
from bot.config import SentrySettings, Settings
from bot.dispatcher import Dispatcher, DispatchOptions
from bot.http import build_http_app, serve
from bot.jobs import scheduled_jobs
from bot.logs import configure_logging
from bot.observe import error_reports, run_context
from bot.scheduler import Scheduler
from bot.service import readiness
from tests.fakes.platform import RecordingPlatform
from tests.fakes.sentry import FakeSentry
from tests.fakes.slack import FakeSlack

SLACK_TOKEN = "xoxb-1234567890-0987654321-abcdefABCDEF"
OPENAI_KEY = "sk-proj-abcdefghijklmnopqrstuvwxyz012345"


def message(text: str, user: str = "U-alice", channel: str = "C-general", n: int = 0) -> IncomingMessage:
    return IncomingMessage(
        platform="test", channel=channel, workspace="T-acme", user=user, text=text, event_id=f"{channel}-{n}"
    )


@pytest.fixture
async def parley(tmp_path: Path) -> AsyncIterator[App]:
    settings = Settings(db={"path": tmp_path / "parley.db"}, export={"dir": tmp_path / "exports"})
    async with build_app(settings, model=scripted_model(ScriptedEngine(responder=echo))) as app:
        yield app


@dataclass
class Watched:
    """What readiness looks at besides the database: the platforms and the scheduler, set by the test."""

    platforms: list[ChatPlatform] = field(default_factory=list)
    scheduler: Scheduler | None = None


@pytest.fixture
async def http(parley: App) -> AsyncIterator[tuple[str, Watched]]:
    """Parley's HTTP server on a free port, with the readiness `parley run` serves."""
    watched = Watched()

    async def ready() -> dict[str, object]:
        return await readiness(parley, watched.platforms, watched.scheduler)

    runner = await serve(build_http_app(slack=None, readiness=ready), "127.0.0.1", 0)
    port = runner.addresses[0][1]
    try:
        yield f"http://127.0.0.1:{port}", watched
    finally:
        await runner.cleanup()


async def get(url: str) -> tuple[int, str]:
    async with aiohttp.ClientSession() as session, session.get(url) as response:
        return response.status, await response.text()


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def value(found: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str) -> float:
    return found.get((name, tuple(sorted(labels.items()))), 0.0)


async def test_metrics_parse_and_move_when_messages_flow(parley: App, http: tuple[str, Watched]) -> None:
    base, _ = http
    status, before_text = await get(base + "/metrics")
    assert status == 200
    before = samples(before_text)
    platform = RecordingPlatform()
    async with Dispatcher(
        parley.storage, parley.agent, [platform], DispatchOptions(rate_limit=None), parley.approvals
    ) as dispatcher:
        for n in range(3):
            await dispatcher.submit(message(f"question {n}", n=n))
        await dispatcher.submit(message("", n=99))  # rejected: empty
        await dispatcher.join()
        assert value(samples((await get(base + "/metrics"))[1]), "parley_inbox_depth") == 0
    after = samples((await get(base + "/metrics"))[1])

    def moved(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert moved("parley_messages_total", platform="test", outcome="answered") == 3
    assert moved("parley_messages_total", platform="test", outcome="rejected") == 1
    assert moved("parley_message_seconds_count", platform="test") == 4
    model = parley.agent.model.name
    # Each answer is a ReAct step and an extract step.
    assert moved("parley_model_calls_total", model=model) == 6
    assert moved("parley_model_call_seconds_count", model=model) >= 3
    assert value(after, "parley_breaker_state", breaker="primary") == 0
    # No user or channel id in any label.
    for _, labels in after:
        assert not {v for _, v in labels} & {"U-alice", "C-general", "T-acme", "test|test:T-acme/C-general|"}


async def test_job_runs_are_counted_on_metrics(parley: App, http: tuple[str, Watched]) -> None:
    base, _ = http
    before = samples((await get(base + "/metrics"))[1])
    async with scheduled_jobs(parley, {}) as scheduler:
        assert scheduler is not None
        assert (await scheduler.run("prune")).state == "ok"
    after = samples((await get(base + "/metrics"))[1])
    key = {"job": "prune", "outcome": "ok"}
    assert value(after, "parley_job_runs_total", **key) - value(before, "parley_job_runs_total", **key) == 1


async def test_readyz_reports_database_platforms_and_scheduler(parley: App, http: tuple[str, Watched]) -> None:
    base, watched = http
    status, body = await get(base + "/readyz")
    # The scheduler is on in the settings but not running here: not ready.
    assert status == 503 and json.loads(body)["checks"]["scheduler"] == {"ok": False, "running": False}
    with FakeSlack(bot_token=SLACK_TOKEN) as fake:
        adapter = SlackAdapter(SlackConfig(SLACK_TOKEN, "secret", api_url=fake.api_url, stream=False))
        try:
            watched.platforms.append(adapter)
            status, body = await get(base + "/readyz")
            assert json.loads(body)["checks"]["platform:slack"] == {"ok": False, "connected": False}
            await adapter.start()
            async with scheduled_jobs(parley, {}) as scheduler:
                watched.scheduler = scheduler
                status, body = await get(base + "/readyz")
                assert status == 200, body
                checks = json.loads(body)["checks"]
                assert checks["database"] is True and checks["scheduler"]["running"] is True
                assert checks["platform:slack"]["connected"] is True
                assert checks["replica"] == {"ok": True, "id": parley.replica.id, "conversations": 0}

                # The file turns read-only (a full disk or a lost volume looks the same): reads still work.
                assert isinstance(parley.storage, SqliteStorage)
                await parley.storage.db.write(lambda db: db.execute("PRAGMA query_only = ON"))
                status, body = await get(base + "/readyz")
                assert status == 503 and json.loads(body)["checks"]["database"]["ok"] is False
                assert json.loads(body)["checks"]["database"]["error"] == "StoreError"
                db_status = await parley.storage.status()
                assert db_status.schema_version == db_status.latest_version

                await parley.storage.close()  # the database goes away
                status, body = await get(base + "/readyz")
                assert status == 503
                assert json.loads(body)["ready"] is False
                assert json.loads(body)["checks"]["database"]["ok"] is False
        finally:
            await adapter.close()
    status, body = await get(base + "/healthz")
    assert (status, json.loads(body)) == (200, {"status": "ok"})


# Sentry --------------------------------------------------------------------------------------------------


class Exploding:
    """A responder whose failure message carries tokens, as a careless library's might."""

    async def respond(self, message: IncomingMessage, **_: object) -> Exchange:
        raise RuntimeError(f"upstream said no to {SLACK_TOKEN} with key {OPENAI_KEY}")


@pytest.fixture
def sentry() -> Iterator[FakeSentry]:
    with FakeSentry() as fake:
        yield fake


async def test_sentry_events_reach_the_ingest_server_tagged_and_without_tokens(
    parley: App, sentry: FakeSentry, caplog: pytest.LogCaptureFixture
) -> None:
    platform = RecordingPlatform()
    incoming = message("hello")
    async with error_reports(SentrySettings(dsn=sentry.dsn), [SLACK_TOKEN]) as enabled:
        assert enabled
        async with Dispatcher(parley.storage, Exploding(), [platform], DispatchOptions(rate_limit=None)) as d:
            await d.submit(incoming)
            await d.join()
    events = await asyncio.to_thread(sentry.wait_for_events, 1)
    reply = platform.delivered[0][1]
    assert reply.status == "error" and reply.error_id
    event = events[0]
    assert event["tags"]["platform"] == "test"
    assert event["tags"]["conversation"] == conversation_key(incoming)
    assert event["tags"]["error_id"] == reply.error_id, "the id in the user's reply finds the event"
    assert event["exception"]["values"][-1]["type"] == "RuntimeError"
    for frame in event["exception"]["values"][-1]["stacktrace"]["frames"]:
        assert "vars" not in frame
    raw = b"".join(sentry.raw_bodies)
    assert SLACK_TOKEN.encode() not in raw and OPENAI_KEY.encode() not in raw
    assert b"[redacted]" in raw
    assert SLACK_TOKEN not in reply.text and "Traceback" not in reply.text


async def test_sentry_is_off_without_a_dsn_and_after_its_block(sentry: FakeSentry) -> None:
    async with error_reports(SentrySettings(), []) as enabled:
        assert not enabled and not sentry_sdk.get_client().is_active()
    async with error_reports(SentrySettings(dsn=sentry.dsn), []) as enabled:
        assert enabled and sentry_sdk.get_client().is_active()
    assert not sentry_sdk.get_client().is_active(), "no client is left behind for later code (or tests)"


# Logs ----------------------------------------------------------------------------------------------------


@pytest.fixture
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    structlog.reset_defaults()


def test_json_logs_carry_the_message_context_and_no_secrets(
    restore_logging: None, capsys: pytest.CaptureFixture[str]
) -> None:
    secret = "my-private-signing-secret"
    configure_logging("INFO", format="json", secrets=[secret])
    with run_context(platform="slack", conversation="slack|slack:T/C|"):
        logging.getLogger("slack_bolt.App").warning("request signed with %s failed; token %s", secret, SLACK_TOKEN)
        structlog.get_logger("parley.test").info("answered", took_ms=12)
    logging.getLogger("a.library").info("outside any message")
    lines = [json.loads(line) for line in capsys.readouterr().err.splitlines()]
    assert [line["logger"] for line in lines] == ["slack_bolt.App", "parley.test", "a.library"]
    assert lines[0]["platform"] == lines[1]["platform"] == "slack"
    assert lines[1]["conversation"] == "slack|slack:T/C|" and lines[1]["took_ms"] == 12
    assert "platform" not in lines[2]
    text = json.dumps(lines)
    assert secret not in text and SLACK_TOKEN not in text and "[redacted]" in lines[0]["event"]


def test_console_logs_are_readable_lines(restore_logging: None, capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("INFO", format="console")
    logging.getLogger("aiohttp.access").info("served %s", "/healthz")
    err = capsys.readouterr().err
    assert "served /healthz" in err and not err.lstrip().startswith("{")
