"""How a failing model provider looks from the chat: the real `dspy.LM` HTTP path against FakeOpenAI on
127.0.0.1 failing in every way a provider does (error statuses, rate limits, timeouts, dropped connections,
malformed bodies, slowness), through the agent's circuit breakers and fallback chain.

Checked on dspy 3.4.1: an `openai/...` model with api_base, api_key and timeout runs on DSPy's native lm15
engine, not on LiteLLM. DSPy retries transient errors itself (dspy/clients/execution.py, `aexecute`), sleeping
a valid Retry-After hint when there is one, uncapped, and otherwise 2**attempt seconds.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterator

import pytest

from agent.engines import ModelConfig, ModelHandle, build_model
from agent.messages import IncomingMessage, Reply
from agent.resilience import CircuitBreaker, State
from agent.runtime import Agent, AgentOptions, Resilience
from agent.storage import Storage
from agent.tools import ToolRunner
from tests.conftest import Clock, reply_to
from tests.fakes.openai_server import FakeOpenAI, Fault

TIMEOUT_S = 0.5
FALLBACK_TEXT = Resilience().fallback_reply
# What must never reach a user: internals of the failure, where the model lives, its key.
LEAKS = ("Traceback", "Error", "Exception", "LM", "http", "127.0.0.1", "/v1", "sk-", "openai", "lm15", "fake failure")
# A plain question costs two requests (the ReAct step choosing `finish`, then the extract step);
# arithmetic costs three (the calculator step, `finish`, extract).
HELLO_REQUESTS = 2
SUM_REQUESTS = 3
# asyncio may wake a timer up to its clock resolution early; measured waits allow for that.
EARLY_S = 0.02


@pytest.fixture
def primary() -> Iterator[FakeOpenAI]:
    with FakeOpenAI() as fake:
        yield fake


@pytest.fixture
def secondary() -> Iterator[FakeOpenAI]:
    with FakeOpenAI() as fake:
        yield fake


def model(fake: FakeOpenAI, name: str = "main", *, timeout_s: float = TIMEOUT_S, num_retries: int = 0) -> ModelHandle:
    config = ModelConfig(
        model=f"openai/{name}", api_base=fake.url, api_key="sk-test", timeout_s=timeout_s, num_retries=num_retries
    )
    return build_model(config)


def make_agent(
    storage: Storage,
    runner: ToolRunner,
    handle: ModelHandle,
    breaker: CircuitBreaker,
    *,
    fallback: ModelHandle | None = None,
    fallback_breaker: CircuitBreaker | None = None,
) -> Agent:
    resilience = Resilience(fallback=fallback, breaker=breaker, fallback_breaker=fallback_breaker)
    return Agent(storage, handle, runner, AgentOptions(max_iters=3), resilience)


def msg(text: str) -> IncomingMessage:
    return IncomingMessage(platform="console", channel="team", user="alice", text=text)


def assert_fallback_reply(reply: Reply) -> None:
    """The last-resort reply: the configured text and an error id, nothing about the failure itself."""
    assert reply.status == "fallback" and reply.error_id, reply
    assert reply.text == f"{FALLBACK_TEXT} (error id {reply.error_id})"
    leaked = [leak for leak in LEAKS if leak in reply.text]
    assert not leaked, f"the reply shows {leaked}: {reply.text!r}"


# 1. Every fault: the fallback reply, the breaker counts a failure -----------------------------------------

FAULTS = [
    pytest.param(500, "LMServerError", id="500"),
    pytest.param(Fault.rate_limited(retry_after=0), "LMRateLimitError", id="429-retry-after"),
    pytest.param(Fault.slow(TIMEOUT_S * 4), "LMTransportError", id="timeout"),
    pytest.param(Fault.dropped(), "LMTransportError", id="dropped-connection"),
    pytest.param(Fault.not_json(), "LMProviderError", id="200-not-json"),
    # DSPy reads a body without `choices` as an empty message; the agent takes that as the provider failing.
    pytest.param(Fault.no_choices(), "EmptyCompletion", id="200-no-choices"),
]


@pytest.mark.parametrize(("fault", "error_class"), FAULTS)
async def test_a_failing_model_gets_the_fallback_reply_and_a_breaker_failure(
    storage: Storage,
    runner: ToolRunner,
    primary: FakeOpenAI,
    caplog: pytest.LogCaptureFixture,
    fault: int | Fault,
    error_class: str,
) -> None:
    breaker = CircuitBreaker("primary", failure_threshold=5)
    agent = make_agent(storage, runner, model(primary), breaker)
    primary.down = fault
    with caplog.at_level(logging.WARNING):
        started = time.perf_counter()
        reply = await reply_to(agent, msg("hello"))
        elapsed = time.perf_counter() - started

    assert_fallback_reply(reply)
    assert (breaker.metrics.calls, breaker.metrics.failures, breaker.metrics.successes) == (1, 1, 0)
    assert len(primary.requests) == 1, "num_retries=0: one request, no retry"
    assert elapsed < TIMEOUT_S * 3, "the client gave up at its timeout, it did not wait for the slow answer"
    # Operators find the cause under the error id the user was given; the key is in no log line either.
    error_id = str(reply.error_id)
    assert any(error_id in r.getMessage() and error_class in r.getMessage() for r in caplog.records)
    assert "sk-test" not in caplog.text
    chain = [c async for c in storage.chains.since(0)][-1]
    assert (chain["status"], chain["error_id"]) == ("fallback", reply.error_id)


# 2. DSPy's own retries ------------------------------------------------------------------------------------


async def test_dspy_retries_transient_errors_honouring_retry_after(
    storage: Storage, runner: ToolRunner, primary: FakeOpenAI
) -> None:
    breaker = CircuitBreaker("primary", failure_threshold=1)
    agent = make_agent(storage, runner, model(primary, num_retries=2), breaker)
    rate_limited = Fault.rate_limited(retry_after=0.2)
    server_error = Fault.error(500, retry_after=0)
    primary.fail_next = [rate_limited, server_error]

    started = time.perf_counter()
    reply = await reply_to(agent, msg("hello"))
    elapsed = time.perf_counter() - started

    assert reply.status == "answered" and reply.text == "I don't know."
    # The first model call failed twice and succeeded on its third attempt; the extract step went through.
    assert primary.served == [rate_limited, server_error, None, None]
    assert len(primary.requests) == 2 + HELLO_REQUESTS
    assert primary.requests[0] == primary.requests[1] == primary.requests[2], "a retry resends the same request"
    # DSPy slept the hints (0.2 s, then 0 s) instead of its own backoff of 1 s and then 2 s.
    assert 0.2 - EARLY_S <= elapsed < 1.0
    # The retries happen inside one guarded call: the breaker sees a single success.
    assert (breaker.metrics.calls, breaker.metrics.successes, breaker.metrics.failures) == (1, 1, 0)
    assert breaker.state is State.CLOSED


async def test_without_retry_after_dspy_backs_off_a_second_before_the_first_retry(
    storage: Storage, runner: ToolRunner, primary: FakeOpenAI
) -> None:
    breaker = CircuitBreaker("primary")
    agent = make_agent(storage, runner, model(primary, num_retries=1), breaker)
    primary.fail_next = [500]
    started = time.perf_counter()
    reply = await reply_to(agent, msg("hello"))
    assert reply.status == "answered"
    assert time.perf_counter() - started >= 1.0 - EARLY_S  # 2**0 s: every retried outage costs this before the fallback
    assert len(primary.requests) == 1 + HELLO_REQUESTS


# 3. An outage: the breaker opens, rejects without calling, lets one trial through, closes -----------------


async def test_an_outage_opens_the_breaker_and_one_trial_closes_it(
    storage: Storage, runner: ToolRunner, primary: FakeOpenAI
) -> None:
    clock = Clock()
    breaker = CircuitBreaker("primary", failure_threshold=2, reset_timeout_s=30, clock=clock)
    agent = make_agent(storage, runner, model(primary), breaker)
    primary.down = Fault.dropped()

    for _ in range(2):
        assert_fallback_reply(await reply_to(agent, msg("what is 6*7?")))
    assert breaker.state is State.OPEN and len(primary.requests) == 2

    assert_fallback_reply(await reply_to(agent, msg("what is 6*7?")))
    assert len(primary.requests) == 2, "no request reaches the provider while the breaker is open"
    assert breaker.metrics.rejections == 1

    primary.down = None
    primary.latency_s = 0.1  # the trial is still under way when the second message arrives
    clock.now += 30  # half-open: the next caller is the one trial
    replies = await asyncio.gather(reply_to(agent, msg("what is 6*7?")), reply_to(agent, msg("what is 6*7?")))
    assert sorted(r.status for r in replies) == ["answered", "fallback"]
    assert [r.text for r in replies if r.status == "answered"] == ["42"]
    assert len(primary.requests) == 2 + SUM_REQUESTS, "exactly one trial answer reached the provider"
    # The one successful trial closed the breaker.
    assert [(t.old, t.new) for t in breaker.metrics.transitions] == [
        (State.CLOSED, State.OPEN),
        (State.OPEN, State.HALF_OPEN),
        (State.HALF_OPEN, State.CLOSED),
    ]

    primary.latency_s = 0
    for _ in range(2):
        reply = await reply_to(agent, msg("what is 6*7?"))
        assert (reply.status, reply.text) == ("answered", "42")
    assert len(primary.requests) == 2 + 3 * SUM_REQUESTS


# 4. A slow provider is a failing provider -----------------------------------------------------------------


async def test_a_provider_slower_than_the_timeout_opens_the_breaker(
    storage: Storage, runner: ToolRunner, primary: FakeOpenAI
) -> None:
    timeout_s = 0.2
    breaker = CircuitBreaker("primary", failure_threshold=2, reset_timeout_s=30, clock=Clock())
    agent = make_agent(storage, runner, model(primary, timeout_s=timeout_s), breaker)

    primary.latency_s = timeout_s / 4  # slow, but within the timeout: answered
    reply = await reply_to(agent, msg("hello"))
    assert reply.status == "answered" and breaker.metrics.successes == 1

    primary.latency_s = timeout_s * 3
    for _ in range(2):
        started = time.perf_counter()
        assert_fallback_reply(await reply_to(agent, msg("hello")))
        assert timeout_s - EARLY_S <= time.perf_counter() - started < primary.latency_s
    assert breaker.state is State.OPEN and breaker.metrics.failures == 2
    assert len(primary.requests) == HELLO_REQUESTS + 2

    assert_fallback_reply(await reply_to(agent, msg("hello")))
    assert len(primary.requests) == HELLO_REQUESTS + 2, "the open breaker spares the slow provider"


# 5. The fallback model fails too --------------------------------------------------------------------------


async def test_when_the_fallback_model_fails_too_the_user_gets_the_fallback_reply(
    storage: Storage, runner: ToolRunner, primary: FakeOpenAI, secondary: FakeOpenAI
) -> None:
    breaker = CircuitBreaker("primary", failure_threshold=1, reset_timeout_s=30, clock=Clock())
    fallback_breaker = CircuitBreaker("backup", failure_threshold=1, reset_timeout_s=30, clock=Clock())
    agent = make_agent(
        storage,
        runner,
        model(primary),
        breaker,
        fallback=model(secondary, "backup"),
        fallback_breaker=fallback_breaker,
    )
    primary.down = Fault.slow(TIMEOUT_S * 4)
    secondary.down = Fault.not_json()

    assert_fallback_reply(await reply_to(agent, msg("what is 6*7?")))
    assert (len(primary.requests), len(secondary.requests)) == (1, 1), "both models were tried"
    assert breaker.metrics.failures == 1 and fallback_breaker.metrics.failures == 1
    # Each was tried while closed, and its failure opened it.
    for each in (breaker, fallback_breaker):
        assert [(t.old, t.new) for t in each.metrics.transitions] == [(State.CLOSED, State.OPEN)]

    assert_fallback_reply(await reply_to(agent, msg("what is 6*7?")))
    assert (len(primary.requests), len(secondary.requests)) == (1, 1), "both breakers open: no model is called"
    assert breaker.metrics.rejections == 1 and fallback_breaker.metrics.rejections == 1


async def test_a_retry_after_longer_than_the_answer_deadline_is_cut_short_and_counted_as_a_failure(
    storage: Storage, runner: ToolRunner, primary: FakeOpenAI
) -> None:
    """DSPy would sleep an hour on `Retry-After: 3600`; the answer deadline ends the wait and the user gets
    the fallback within it."""
    breaker = CircuitBreaker("primary", failure_threshold=5)
    handle = model(primary, num_retries=2)
    agent = Agent(storage, handle, runner, AgentOptions(max_iters=3, answer_timeout_s=0.5), Resilience(breaker=breaker))
    primary.fail_next = [Fault.rate_limited(retry_after=3600)]
    started = time.perf_counter()
    reply = await reply_to(agent, msg("hello"))
    assert time.perf_counter() - started < 2
    assert_fallback_reply(reply)
    assert (breaker.metrics.failures, len(primary.requests)) == (1, 1)


# 6. Bad input is not the provider failing -------------------------------------------------------------------


async def test_a_request_the_provider_refuses_as_invalid_fails_that_answer_only(
    storage: Storage, runner: ToolRunner, primary: FakeOpenAI
) -> None:
    """A 400 that names the input is the message's fault: six of them leave the breaker closed (threshold 5),
    each person is told to rephrase, and the next question is answered by the model."""
    breaker = CircuitBreaker("primary", failure_threshold=5)
    agent = make_agent(storage, runner, model(primary), breaker)
    for i in range(6):
        primary.fail_next = [Fault.error(400, "Invalid 'messages[1].content': the text could not be parsed")]
        reply = await reply_to(agent, msg(f"some odd text {i}"))
        assert reply.status == "rejected" and reply.error_id and "rephrase" in reply.text, reply
        assert not [leak for leak in LEAKS if leak in reply.text]
    assert (breaker.state, breaker.metrics.failures) == (State.CLOSED, 0)
    reply = await reply_to(agent, msg("what is 2*21?"))
    assert (reply.status, reply.text) == ("answered", "42")


async def test_six_messages_with_half_an_emoji_leave_the_breaker_closed(
    storage: Storage, runner: ToolRunner, primary: FakeOpenAI
) -> None:
    """Lone surrogates cannot be sent as UTF-8: the agent repairs the text, so the real HTTP client never
    fails on it, the breaker never counts it, and the next person's question is answered by the model."""
    breaker = CircuitBreaker("primary", failure_threshold=5)
    agent = make_agent(storage, runner, model(primary), breaker)
    for i in range(6):
        reply = await reply_to(agent, msg(f"look \ud83d {i}"))
        assert reply.status == "answered", reply
    assert (breaker.state, breaker.metrics.failures) == (State.CLOSED, 0)
    assert all("\ufffd" in prompt for prompt in primary.prompts())
    reply = await reply_to(agent, msg("what is 2*21?"))
    assert (reply.status, reply.text) == ("answered", "42")


async def test_an_unauthorised_key_still_counts_against_the_provider(
    storage: Storage, runner: ToolRunner, primary: FakeOpenAI
) -> None:
    breaker = CircuitBreaker("primary", failure_threshold=1)
    agent = make_agent(storage, runner, model(primary), breaker)
    primary.fail_next = [401]
    assert_fallback_reply(await reply_to(agent, msg("hello")))
    assert breaker.state is State.OPEN
