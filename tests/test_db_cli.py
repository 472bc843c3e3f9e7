"""`parley db migrate|status|copy` in process (typer's runner): a SQLite file the bot has used, fresh PostgreSQL
schemas of the test server (`pg_url`), and the ways a copy must refuse: a used target, a wrong password, a URL
that is not PostgreSQL's, a server that does not answer."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

import pytest
from typer.testing import CliRunner, Result
from yarl import URL

from agent.approvals.models import ApprovalRequest, ApprovalState, args_hash
from agent.attachments import Attachment
from agent.engines import ScriptedEngine, scripted_model
from agent.messages import IncomingMessage
from agent.runtime import Agent, AgentOptions
from agent.storage import Storage, open_storage
from agent.storage.models import TABLES
from agent.tools import BUILTIN_TOOLS, ToolRegistry, ToolRunner
from bot.answering import answer
from bot.cli import app
from tests.conftest import final, step
from tests.pg import execute, run_sync

cli = CliRunner()
CHANNEL = "slack:T1/C1"
SECRET = "hunter2-not-to-be-printed"


def parley(*args: str) -> Result:
    return cli.invoke(app, list(args))


def message(text: str, event: str, thread: str = "") -> IncomingMessage:
    return IncomingMessage(
        platform="slack", workspace="T1", channel="C1", user="U1", text=text, event_id=event, thread=thread
    )


async def use_the_bot(path: Path) -> None:
    """Rows in every table, the way the bot writes them: answers with tool calls through the inbox (turns,
    facts, chains and their steps, tool executions, usage), then an approval settled and granted, a job run and
    its mark, a working note, and channel settings changed."""
    storage = await open_storage(path=path)
    engine = ScriptedEngine(
        [
            step("remember_fact", key="standup", value="the standup is at 9:30 in room Fjord"),
            step("finish"),
            final("Noted."),
            step("calculator", expression="12*7"),
            step("finish"),
            final("84"),
        ]
    )
    runner = ToolRunner(ToolRegistry.of(*BUILTIN_TOOLS), storage.executions)
    try:
        agent = Agent(storage, scripted_model(engine), runner, AgentOptions(max_iters=4))

        async def agenda(max_bytes: int) -> bytes:
            return b"standup at 9:30"

        shared = Attachment("agenda.txt", "text/plain", 15).bound(agenda)  # so chain_attachments has a row
        first = replace(message("note down the standup time", "Ev1"), attachments=(shared,))
        asked = [first, message("what is 12*7?", "Ev2", thread="1700.1")]
        for incoming in asked:
            entry = await storage.inbox.accept(incoming)
            assert entry is not None
            await storage.inbox.start(entry.id)
            await answer(agent, storage, incoming, inbox_id=entry.id)
            await storage.inbox.delivered(entry.id)
        await storage.facts.add(CHANNEL, "retro", "the retro is on friday")
        await storage.facts.add("discord:G1/C9", "deploys", "deploys happen on tuesday")
        await storage.notes.set(asked[0].conversation, "topic", "planning")
        now = time.time()
        args = {"url": "https://example.com/status"}
        request = ApprovalRequest(
            id="req-1",
            tool="http_get",
            args=args,
            args_hash=args_hash("http_get", args),
            level="approve",
            platform="slack",
            channel=CHANNEL,
            thread="",
            requester="slack:U1",
            created_at=now,
            expires_at=now + 300,
            run_id="run-1",
        )
        await storage.approvals.create(request)
        assert await storage.approvals.settle(request, ApprovalState.APPROVED, actor="slack:U2", now=now) is not None
        await storage.approvals.grant("http_get", CHANNEL, "slack:U2", now=now, request=request)
        assert await storage.jobs.claim("prune", "2026-01-05T03:00", started_at=now)
        await storage.jobs.finish("prune", "2026-01-05T03:00", "ok", finished_at=now + 1, detail="deleted 0 rows")
        await storage.jobs.set_mark("export_chains", "last_id", "2")
        await storage.channel_settings.set(CHANNEL, "model", "fast", actor="slack:U2", now=now)
        await storage.channel_settings.set(CHANNEL, "instructions", "answer in French", actor="slack:U2", now=now)
        await storage.channel_settings.reset(CHANNEL, "model", actor="slack:U2", now=now + 1)
    finally:
        runner.close()
        await storage.close()


@pytest.fixture
def used_db(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The configured SQLite file (PARLEY_DB__PATH), after the bot has used it."""
    path = tmp_path / "team.db"
    asyncio.run(use_the_bot(path))
    monkeypatch.setenv("PARLEY_DB__PATH", str(path))
    return path


