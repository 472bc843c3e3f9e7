"""Usage and cost outside the storage contract: what a model's answer costs (litellm's local price table), an
answer from a priced model through the real `dspy.LM` HTTP path to the fake OpenAI server (its usage row and the
Prometheus cost counter), `parley usage` in process (typer's runner), and the metrics summary's heaviest users
and channels."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import pytest
from dspy.lm15 import ServerError
from prometheus_client import REGISTRY
from typer.testing import CliRunner, Result

from agent.chains import ModelUsage
from agent.engines import ModelConfig, ScriptedEngine, build_model, scripted_model
from agent.engines.scripted import request_text
from agent.messages import IncomingMessage
from agent.pricing import answer_cost, cost_of
from agent.runtime import Agent, AgentOptions, Resilience
from agent.storage import Storage, open_storage
from agent.storage.models import UsageRecord
from agent.tools import ToolRunner
from bot.answering import answer
from bot.cli import app
from bot.metrics import observe_chain
from bot.summary import render, summarise
from bot.usage import parse_since
from tests.fakes.openai_server import FakeOpenAI

PRICED = "openai/gpt-4o-mini"
DAY = 86400.0

# Pricing ---------------------------------------------------------------------------------------------------


def test_a_model_in_litellms_table_is_priced_from_it_and_an_unknown_one_costs_none(
    capsys: pytest.CaptureFixture[str],
) -> None:
    import litellm

    entry = litellm.model_cost["gpt-4o-mini"]
    expected = 1000 * entry["input_cost_per_token"] + 100 * entry["output_cost_per_token"]
    assert cost_of(PRICED, 1000, 100) == pytest.approx(expected) and expected > 0
    assert cost_of("local", 10**6, 10**6) == 0.0 == cost_of("scripted", 5, 5)
    for unknown in ("openai/no-such-model", "no-such-provider/model", "no-such-model"):
        assert cost_of(unknown, 1000, 100) is None, unknown
    assert capsys.readouterr().out == ""  # litellm's provider list for an unknown id never reaches stdout
    assert answer_cost(PRICED, ModelUsage(calls=2, input_tokens=None, output_tokens=5)) is None  # not reported
    assert answer_cost(PRICED, ModelUsage()) is None  # no model call
    assert answer_cost(PRICED, ModelUsage(calls=1, input_tokens=1000, output_tokens=100)) == pytest.approx(expected)


def cost_counter() -> float:
    return REGISTRY.get_sample_value("parley_model_cost_usd_total", {"model": PRICED}) or 0.0


async def test_an_answer_from_a_priced_model_records_the_providers_tokens_and_their_cost(
    storage: Storage, runner: ToolRunner
) -> None:
    before = cost_counter()
    message = IncomingMessage(
        platform="slack", workspace="T1", channel="C1", user="U1", text="what is 6*7?", event_id="E1"
    )
    with FakeOpenAI() as fake:
        handle = build_model(ModelConfig(model=PRICED, api_base=fake.url, api_key="sk-test", num_retries=0))
        agent = Agent(storage, handle, runner, AgentOptions(max_iters=3), observers=[observe_chain])
        reply = await answer(agent, storage, message)
    calls = len(fake.requests)  # the fake reports 10 tokens in and 10 out for every call
    assert reply.status == "answered" and calls >= 2
    spent = await storage.usage.spent(since=0.0, user="slack:U1", channel="slack:T1/C1")
    assert (spent.answers, spent.calls, spent.input_tokens, spent.output_tokens) == (1, calls, 10 * calls, 10 * calls)
    expected = cost_of(PRICED, 10 * calls, 10 * calls)
    assert expected is not None and spent.cost == pytest.approx(expected)
    [by_model] = await storage.usage.totals(since=0.0, by="model")
    assert by_model.key == PRICED
    assert cost_counter() - before == pytest.approx(expected)


# `parley usage` --------------------------------------------------------------------------------------------


def parley(*args: str) -> Result:
    return CliRunner().invoke(app, ["usage", *args])


async def seed(path: Path, rows: list[UsageRecord]) -> None:
    storage = await open_storage(path=path)
    try:
        for row in rows:
            await storage.usage.record(row)
    finally:
        await storage.close()


def used(
    ago_days: float, user: str, channel: str, model: str, tokens: tuple[int, int], cost: float | None
) -> UsageRecord:
    at = time.time() - ago_days * DAY
    return UsageRecord(at, user.split(":")[0], channel, user, model, 2, tokens[0], tokens[1], cost)


@pytest.fixture
def usage_db(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The configured SQLite file, with answers of three users in two channels over the last ten days."""
    path = tmp_path / "parley.db"
    rows = [
        used(0.1, "slack:U1", "slack:T1/C1", PRICED, (1200, 80), 0.25),
        used(1.5, "slack:U1", "slack:T1/C2", PRICED, (800, 20), 0.5),
        used(0.2, "slack:U2", "slack:T1/C1", "local", (300, 30), 0.0),
        used(0.3, "discord:42", "discord:G1/C9", "openai/in-house", (5000, 500), None),
        used(10.0, "slack:U2", "slack:T1/C1", PRICED, (9999, 9999), 9.0),  # before any window asked for below
    ]
    asyncio.run(seed(path, rows))
    monkeypatch.setenv("PARLEY_DB__PATH", str(path))
    return path


def test_parley_usage_lists_each_user_heaviest_first_with_a_total_row(usage_db: Path) -> None:
    result = parley("--since", "7d")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert "Model usage since" in lines[0] and "by user" in lines[0]
    rows = [line for line in lines if line.startswith("│")]
    assert [row.split("│")[1].strip() for row in rows] == ["discord:42", "slack:U1", "slack:U2", "total"]
    cells = [[cell.strip() for cell in row.split("│")[2:-1]] for row in rows]
    assert cells[0] == ["1", "2", "5,000", "500", "5,500", "unknown"]  # no known price: not $0
    assert cells[1] == ["2", "4", "2,000", "100", "2,100", "$0.7500"]
    assert cells[2][-1] == "$0"  # the embedded model is free
    assert cells[3] == ["4", "8", "7,300", "630", "7,930", "$0.7500"]


