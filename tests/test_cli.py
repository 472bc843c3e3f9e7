"""The `parley` command end to end in subprocesses, on temporary databases.

The model is either the fake OpenAI-compatible server on 127.0.0.1 (the real `dspy.LM` HTTP path) or the
embedded local model.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.commands import COMMANDS
from agent.storage import open_storage
from tests.conftest import ENGINES
from tests.fakes.openai_server import FakeOpenAI

pytestmark = pytest.mark.slow
PARLEY = [sys.executable, "-m", "bot"]
QUESTIONS = "what is 12*7?\nremember that the standup is at 9:30\nwhen is the standup?\n"


@pytest.fixture(params=ENGINES)
def db_engine(request: pytest.FixtureRequest) -> str:
    """Tests that take `database` serve on SQLite and on PostgreSQL (`PARLEY_DB__URL`) alike."""
    return str(request.param)


@pytest.fixture
def database(db_engine: str, tmp_path: Path, request: pytest.FixtureRequest) -> dict[str, str]:
    """The environment that picks the engine: nothing for the SQLite file, or a fresh PostgreSQL schema's URL."""
    return {"PARLEY_DB__URL": request.getfixturevalue("pg_url")} if db_engine == "postgres" else {}


def chains_in(tmp_path: Path, database: dict[str, str]) -> int:
    """How many reasoning chains the process recorded, read through the storage seam of the same database."""
    import asyncio

    async def count() -> int:
        storage = await open_storage(url=database.get("PARLEY_DB__URL"), path=tmp_path / "parley.db")
        try:
            return await storage.chains.count()
        finally:
            await storage.close()

    return asyncio.run(count())


@pytest.fixture
def fake_model() -> Iterator[FakeOpenAI]:
    with FakeOpenAI() as fake:
        yield fake


def parley(
    args: list[str], env: dict[str, str], stdin: str = "", timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        PARLEY + args, input=stdin, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )


def base_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PARLEY_", "SLACK_", "DISCORD_"))}
    env.update(PARLEY_DB__PATH=str(tmp_path / "parley.db"), **extra)
    return env


def fake_env(tmp_path: Path, fake: FakeOpenAI) -> dict[str, str]:
    return base_env(
        tmp_path, PARLEY_LM__MODEL="openai/fake-model", PARLEY_LM__API_BASE=fake.url, PARLEY_LM__API_KEY="sk-test"
    )


def test_piped_chat_answers_each_line_and_remembers_across_runs(
    tmp_path: Path, fake_model: FakeOpenAI, database: dict[str, str]
) -> None:
    env = {**fake_env(tmp_path, fake_model), **database}
    first = parley(["chat", "--channel", "team"], env, QUESTIONS + "\n")
    assert first.returncode == 0, first.stderr
    lines = first.stdout.splitlines()
    assert len(lines) == 4
    assert lines[0] == "84"
    assert "9:30" in lines[1] and "9:30" in lines[2]
    assert "empty" in lines[3]

    second = parley(["chat", "--channel", "team"], env, "when is the standup?\n")
    assert second.returncode == 0, second.stderr
    assert "9:30" in second.stdout
    assert "standup: the standup is at 9:30" in fake_model.prompts()[-2]
    assert chains_in(tmp_path, database) == 4
    assert (tmp_path / "parley.db").exists() == ("PARLEY_DB__URL" not in database)

    other = parley(["chat", "--channel", "ops"], env, "when is the standup?\n")
    assert "9:30" not in other.stdout

    facts = parley(["memory", "facts", "--channel", "team"], env)
    assert "standup: the standup is at 9:30" in facts.stdout
    turns = parley(["memory", "turns", "--channel", "team"], env)
    assert "user" in turns.stdout and "84" in turns.stdout


def test_ask_json_prints_answer_and_trajectory(tmp_path: Path, fake_model: FakeOpenAI) -> None:
    proc = parley(["ask", "what is 6*7?", "--channel", "team", "--json"], fake_env(tmp_path, fake_model))
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert data["answer"] == "42"
    step = data["trajectory"][0]
    assert {"thought", "tool", "args", "observation", "kind", "outcome", "model_ms", "tool_ms"} <= set(step)
    assert (step["tool"], step["args"], step["observation"]) == ("calculator", {"expression": "6*7"}, "42")