def settings_url(url: str) -> str:
    """The settings want a host in the URL: a unix socket's directory (the embedded server's `?host=`) goes
    there percent-encoded, which asyncpg reads as a socket too."""
    parsed = URL(url)
    socket = parsed.query.get("host")
    if not socket:
        return url
    login = quote(parsed.user or "", safe="") + (f":{quote(parsed.password, safe='')}" if parsed.password else "")
    query = urlencode({k: v for k, v in parsed.query.items() if k != "host"})
    return f"{parsed.scheme}://{login}@{quote(socket, safe='')}{parsed.path}?{query}"


def one_line(result: Result) -> str:
    """The single line a failing command prints on stderr, and nothing on stdout."""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.output
    return lines[0]


# ---- status and migrate ----


def test_status_counts_every_table_of_a_used_sqlite_file(used_db: Path) -> None:
    result = parley("db", "status", "--json")
    assert result.exit_code == 0, result.output
    status = json.loads(result.stdout)
    assert (status["engine"], status["location"]) == ("sqlite", str(used_db))
    assert status["schema_version"] == status["latest_version"] > 0
    rows = status["rows"]
    assert list(rows) == list(TABLES)
    assert [table for table, n in rows.items() if n == 0] == []
    assert rows["facts"] == 3 and rows["inbox"] == 2 and rows["chains"] == 2 and rows["turns"] == 4
    assert rows["conversations"] == 2 and rows["approval_grants"] == 1 and rows["job_state"] == 1

    table = parley("db", "status")
    assert table.exit_code == 0, table.output
    assert "engine    sqlite" in table.stdout and f"location  {used_db}" in table.stdout
    assert "schema    version" in table.stdout and "run `parley db migrate`" not in table.stdout
    assert "│ facts " in table.stdout and "│ approval_audit " in table.stdout