def test_parley_usage_by_channel_as_json_counts_only_the_window(usage_db: Path) -> None:
    result = parley("--by", "channel", "--since", "24h", "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["by"] == "channel"
    groups = [(g["key"], g["answers"], g["tokens"], g["cost"]) for g in report["groups"]]
    assert groups == [("discord:G1/C9", 1, 5500, None), ("slack:T1/C1", 2, 1610, 0.25)]
    assert (report["total"]["answers"], report["total"]["tokens"]) == (3, 7110)
    by_model = json.loads(parley("--by", "model", "--since", "2000-01-01", "--json", "--limit", "1").stdout)
    assert [g["key"] for g in by_model["groups"]] == [PRICED] and by_model["total"]["answers"] == 5


def test_a_since_that_is_neither_a_span_nor_a_date_is_one_line_and_exit_2(usage_db: Path) -> None:
    result = parley("--since", "last week")
    assert result.exit_code == 2
    assert result.stderr.strip() == (
        "parley: --since 'last week' is neither a span (30m, 24h, 7d, 2w) nor an ISO date (2026-11-01)"
    )
    assert parse_since("2026-11-01", 0.0) == 1793491200.0  # midnight UTC
    assert parse_since("2026-11-01T02:00+02:00", 0.0) == 1793491200.0
    assert parse_since("36h", 1_000_000.0) == 1_000_000.0 - 36 * 3600
    for too_far in ("99999999999d", "9" * 400 + "w"):
        result = parley("--since", too_far)
        assert (result.exit_code, result.stderr.strip()) == (
            2,
            f"parley: --since {too_far!r} reaches back further than any date",
        )


# The metrics summary ---------------------------------------------------------------------------------------


async def test_the_summary_names_the_three_heaviest_users_and_channels_of_its_window(storage: Storage) -> None:
    now = time.time()
    for n, tokens in enumerate((500, 400, 300, 200)):
        await storage.usage.record(used(0.1, f"slack:U{n}", f"slack:T1/C{n}", PRICED, (tokens, 0), None))
    await storage.usage.record(used(0.1, "slack:U3", "slack:T1/C0", PRICED, (50, 0), 0.02))
    await storage.usage.record(used(3.0, "slack:U9", "slack:T1/C9", PRICED, (10**6, 0), None))  # before the window
    summary = await summarise(storage, now - DAY, now + 60)
    assert [(t.key, t.tokens) for t in summary.top_users] == [("slack:U0", 500), ("slack:U1", 400), ("slack:U2", 300)]
    assert [t.key for t in summary.top_channels] == ["slack:T1/C0", "slack:T1/C1", "slack:T1/C2"]
    text = render(summary)
    assert "- Top users: slack:U0 500 tokens, slack:U1 400 tokens, slack:U2 300 tokens" in text
    assert "- Top channels: slack:T1/C0 550 tokens ($0.0200), slack:T1/C1 400 tokens, slack:T1/C2 300 tokens" in text
    assert "- Top users: none" in render(await summarise(storage, now + 60, now + 120))


async def test_an_answer_cut_short_after_model_calls_still_counts_them(storage: Storage, runner: ToolRunner) -> None:
    """The model takes a step, then its provider fails for good: the fallback reply is recorded with the tokens
    the first call used, so a budget counts them (a failing answer is not a free one)."""
    step = {"next_thought": "compute", "next_tool_name": "calculator", "next_tool_args": {"expression": "6*7"}}
    engine = ScriptedEngine([step, ServerError("provider down", provider="scripted")])
    agent = Agent(storage, scripted_model(engine), runner, AgentOptions(max_iters=3))
    message = IncomingMessage(platform="slack", channel="C1", user="U1", text="what is 6*7?", workspace="T1")
    reply = await answer(agent, storage, message)
    assert reply.status == "fallback"
    [first, _] = engine.requests
    spent = await storage.usage.spent(since=0, user="slack:U1")
    assert (spent.calls, spent.input_tokens, spent.output_tokens) == (
        1,
        len(request_text(first)) // 4,
        len(json.dumps(step)) // 4,
    )


async def test_an_answer_the_fallback_finished_counts_the_calls_the_first_model_made_too(
    storage: Storage, runner: ToolRunner
) -> None:
    """The first model takes a step, then fails; the fallback answers from the start. Both models' calls were
    made for this answer, and both count."""
    step = {"next_thought": "compute", "next_tool_name": "calculator", "next_tool_args": {"expression": "6*7"}}
    first = ScriptedEngine([step, ServerError("provider down", provider="scripted")])
    finish = {"next_thought": "done", "next_tool_name": "finish", "next_tool_args": {}}
    backup = ScriptedEngine([finish], responder={"reasoning": "r", "answer": "42"})
    agent = Agent(
        storage, scripted_model(first), runner, AgentOptions(max_iters=3), Resilience(fallback=scripted_model(backup))
    )
    message = IncomingMessage(platform="slack", channel="C1", user="U1", text="what is 6*7?", workspace="T1")
    reply = await answer(agent, storage, message)
    assert reply.text == "42"
    asked = [*first.requests[:1], *backup.requests]
    spent = await storage.usage.spent(since=0, user="slack:U1")
    assert (spent.answers, spent.calls, spent.input_tokens) == (
        1,
        len(asked),
        sum(len(request_text(r)) // 4 for r in asked),
    )
