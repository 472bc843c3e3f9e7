"""The circuit breaker and the fallback chain: unit tests on a fake clock, then the real `dspy.LM` HTTP path
against fake OpenAI-compatible servers on 127.0.0.1 that go down and come back."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

from agent.engines import ModelConfig, build_model
from agent.messages import IncomingMessage
from agent.resilience import CircuitBreaker, CircuitOpen, State
from agent.runtime import Agent, AgentOptions, Resilience
from agent.storage import Storage
from agent.tools import ToolRunner
from tests.conftest import Clock, reply_to
from tests.fakes.openai_server import FakeOpenAI


class Boom(Exception):
    pass


async def fail(breaker: CircuitBreaker) -> None:
    with pytest.raises(Boom):
        async with breaker.guard():
            raise Boom


async def succeed(breaker: CircuitBreaker) -> None:
    async with breaker.guard():
        pass


async def test_opens_after_the_threshold_and_rejects_without_calling() -> None:
    clock = Clock()
    changes: list[tuple[str, State, State]] = []
    breaker = CircuitBreaker(
        "m", failure_threshold=3, reset_timeout_s=30, clock=clock, listeners=(lambda *c: changes.append(c),)
    )
    await fail(breaker)
    await fail(breaker)
    await succeed(breaker)  # a success in between starts the count again
    for _ in range(3):
        await fail(breaker)
    assert breaker.state is State.OPEN
    with pytest.raises(CircuitOpen) as rejected:
        async with breaker.guard():
            raise AssertionError("must not run while open")
    assert rejected.value.retry_in_s == pytest.approx(30)
    assert (breaker.metrics.calls, breaker.metrics.failures, breaker.metrics.rejections) == (6, 5, 1)
    assert changes == [("m", State.CLOSED, State.OPEN)]


async def test_half_open_lets_exactly_one_trial_through() -> None:
    clock = Clock()
    breaker = CircuitBreaker("m", failure_threshold=1, reset_timeout_s=10, success_threshold=2, clock=clock)
    await fail(breaker)
    clock.now += 10
    assert breaker.state is State.HALF_OPEN
    release = asyncio.Event()
    entered = asyncio.Event()

    async def trial() -> None:
        async with breaker.guard():
            entered.set()
            await release.wait()

    first = asyncio.create_task(trial())
    await entered.wait()
    with pytest.raises(CircuitOpen):  # a second caller while the trial runs is turned away
        async with breaker.guard():
            pass
    release.set()
    await first
    assert breaker.state is State.HALF_OPEN  # one success of the two required
    await succeed(breaker)
    assert breaker.state is State.CLOSED


async def test_a_failed_trial_opens_again_for_a_full_timeout() -> None:
    clock = Clock()
    breaker = CircuitBreaker("m", failure_threshold=1, reset_timeout_s=10, clock=clock)
    await fail(breaker)
    clock.now += 10
    await fail(breaker)
    assert breaker.state is State.OPEN
    clock.now += 9
    assert breaker.state is State.OPEN
    clock.now += 1
    assert breaker.state is State.HALF_OPEN


async def test_cancellation_counts_as_neither_success_nor_failure() -> None:
    clock = Clock()
    breaker = CircuitBreaker("m", failure_threshold=1, reset_timeout_s=10, clock=clock)
    await fail(breaker)
    clock.now += 10

    async def slow_trial() -> None:
        async with breaker.guard():
            await asyncio.sleep(10)

    task = asyncio.create_task(slow_trial())
    await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert breaker.state is State.HALF_OPEN and breaker.metrics.failures == 1
    await succeed(breaker)  # the trial slot was freed: the next caller is the trial
    assert breaker.state is State.CLOSED

    closed = CircuitBreaker("c", failure_threshold=1, clock=clock)
    task = asyncio.create_task(_hold(closed))
    await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert closed.state is State.CLOSED and closed.metrics.failures == 0


async def _hold(breaker: CircuitBreaker) -> None:
    async with breaker.guard():
        await asyncio.sleep(10)


# The fallback chain over real HTTP ------------------------------------------------------------------------


@pytest.fixture
def primary() -> Iterator[FakeOpenAI]:
    with FakeOpenAI() as fake:
        yield fake


@pytest.fixture
def secondary() -> Iterator[FakeOpenAI]:
    with FakeOpenAI() as fake:
        yield fake


def remote(fake: FakeOpenAI, name: str) -> object:
    return build_model(ModelConfig(model=f"openai/{name}", api_base=fake.url, api_key="sk-test", num_retries=0))


def msg(text: str) -> IncomingMessage:
    return IncomingMessage(platform="console", channel="team", user="alice", text=text)


async def test_outage_opens_the_breaker_and_the_fallback_model_answers(
    storage: Storage, runner: ToolRunner, primary: FakeOpenAI, secondary: FakeOpenAI
) -> None:
    clock = Clock()
    breaker = CircuitBreaker("primary", failure_threshold=2, reset_timeout_s=30, clock=clock)
    agent = Agent(
        storage,
        remote(primary, "main"),  # type: ignore[arg-type]
        runner,
        AgentOptions(max_iters=3),
        Resilience(fallback=remote(secondary, "backup"), breaker=breaker),  # type: ignore[arg-type]
    )
    primary.down = 500
    for _ in range(2):
        reply = await reply_to(agent, msg("what is 6*7?"))
        assert (reply.status, reply.text) == ("answered", "42")  # the fallback model answered
    assert breaker.state is State.OPEN and len(primary.requests) == 2

    for _ in range(3):
        assert (await reply_to(agent, msg("what is 6*7?"))).text == "42"
    assert len(primary.requests) == 2, "the primary is not called while its breaker is open"
    chains = [c async for c in storage.chains.since(0)]
    assert {c["model"] for c in chains} == {"openai/backup"}

    primary.down = None
    clock.now += 30  # half-open: the next message is the one trial call
    reply = await reply_to(agent, msg("what is 6*7?"))
    assert reply.text == "42" and breaker.state is State.CLOSED
    assert len(primary.requests) == 2 + 3  # calculator step, finish and extract, all on the primary again
    last = [c async for c in storage.chains.since(0)][-1]
    assert last["model"] == "openai/main"


async def test_when_every_model_fails_the_user_gets_the_fallback_reply(
    storage: Storage, runner: ToolRunner, primary: FakeOpenAI, secondary: FakeOpenAI
) -> None:
    agent = Agent(
        storage,
        remote(primary, "main"),  # type: ignore[arg-type]
        runner,
        AgentOptions(max_iters=3),
        Resilience(fallback=remote(secondary, "backup"), fallback_reply="The bot is resting. Try later."),  # type: ignore[arg-type]
    )
    primary.down = 500
    secondary.down = 429
    reply = await reply_to(agent, msg("hello"))
    assert reply.status == "fallback" and reply.error_id
    assert reply.text == f"The bot is resting. Try later. (error id {reply.error_id})"
    assert "429" not in reply.text and "fake failure" not in reply.text
    assert len(primary.requests) == 1 and len(secondary.requests) == 1


async def test_breaker_state_and_counts_are_exported_to_prometheus() -> None:
    from prometheus_client import REGISTRY, CollectorRegistry, generate_latest

    from bot.app import resilience
    from bot.config import Settings
    from bot.metrics import BreakerCollector

    registry = CollectorRegistry()
    collector = BreakerCollector()
    registry.register(collector)
    clock = Clock()
    breaker = collector.track(CircuitBreaker("primary", failure_threshold=2, reset_timeout_s=5, clock=clock))

    def sample(name: str, labels: dict[str, str]) -> float | None:
        return registry.get_sample_value(name, labels)

    assert sample("parley_breaker_state", {"breaker": "primary"}) == 0
    await fail(breaker)
    await fail(breaker)
    with pytest.raises(CircuitOpen):
        async with breaker.guard():
            pass
    assert sample("parley_breaker_state", {"breaker": "primary"}) == 2
    assert sample("parley_breaker_calls_total", {"breaker": "primary"}) == 2
    assert sample("parley_breaker_failures_total", {"breaker": "primary"}) == 2
    assert sample("parley_breaker_rejections_total", {"breaker": "primary"}) == 1
    assert sample("parley_breaker_transitions_total", {"breaker": "primary", "to": "open"}) == 1
    clock.now += 5
    assert sample("parley_breaker_state", {"breaker": "primary"}) == 1

    # The application's breakers are in the process registry that /metrics serves.
    built = resilience(Settings(), None)
    assert built.breaker is not None
    text = generate_latest(REGISTRY).decode()
    assert 'parley_breaker_state{breaker="primary"} 0.0' in text
    assert 'parley_breaker_state{breaker="fallback"} 0.0' in text


async def test_waits_for_people_pause_the_answer_deadline_and_overlapping_waits_share_the_pause() -> None:
    from agent.resilience import answer_deadline, deadline_left, deadline_paused

    async def wait_for_person(seconds: float) -> None:
        with deadline_paused():
            assert deadline_left() is None
            await asyncio.sleep(seconds)

    async with answer_deadline(0.2):
        await asyncio.gather(wait_for_person(0.3), wait_for_person(0.5))  # longer than the deadline, together
        left = deadline_left()
        assert left is not None and 0.1 < left <= 0.2
    with pytest.raises(TimeoutError):  # outside a pause the clock runs
        async with answer_deadline(0.1):
            await wait_for_person(0.2)
            await asyncio.sleep(0.2)