def test_model_outage_gets_a_reply_with_an_error_id(tmp_path: Path, fake_model: FakeOpenAI) -> None:
    fake_model.fail_next.extend([500] * 20)
    proc = parley(["chat"], fake_env(tmp_path, fake_model), "hello\n")
    assert proc.returncode == 0
    assert "error id" in proc.stdout and "Traceback" not in proc.stdout


def test_forget_and_export_import(tmp_path: Path, fake_model: FakeOpenAI) -> None:
    env = fake_env(tmp_path, fake_model)
    parley(["chat", "--channel", "team"], env, "remember that retro is on friday\n")
    out = tmp_path / "team.json"
    assert parley(["memory", "export", "--channel", "team", "--out", str(out)], env).returncode == 0
    assert parley(["memory", "forget", "--channel", "team", "--yes"], env).returncode == 0
    assert "No facts" in parley(["memory", "facts", "--channel", "team"], env).stdout
    assert parley(["memory", "import", str(out), "--channel", "copy"], env).returncode == 0
    assert "retro" in parley(["memory", "facts", "--channel", "copy"], env).stdout
    chains = tmp_path / "chains.jsonl"
    assert parley(["chains", "export", "--out", str(chains)], env).returncode == 0


def test_corrupted_database_is_one_line_not_a_traceback(tmp_path: Path) -> None:
    (tmp_path / "parley.db").write_bytes(b"garbage" * 1000)
    proc = parley(["memory", "facts", "--channel", "x"], base_env(tmp_path))
    assert proc.returncode == 1
    assert "not a valid SQLite database" in proc.stderr
    assert "Traceback" not in proc.stderr and proc.stderr.strip().count("\n") == 0


def test_config_masks_secrets(tmp_path: Path) -> None:
    env = base_env(tmp_path, SLACK_BOT_TOKEN="xoxb-secret-token", SLACK_SIGNING_SECRET="signing-secret")
    proc = parley(["config"], env)
    assert proc.returncode == 0
    assert json.loads(proc.stdout)["slack"]["bot_token"] == "**********"
    assert "xoxb-secret-token" not in proc.stdout + proc.stderr


