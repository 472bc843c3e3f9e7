"""The circuit breaker that keeps Parley fast when the model provider is slow or down.

Ours, not a library's (DESIGN.md): half-open admits exactly one trial call at a time, cancellation counts as
neither success nor failure, and time comes from a monotonic clock. The model call, with its own timeout, runs
inside the breaker, so a provider that is slow counts as failing.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter, deque
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from enum import StrEnum
from typing import NamedTuple

from dspy.utils.exceptions import LMInvalidRequestError, LMUnsupportedModelError

from agent.options import BreakerOptions

log = logging.getLogger("parley.breaker")


class _Deadline:
    """The answer's deadline and how many waits for a person hold it paused (vote mode runs several)."""

    def __init__(self, timeout: asyncio.Timeout) -> None:
        self.timeout = timeout
        self.pauses = 0
        self.remaining = 0.0


_deadline: ContextVar[_Deadline | None] = ContextVar("parley_answer_deadline", default=None)


@asynccontextmanager
async def answer_deadline(seconds: float) -> AsyncIterator[None]:
    """A deadline for one answer (TimeoutError when it passes) that a wait for a person can pause."""
    async with asyncio.timeout(seconds) as timeout:
        token = _deadline.set(_Deadline(timeout))
        try:
            yield
        finally:
            _deadline.reset(token)


def deadline_left() -> float | None:
    """Seconds left of the current answer's deadline; None when there is none (or it is paused)."""
    current = _deadline.get()
    when = current.timeout.when() if current is not None else None
    return None if when is None else when - asyncio.get_running_loop().time()


@contextmanager
def deadline_paused() -> Iterator[None]:
    """Stop the answer's clock while waiting for a person's approval: their minutes are not the model's.
    Overlapping waits share the pause; the clock restarts, with the time it had left, when the last ends."""
    current = _deadline.get()
    if current is None or current.timeout.expired():
        yield
        return
    loop = asyncio.get_running_loop()
    if current.pauses == 0:
        when = current.timeout.when()
        current.remaining = max(when - loop.time(), 0.0) if when is not None else 0.0
        current.timeout.reschedule(None)
    current.pauses += 1
    try:
        yield
    finally:
        current.pauses -= 1
        if current.pauses == 0 and not current.timeout.expired():
            current.timeout.reschedule(loop.time() + current.remaining)


def caused_by_input(exc: BaseException) -> bool:
    """Whether a failed model call failed on this request's content, not on the provider's health: text that
    cannot be encoded, or a request the provider refused as invalid (a 400 naming the input, a context too
    long). Such a failure fails one answer; counted by the breaker, a few bad messages would open it for all.
    An unknown model is a configuration error, not the input's, and counts."""
    seen: BaseException | None = exc
    for _ in range(8):  # the cause chain, bounded
        if seen is None:
            return False
        if isinstance(seen, UnicodeError):
            return True
        if isinstance(seen, LMInvalidRequestError) and not isinstance(seen, LMUnsupportedModelError):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


class State(StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class CircuitOpen(Exception):
    """The call was not made: the breaker is open, or half-open with its one trial call under way."""

    def __init__(self, name: str, retry_in_s: float) -> None:
        super().__init__(f"circuit {name} is open; next trial in {retry_in_s:.1f} s")
        self.retry_in_s = retry_in_s


class Transition(NamedTuple):
    """A state change and the wall-clock time it happened (the metrics summary reports changes in a window)."""

    old: State
    new: State
    at: float


@dataclass
class BreakerMetrics:
    calls: int = 0
    successes: int = 0
    failures: int = 0
    rejections: int = 0
    # The most recent state changes, oldest first, and how often each state was entered since start.
    transitions: deque[Transition] = field(default_factory=lambda: deque(maxlen=256))
    entered: Counter[State] = field(default_factory=Counter)


StateListener = Callable[[str, State, State], None]


class CircuitBreaker:
    """closed -> (failure_threshold consecutive failures) -> open -> (reset_timeout) -> half-open ->
    (success_threshold successful trials, one at a time) -> closed; a failed trial opens it again."""

    def __init__(
        self,
        name: str,
        *,
        failure_threshold: int = BreakerOptions.failure_threshold,
        reset_timeout_s: float = BreakerOptions.reset_timeout_s,
        success_threshold: int = BreakerOptions.success_threshold,
        clock: Callable[[], float] = time.monotonic,
        listeners: tuple[StateListener, ...] = (),
    ) -> None:
        self.name = name
        self.failure_threshold = failure_threshold
        self.reset_timeout_s = reset_timeout_s
        self.success_threshold = success_threshold
        self.clock = clock
        self.listeners = list(listeners)
        self.metrics = BreakerMetrics()
        self._state = State.CLOSED
        self._failures = 0
        self._trial_successes = 0
        self._opened_at = 0.0
        self._trial_running = False

    @property
    def state(self) -> State:
        if self._state is State.OPEN and self.clock() - self._opened_at >= self.reset_timeout_s:
            self._move(State.HALF_OPEN)
        return self._state

    def _move(self, new: State) -> None:
        old, self._state = self._state, new
        if old is new:
            return
        self.metrics.transitions.append(Transition(old, new, time.time()))
        self.metrics.entered[new] += 1
        if new is State.OPEN:
            self._opened_at = self.clock()
        if new is State.HALF_OPEN:
            self._trial_successes = 0
        if new is State.CLOSED:
            self._failures = 0
        log.warning("circuit %s: %s -> %s", self.name, old.value, new.value)
        for listener in self.listeners:
            try:
                listener(self.name, old, new)
            except Exception:
                log.exception("circuit %s: a state listener failed", self.name)

    def _admit(self) -> bool:
        """Let a call through or raise CircuitOpen; returns whether the call is the half-open trial."""
        state = self.state
        if state is State.CLOSED:
            return False
        if state is State.HALF_OPEN and not self._trial_running:
            self._trial_running = True
            return True
        self.metrics.rejections += 1
        remaining = max(self.reset_timeout_s - (self.clock() - self._opened_at), 0.0)
        raise CircuitOpen(self.name, remaining)

    @asynccontextmanager
    async def guard(self, neutral: Callable[[BaseException], bool] = lambda exc: False) -> AsyncIterator[None]:
        """`async with breaker.guard(): await call()`: the block's outcome is the call's outcome, except for
        errors `neutral` says are not the provider's (the request's own content): they count as nothing."""
        trial = self._admit()
        self.metrics.calls += 1
        try:
            yield
        except Exception as exc:
            if neutral(exc):
                if trial:
                    self._trial_running = False
                raise
            self._on_failure(trial)
            raise
        except BaseException:
            # Cancellation (shutdown, a client gone) says nothing about the provider's health.
            if trial:
                self._trial_running = False
            raise
        else:
            self._on_success(trial)

    def _on_success(self, trial: bool) -> None:
        self.metrics.successes += 1
        if trial:
            self._trial_running = False
            self._trial_successes += 1
            if self._trial_successes >= self.success_threshold:
                self._move(State.CLOSED)
        elif self._state is State.CLOSED:
            self._failures = 0

    def _on_failure(self, trial: bool) -> None:
        self.metrics.failures += 1
        if trial:
            self._trial_running = False
            self._move(State.OPEN)
            return
        if self._state is State.CLOSED:
            self._failures += 1
            if self._failures >= self.failure_threshold:
                self._move(State.OPEN)
