"""Budgets per user and channel, daily and monthly, in tokens or dollars: checked before any model call, with a
reply naming the budget and when it resets, or a step down to a cheaper model; on both engines. The model is the
fake OpenAI server, so the usage counted is the usage the provider reported."""

from __future__ import annotations

import re
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import replace
from datetime import UTC, datetime

import pytest

from agent.engines import ModelConfig, build_model
from agent.messages import IncomingMessage, Reply
from agent.profile import ChannelProfile
from agent.runtime import Agent, AgentOptions
from agent.storage import Storage
from agent.storage.models import ChainRecord, UsageRecord
from agent.tools import BUILTIN_TOOLS, ToolRegistry, ToolRunner
from bot.budgets import Budget, BudgetGuard, Budgets, budget_text, parse_budget, period_bounds, wait_text
from bot.channels import ChannelConfig
from bot.config import Settings
from bot.dispatcher import Dispatcher, DispatchOptions
from tests.conftest import ENGINES
from tests.fakes.openai_server import FakeOpenAI
from tests.fakes.platform import RecordingPlatform

# A plain question costs the fake two requests (the ReAct step choosing finish, then the extract step), each
# reported as 10 prompt and 10 completion tokens.
PER_ANSWER = 40


@pytest.fixture(params=ENGINES)
def db_engine(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def fake() -> Iterator[FakeOpenAI]:
    with FakeOpenAI() as server:
        yield server


def slack(text: str, *, user: str = "U1", channel: str = "C2") -> IncomingMessage:
    return IncomingMessage(platform="slack", workspace="T1", channel=channel, user=user, text=text, event_id=text)


def model_settings(fake: FakeOpenAI, **budgets: object) -> Settings:
    return Settings(
        lm={"model": "openai/main", "api_base": fake.url, "api_key": "sk-test"},
        models={"cheap": {"model": "openai/cheap"}},
        budgets=budgets,
    )


@pytest.fixture
async def runner() -> AsyncIterator[ToolRunner]:
    built = ToolRunner(ToolRegistry.of(*BUILTIN_TOOLS))
    yield built
    built.close()


async def ask_all(storage: Storage, settings: Settings, runner: ToolRunner, *messages: IncomingMessage) -> list[Reply]:
    """Answer the messages one after another through the dispatcher, with the settings' channels and budgets."""
    lm = settings.lm
    config = ModelConfig(model=lm.model, api_base=lm.api_base, api_key="sk-test", num_retries=0)
    cheap = build_model(ModelConfig(model="openai/cheap", api_base=lm.api_base, api_key="sk-test", num_retries=0))
    agent = Agent(storage, build_model(config), runner, AgentOptions(max_iters=2), models={"cheap": cheap})
    platform = RecordingPlatform("slack")
    channels = ChannelConfig(settings, storage)
    async with Dispatcher(
        storage,
        agent,
        [platform],
        DispatchOptions(rate_limit=None),
        channels=channels,
        budgets=BudgetGuard(storage.usage),
    ) as dispatcher:
        for message in messages:
            await dispatcher.submit(message)
            await dispatcher.join()
    return [reply for _, reply, _ in platform.delivered]


async def test_a_user_over_the_daily_budget_gets_the_budget_reply_and_the_model_gets_no_request(
    storage: Storage, fake: FakeOpenAI, runner: ToolRunner
) -> None:
    settings = model_settings(fake, user_daily=f"{PER_ANSWER} tokens")
    first, second, other = await ask_all(
        storage, settings, runner, slack("hello"), slack("hello again"), slack("hi", user="U2")
    )
    assert first.status == "answered" and other.status == "answered"
    assert second.status == "limited"
    assert re.fullmatch(
        r"You've used your daily budget of 40 tokens \(40 used\)\. "
        r"It resets at 00:00 UTC, in (\d+ h )?\d+ min\.",
        second.text,
    ), second.text
    assert len(fake.requests) == 4  # two answers; none for the message over budget
    # The usage recorded is exactly what the provider reported, per user and per channel.
    used = await storage.usage.spent(since=0, user="slack:U1")
    assert (used.calls, used.input_tokens, used.output_tokens) == (2, 20, 20)
    channel = await storage.usage.spent(since=0, channel="slack:T1/C2")
    assert (channel.calls, channel.tokens) == (len(fake.requests), 20 * len(fake.requests))


async def test_over_budget_with_a_step_down_model_the_answer_runs_on_the_cheaper_model(
    storage: Storage, fake: FakeOpenAI, runner: ToolRunner
) -> None:
    settings = model_settings(fake, channel_daily=f"{PER_ANSWER} tokens", step_down="cheap")
    first, second = await ask_all(storage, settings, runner, slack("hello"), slack("hello again", user="U2"))
    assert first.status == second.status == "answered"
    assert [r["model"] for r in fake.requests] == ["main", "main", "cheap", "cheap"]
    by_model = {t.key: t.tokens for t in await storage.usage.totals(since=0, by="model")}
    assert by_model == {"openai/main": PER_ANSWER, "openai/cheap": PER_ANSWER}


async def test_the_guard_checks_monthly_channel_and_dollar_budgets_and_exempts_approvers_only_when_told(
    storage: Storage,
) -> None:
    now = datetime(2025, 3, 30, 22, 0, tzinfo=UTC).timestamp()
    day, _ = period_bounds("daily", now)
    month, month_end = period_bounds("monthly", now)
    assert month_end == datetime(2025, 4, 1, tzinfo=UTC).timestamp()

    def used(at: float, user: str, tokens: int, cost: float | None) -> UsageRecord:
        return UsageRecord(at, "slack", "slack:T1/C2", user, "openai/main", 1, tokens, 0, cost)

    await storage.usage.record(used(month + 60, "slack:U1", 900, 1.25))  # earlier this month
    await storage.usage.record(used(day + 60, "slack:U1", 100, None))  # today, price unknown
    await storage.usage.record(used(month - 60, "slack:U1", 5000, 9.0))  # last month: not counted
    guard = BudgetGuard(storage.usage, is_approver=lambda m: m.user == "U1", clock=lambda: now)
    message, profile = slack("hi"), ChannelProfile()

    assert await guard.check(message, Budgets(user_daily=Budget(101, "tokens")), profile) is profile
    refused = await guard.check(message, Budgets(user_daily=Budget(100, "tokens")), profile)
    assert isinstance(refused, Reply) and refused.text == (
        "You've used your daily budget of 100 tokens (100 used). It resets at 00:00 UTC, in 2 h."
    )
    monthly = await guard.check(message, Budgets(channel_monthly=Budget(1.25, "usd")), profile)
    assert isinstance(monthly, Reply) and monthly.text == (
        "You've used this channel's monthly budget of $1.25 ($1.25 used). It resets on 1 April at 00:00 UTC, "
        "in 1 d 2 h."
    )
    both = Budgets(user_daily=Budget(50, "tokens"), user_monthly=Budget(1000, "tokens"))
    over = await guard.check(message, both, profile)
    assert isinstance(over, Reply) and "monthly budget of 1,000 tokens" in over.text  # the one that resets last
    exempt = Budgets(user_daily=Budget(1, "tokens"), exempt_approvers=True)
    assert await guard.check(message, exempt, profile) is profile
    assert isinstance(
        await guard.check(
            slack("hi", user="U2"), Budgets(channel_daily=Budget(1, "tokens"), exempt_approvers=True), profile
        ),
        Reply,
    )


async def test_a_persons_budget_set_for_a_channel_counts_their_use_of_that_channel_only(storage: Storage) -> None:
    now = datetime(2025, 3, 30, 12, 0, tzinfo=UTC).timestamp()
    for channel, tokens in (("slack:T1/C2", 30), ("slack:T1/C9", 500)):
        await storage.usage.record(UsageRecord(now - 60, "slack", channel, "slack:U1", "openai/main", 1, tokens, 0))
    settings = Settings(channels={"slack:T1/C2": {"user_daily": "100 tokens"}, "slack:T1/C3": {"user_daily": "off"}})
    channels = ChannelConfig(settings, storage)
    guard = BudgetGuard(storage.usage, clock=lambda: now)
    profile = ChannelProfile()

    here = await channels.resolve(slack("hi"))
    assert await guard.check(slack("hi"), here.budgets, profile) is profile  # 30 of 100 used here; C9's use is not
    # The same limit from [budgets] counts the person's use everywhere.
    everywhere = Budgets(user_daily=Budget(100, "tokens"))
    refused = await guard.check(slack("hi"), everywhere, profile)
    assert isinstance(refused, Reply) and "your daily budget of 100 tokens (530 used)" in refused.text
    over_here = await guard.check(slack("hi"), replace(here.budgets, user_daily=Budget(30, "tokens")), profile)
    assert isinstance(over_here, Reply)
    assert over_here.text.startswith("You've used your daily budget in this channel of 30 tokens (30 used).")


async def test_a_discord_threads_message_keeps_its_parent_and_roles_in_the_inbox_and_its_use_counts_in_the_parent(
    storage: Storage,
) -> None:
    message = IncomingMessage(
        "discord", "TH9", "U1", "hi", workspace="G1", event_id="m1", message_id="m1", parent="C2", roles=("9100",)
    )
    assert await storage.inbox.accept(message) is not None
    [entry] = await storage.inbox.unfinished(["discord"])
    assert entry.message == message  # replayed after a restart, the thread still follows its parent
    at = time.time()
    chain = ChainRecord("hi", "re: hi", "answered", "m", at, 1.0, user_id="U1", platform="discord", model_calls=1)
    chain = replace(chain, input_tokens=7)
    await storage.record_exchange(message.conversation, chain, Reply("re: hi"))
    assert (await storage.usage.spent(since=0, channel="discord:G1/C2")).tokens == 7
    assert [t.text for t in await storage.turns.of_channel("discord:G1/TH9")] == ["hi", "re: hi"]


def test_budgets_are_written_as_tokens_or_dollars() -> None:
    assert parse_budget("50000 tokens") == parse_budget("50,000 tokens") == Budget(50000, "tokens")
    assert parse_budget("$2.50") == parse_budget("2.5 usd") == Budget(2.5, "usd")
    assert parse_budget("off") is None
    assert parse_budget("$1500") == parse_budget("$1,500.00") == parse_budget("1,500 usd") == Budget(1500, "usd")
    # Settings keep a budget's canonical text and read it again for every message: it must read back as itself.
    for written in ("$1500", "1500000 tokens", "$0.01", "2.5 usd"):
        shown = budget_text(written)
        assert budget_text(shown) == shown
    # Nothing a budget cannot show: under a cent, or beyond any number.
    for bad in ("fifty", "0 tokens", "$", "-3 tokens", "$0.001", "9" * 400 + " tokens"):
        with pytest.raises(ValueError, match="not a budget"):
            parse_budget(bad)
    assert [wait_text(s) for s in (30, 3 * 3600 + 12 * 60, 86400 * 12 + 3600 * 4)] == [
        "1 min",
        "3 h 12 min",
        "12 d 4 h",
    ]