def test_help_does_not_import_dspy_or_the_model(tmp_path: Path) -> None:
    code = (
        "import sys; from typer.testing import CliRunner; from bot.cli import app; "
        "r = CliRunner().invoke(app, ['--help']); assert r.exit_code == 0, r.output; "
        "print(sorted(m for m in ('dspy', 'litellm', 'llama_cpp') if m in sys.modules))"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


def test_tools_lists_schemas(tmp_path: Path) -> None:
    proc = parley(["tools"], base_env(tmp_path))
    assert proc.returncode == 0, proc.stderr
    for name in ("calculator", "current_time", "remember_fact", "recall_facts"):
        assert name in proc.stdout
    assert '"expression"' in proc.stdout


def test_doctor_checks_database_and_model(tmp_path: Path, fake_model: FakeOpenAI) -> None:
    proc = parley(["doctor"], fake_env(tmp_path, fake_model))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "ok   database" in proc.stdout and "ok   model" in proc.stdout
    fake_model.fail_next.extend([500] * 20)
    failing = parley(["doctor"], fake_env(tmp_path, fake_model))
    assert failing.returncode == 1 and "FAIL model" in failing.stdout


def test_local_model_chat_end_to_end(tmp_path: Path) -> None:
    """The README's example on the embedded model: one answer per line, and memory across runs."""
    env = base_env(tmp_path)
    first = parley(["chat", "--channel", "team"], env, QUESTIONS, timeout=300)
    assert first.returncode == 0, first.stderr
    assert len(first.stdout.splitlines()) >= 3
    facts = parley(["memory", "facts", "--channel", "team"], env)
    assert "standup: the standup is at 9:30" in facts.stdout
    second = parley(["chat", "--channel", "team"], env, "when is the standup?\n", timeout=300)
    assert second.returncode == 0 and second.stdout.strip()


def test_sigterm_lets_the_running_message_finish_and_leaves_the_rest_in_the_inbox(
    tmp_path: Path, fake_model: FakeOpenAI
) -> None:
    """A deploy stops the process with SIGTERM: the message being answered is answered within the grace
    period, the ones not started stay in the inbox, and the process exits 143 with the database closed."""
    import asyncio
    import signal
    import time

    from agent.storage import open_storage
    from agent.storage.models import State

    fake_model.latency_s = 0.5  # each answer takes two requests: about a second
    proc = subprocess.Popen(
        [*PARLEY, "chat"],
        env=fake_env(tmp_path, fake_model),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdin is not None
    proc.stdin.write("hello\nhow are you?\nbye\n")
    proc.stdin.flush()  # stdin stays open: a terminal that has not hung up
    deadline = time.monotonic() + 60
    while not fake_model.requests:
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.01)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 143, err
    assert out.splitlines() == ["I don't know."]  # the first answer, and only it
    assert "Traceback" not in err

    async def inbox() -> tuple[int, list[tuple[str, State, str | None]], list[tuple[str, State]]]:
        storage = await open_storage(path=tmp_path / "parley.db")
        try:
            rows = (await storage.status()).rows["inbox"]
            entries = [await storage.inbox.get(i) for i in range(1, rows + 1)]
            unfinished = await storage.inbox.unfinished(["console"])
        finally:
            await storage.close()
        stored = [(e.message.text, e.state, e.reply.text if e.reply else None) for e in entries if e is not None]
        return rows, stored, [(e.message.text, e.state) for e in unfinished]

    rows, stored, unfinished = asyncio.run(inbox())
    assert rows == 3
    assert stored == [
        ("hello", State.ANSWERED, "I don't know."),
        ("how are you?", State.RECEIVED, None),
        ("bye", State.RECEIVED, None),
    ]
    # The answered message was delivered (a restart does not send it again); the other two wait to be answered.
    assert unfinished == [("how are you?", State.RECEIVED), ("bye", State.RECEIVED)]


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def test_run_serves_slack_over_http_with_health_and_metrics(
    tmp_path: Path, fake_model: FakeOpenAI, database: dict[str, str]
) -> None:
    """`parley run` with Slack settings: a signed mention to /slack/events is answered in its thread."""
    import signal
    import time
    import urllib.request

    from tests.fakes.slack import FakeSlack, event_callback_body, slack_headers

    port = free_port()
    with FakeSlack() as slack:
        env = {**fake_env(tmp_path, fake_model), **database}
        env.update(
            PARLEY_SLACK__BOT_TOKEN="xoxb-test",
            PARLEY_SLACK__SIGNING_SECRET="run-secret",
            PARLEY_SLACK__API_URL=slack.api_url,
            PARLEY_HTTP__PORT=str(port),
        )
        proc = subprocess.Popen([*PARLEY, "run"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        base = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 60
            while True:
                assert proc.poll() is None, proc.communicate()[1]
                try:
                    with urllib.request.urlopen(f"{base}/healthz", timeout=1) as health:
                        assert json.load(health) == {"status": "ok"}
                        break
                except OSError:
                    assert time.monotonic() < deadline
                    time.sleep(0.1)
            event = {"type": "app_mention", "user": "U1", "text": "<@UBOT> what is 6*7?", "ts": "1.5", "channel": "C9"}
            body = event_callback_body(event, event_id="EvRun")
            request = urllib.request.Request(
                f"{base}/slack/events", data=body, headers=slack_headers("run-secret", body), method="POST"
            )
            with urllib.request.urlopen(request, timeout=10) as answer:
                assert answer.status == 200
            # Streamed by default (PARLEY_SLACK__STREAM): the answer ends the stream in the mention's thread.
            while not [s for s in slack.streams("C9") if s["state"] == "stopped"]:
                assert time.monotonic() < deadline
                time.sleep(0.05)
            [stream] = slack.streams("C9")
            assert (stream["thread_ts"], stream["text"]) == ("1.5", "42") and slack.posted() == []
            with urllib.request.urlopen(f"{base}/readyz", timeout=5) as ready:
                assert json.load(ready)["ready"] is True
            with urllib.request.urlopen(f"{base}/metrics", timeout=5) as metrics:
                assert 'parley_breaker_state{breaker="primary"} 0.0' in metrics.read().decode()
            # SIGTERM while a slower answer streams: it finishes in the shutdown's grace period, into its stream
            # (the platforms close only after the dispatcher stopped).
            fake_model.latency_s = 0.15
            event = {**event, "ts": "1.6"}
            body = event_callback_body(event, event_id="EvRunLate")
            request = urllib.request.Request(
                f"{base}/slack/events", data=body, headers=slack_headers("run-secret", body), method="POST"
            )
            with urllib.request.urlopen(request, timeout=10) as answer:
                assert answer.status == 200
            while len(slack.streams("C9")) < 2:
                assert time.monotonic() < deadline
                time.sleep(0.02)
        finally:
            proc.send_signal(signal.SIGTERM)
            _, err = proc.communicate(timeout=30)
        assert proc.returncode == 143, err
        assert "xoxb-test" not in err and "run-secret" not in err
        late = slack.streams("C9")[1]
        assert (late["thread_ts"], late["state"], late["text"]) == ("1.6", "stopped", "42") and slack.posted() == []
    assert chains_in(tmp_path, database) == 2


def test_run_with_a_refused_slack_token_stops_with_one_line(tmp_path: Path, fake_model: FakeOpenAI) -> None:
    from tests.fakes.slack import FakeSlack

    with FakeSlack(bot_token="xoxb-the-real-one") as slack:
        env = fake_env(tmp_path, fake_model)
        env.update(
            PARLEY_SLACK__BOT_TOKEN="xoxb-wrong",
            PARLEY_SLACK__SIGNING_SECRET="s",
            PARLEY_SLACK__API_URL=slack.api_url,
            PARLEY_HTTP__PORT=str(free_port()),
        )
        proc = parley(["run"], env, timeout=60)
    assert proc.returncode == 1
    assert proc.stderr.strip() == "parley: Slack refused the bot token (invalid_auth)"


def test_run_serves_discord_and_discord_sync_registers_commands(
    tmp_path: Path, fake_model: FakeOpenAI, database: dict[str, str]
) -> None:
    """`parley run` with a Discord token: a mention over the fake gateway is answered as a reply."""
    import signal
    import time

    from tests.fakes.discord import FakeDiscord

    with FakeDiscord() as discord:
        env = {**fake_env(tmp_path, fake_model), **database}
        env.update(
            PARLEY_DISCORD__TOKEN=discord.token,
            PARLEY_DISCORD__API_URL=discord.api_url,
            PARLEY_DISCORD__GATEWAY_URL=discord.gateway_url,
            PARLEY_HTTP__PORT=str(free_port()),
        )
        synced = parley(["discord", "sync", "--guild", discord.guild_id], env, timeout=60)
        assert synced.returncode == 0, synced.stderr
        assert synced.stdout.strip() == f"Synced {', '.join(COMMANDS)} to guild {discord.guild_id}"

        proc = subprocess.Popen([*PARLEY, "run"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            deadline = time.monotonic() + 60
            while discord.ready_count < 1:
                assert proc.poll() is None, proc.communicate()[1]
                assert time.monotonic() < deadline
                time.sleep(0.05)
            channel = discord.channel_ids[0]
            discord.message_create(f"<@{discord.bot_user_id}> what is 6*7?", mentions_bot=True)
            # Streamed by default (PARLEY_DISCORD__STREAM): one message, edited until it shows the answer.
            while [m["content"] for m in discord.messages(channel)] != ["42"]:
                assert time.monotonic() < deadline
                time.sleep(0.05)
            while len(discord.command_syncs) < 2:  # after on_ready, the changed command set is synced
                assert time.monotonic() < deadline
                time.sleep(0.05)
        finally:
            proc.send_signal(signal.SIGTERM)
            _, err = proc.communicate(timeout=30)
        assert proc.returncode == 143, err
        assert discord.token not in err
        # The first start synced the global commands (the guild sync above does not count for them).
        assert [s.guild_id for s in discord.command_syncs] == [discord.guild_id, None], err
    assert chains_in(tmp_path, database) == 1


def test_jobs_list_and_run_a_report_and_a_built_in_job(tmp_path: Path, fake_model: FakeOpenAI) -> None:
    schedule = {"name": "standup", "cron": "0 9 * * mon-fri", "platform": "console", "channel": "team"}
    env = fake_env(tmp_path, fake_model)
    env["PARLEY_SCHEDULES"] = json.dumps([{**schedule, "prompt": "when is the standup?"}])
    env["PARLEY_EXPORT__DIR"] = str(tmp_path / "exports")
    env["PARLEY_EXPORT__GRACE_S"] = "0"  # export the chains just made, not only those a minute old
    assert parley(["chat", "--channel", "team"], env, "remember that the standup is at 9:30\n").returncode == 0

    listed = parley(["jobs", "list", "--json"], env)
    assert listed.returncode == 0, listed.stderr
    jobs = {row["name"]: row for row in json.loads(listed.stdout)}
    assert list(jobs) == ["prune", "export_chains", "standup"]
    assert jobs["standup"]["cron"] == "0 9 * * mon-fri" and jobs["standup"]["last_run"] is None
    assert jobs["standup"]["next_run"].endswith("09:00:00+00:00")

    report = parley(["jobs", "run", "standup"], env)
    assert report.returncode == 0, report.stderr
    assert "[#team]" in report.stdout and "9:30" in report.stdout
    exported = parley(["jobs", "run", "export_chains"], env)
    assert exported.returncode == 0, exported.stderr
    assert "exported 2 chains" in exported.stdout
    assert len(list((tmp_path / "exports").glob("chains-*.jsonl"))) == 1

    after = {row["name"]: row for row in json.loads(parley(["jobs", "list", "--json"], env).stdout)}
    assert (after["standup"]["outcome"], after["export_chains"]["outcome"]) == ("ok", "ok")
    assert after["prune"]["last_run"] is None

    unknown = parley(["jobs", "run", "nightly"], env)
    assert unknown.returncode == 2 and "no job 'nightly'" in unknown.stderr


def test_a_bad_cron_line_stops_start_up_with_one_line_naming_it(tmp_path: Path) -> None:
    proc = parley(["jobs", "list"], base_env(tmp_path, PARLEY_SCHEDULER__PRUNE_CRON="0 9 * * monday"))
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "PARLEY_SCHEDULER__PRUNE_CRON" in proc.stderr


def test_a_database_that_cannot_be_used_stops_start_up_with_one_line(tmp_path: Path, pg_dsn: str) -> None:
    """A wrong URL or an unknown database is a setting to fix (exit 2); a server that does not answer may come
    back (exit 1). Either way one line, and never the password."""
    from yarl import URL

    server = URL(pg_dsn)
    unknown_db = str(server.with_path("/no_such_parley_db").with_query(server.query))
    cases = [
        ("mysql://parley:s3cret@db/parley", 2, "parley: invalid setting PARLEY_DB__URL (db.url): Value error, scheme"),
        (unknown_db, 2, "parley: PostgreSQL at postgresql://postgres:@/no_such_parley_db?host="),
        ("postgresql://parley:s3cret@127.0.0.1:1/parley", 1, "parley: cannot reach PostgreSQL at "),
    ]
    for url, code, start in cases:
        proc = parley(["run"], base_env(tmp_path, PARLEY_DB__URL=url), timeout=60)
        assert proc.returncode == code, proc.stderr
        assert proc.stderr.startswith(start) and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
        assert "s3cret" not in proc.stderr + proc.stdout