def test_status_does_not_create_a_missing_database(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    missing = tmp_path / "nowhere" / "parley.db"
    monkeypatch.setenv("PARLEY_DB__PATH", str(missing))
    result = parley("db", "status")
    assert result.exit_code == 2
    assert "no SQLite database at" in one_line(result)
    assert not missing.exists() and not missing.parent.exists()


def test_migrate_then_status_on_a_fresh_postgres_schema(pg_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PARLEY_DB__URL", settings_url(pg_url))
    before = parley("db", "status", "--json")
    assert before.exit_code == 0, before.output
    assert json.loads(before.stdout)["schema_version"] == 0, "status must not migrate"

    for _ in range(2):  # a deploy pipeline runs it on every release: the second run has nothing to do
        migrated = parley("db", "migrate")
        assert migrated.exit_code == 0, migrated.output
        assert "engine    postgres" in migrated.stdout
        assert "run `parley db migrate`" not in migrated.stdout

    status = json.loads(parley("db", "status", "--json").stdout)
    assert status["engine"] == "postgres"
    assert status["schema_version"] == status["latest_version"] > 0
    assert status["rows"] == dict.fromkeys(TABLES, 0)


# ---- copy ----


async def read_back(storage: Storage) -> dict[str, Any]:
    """What the repositories say about the copied data: every read a running bot relies on."""
    conv, thread = message("", "").conversation, message("", "", thread="1700.1").conversation
    chains = [chain async for chain in storage.chains.since(0.0)]
    entries = [await storage.inbox.get(entry_id) for entry_id in (1, 2)]
    return {
        "relevant": [f.key for f in await storage.facts.relevant(CHANNEL, "when is the standup?", 3)],
        "facts": await storage.facts.of_channel(CHANNEL),
        "turns": await storage.turns.recent(conv) + await storage.turns.recent(thread),
        "notes": await storage.notes.of(conv),
        "chains": chains,
        "steps": [await storage.chains.steps(int(chain["id"])) for chain in chains],
        "inbox": entries,
        "executions": await storage.executions.recent(),
        "approval": await storage.approvals.get("req-1"),
        "audit": await storage.approvals.audit(),
        "grants": await storage.approvals.grants(),
        "runs": await storage.jobs.runs("prune"),
        "mark": await storage.jobs.mark("export_chains", "last_id"),
        "settings": await storage.channel_settings.values([CHANNEL]),
        "setting changes": await storage.channel_settings.history(),
        "usage": await storage.usage.totals(since=0.0, by="model"),
    }


async def both_sides(path: Path, url: str) -> tuple[dict[str, Any], dict[str, Any], dict[str, int], int]:
    """The same reads on the SQLite file and on the PostgreSQL copy, the copy's row counts, and the id the copy
    gives a new inbox row."""
    source, target = await open_storage(path=path), await open_storage(url=url)
    try:
        before, after = await read_back(source), await read_back(target)
        rows = (await target.status()).rows
        entry = await target.inbox.accept(message("a new question after the move", "Ev3"))
        assert entry is not None
        return before, after, rows, entry.id
    finally:
        await source.close()
        await target.close()


def test_copy_moves_every_row_and_the_copy_reads_the_same(used_db: Path, pg_url: str) -> None:
    counts = json.loads(parley("db", "status", "--json").stdout)["rows"]
    result = parley("db", "copy", "--to", pg_url)
    assert result.exit_code == 0, result.output
    assert f"Copied {sum(counts.values()):,} rows from {used_db}" in result.stdout
    assert "every table's count matches" in result.stdout
    assert "│ chain_steps " in result.stdout and "│ approval_audit " in result.stdout

    before, after, rows, new_id = asyncio.run(both_sides(used_db, pg_url))
    assert rows == counts
    assert before["relevant"][0] == "standup"
    assert [key for key in before if not before[key]] == []
    assert after == before
    assert {step.tool for steps in after["steps"] for step in steps} >= {"remember_fact", "calculator"}
    assert new_id == counts["inbox"] + 1, "the identity sequences continue after the copied ids"


def test_copy_refuses_a_database_that_already_holds_data(used_db: Path, pg_url: str) -> None:
    assert parley("db", "copy", "--to", pg_url).exit_code == 0
    again = parley("db", "copy", "--to", pg_url)
    assert again.exit_code == 2
    assert "already holds data" in one_line(again)


def test_copy_from_another_file_than_the_configured_one(used_db: Path, pg_url: str, tmp_path: Path) -> None:
    moved = used_db.rename(tmp_path / "elsewhere.db")
    result = parley("db", "copy", "--from", str(moved), "--to", pg_url, "--batch", "1")
    assert result.exit_code == 0, result.output
    assert str(moved) in result.stdout


@pytest.fixture
def password_role(pg_dsn: str) -> Iterator[str]:
    """A role that logs in with a password (the test server trusts only its superuser), dropped afterwards."""
    role = f"parley_{uuid.uuid4().hex[:8]}"
    run_sync(execute(pg_dsn, f"CREATE ROLE {role} LOGIN PASSWORD 'the-right-one'"))
    try:
        yield role
    finally:
        run_sync(execute(pg_dsn, f"DROP ROLE {role}"))


def test_a_wrong_password_is_one_line_without_the_password(
    used_db: Path, pg_dsn: str, password_role: str, tmp_path: Path
) -> None:
    wrong = str(URL(pg_dsn).with_user(password_role).with_password(SECRET))
    result = parley("db", "copy", "--to", wrong)
    assert result.exit_code == 2
    line = one_line(result)
    assert "refused the password" in line and password_role in line
    assert SECRET not in result.output
    assert "***" in line


def test_a_url_that_is_not_postgresql_is_refused_before_anything_opens(used_db: Path) -> None:
    result = parley("db", "copy", "--to", f"mysql://parley:{SECRET}@db:3306/parley")
    assert result.exit_code == 2
    assert "is not a postgresql:// URL" in one_line(result)
    assert SECRET not in result.output


def test_a_server_that_does_not_answer_exits_1_for_a_retry(used_db: Path) -> None:
    result = parley("db", "copy", "--to", f"postgresql://parley:{SECRET}@127.0.0.1:1/parley")
    assert result.exit_code == 1
    assert "cannot reach PostgreSQL" in one_line(result)
    assert SECRET not in result.output


def test_copy_from_a_missing_file_is_refused(tmp_path: Path, pg_url: str) -> None:
    result = parley("db", "copy", "--from", str(tmp_path / "missing.db"), "--to", pg_url)
    assert result.exit_code == 2
    assert "no SQLite database at" in one_line(result)
