"""Recording the reasoning chain of one run: model call timings and token usage.

A `StepRecorder` is DSPy's usage tracker for the run (DSPy hands it each model call's usage, so it counts the
calls too) and times the predictor calls it is wrapped around. Not a DSPy callback: with any callback set,
DSPy inspects the arguments of every decorated call, about a fifth of the agent's own time per answer.
The ReAct loop takes a reading after each step.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

from dspy.utils.usage_tracker import UsageTracker


@dataclass(frozen=True)
class ModelUsage:
    """The model calls made since the last reading."""

    calls: int = 0
    duration_ms: float = 0.0
    input_tokens: int | None = None
    output_tokens: int | None = None

    def __add__(self, other: ModelUsage) -> ModelUsage:
        return ModelUsage(
            self.calls + other.calls,
            self.duration_ms + other.duration_ms,
            _add(self.input_tokens, other.input_tokens),
            _add(self.output_tokens, other.output_tokens),
        )


def _add(a: int | None, b: int | None) -> int | None:
    return None if a is None and b is None else (a or 0) + (b or 0)


class AnswerMeter:
    """Every model call of one answer, by the model that made it, whichever run or mode made it: what an answer
    records as its use. A model that failed after some calls, or a run a person stopped, counts too (neither a
    fallback nor pressing Stop makes tokens free)."""

    def __init__(self) -> None:
        self.by_model: dict[str, ModelUsage] = {}
        self.model = ""  # the model that made the latest call

    def add(self, model: str, call: ModelUsage) -> None:
        self.by_model[model] = self.by_model.get(model, ModelUsage()) + call
        self.model = model

    @property
    def usage(self) -> ModelUsage:
        return sum(self.by_model.values(), ModelUsage())


_meter: ContextVar[AnswerMeter | None] = ContextVar("parley_answer_meter", default=None)


@contextmanager
def metering(meter: AnswerMeter) -> Iterator[None]:
    """Around one answer: every `StepRecorder` under it adds its model calls to `meter` as well."""
    reset = _meter.set(meter)
    try:
        yield
    finally:
        _meter.reset(reset)


class StepRecorder(UsageTracker):  # type: ignore[misc]
    """Collects model call counts, durations and usage for one run; `take()` returns and resets what piled up."""

    def __init__(self) -> None:
        UsageTracker.__init__(self)
        self._pending = ModelUsage()

    @contextmanager
    def timing(self) -> Iterator[None]:
        """Time a predictor call: the model's answer plus DSPy's formatting and parsing around it."""
        started = time.perf_counter()
        try:
            yield
        finally:
            self._note(ModelUsage(duration_ms=(time.perf_counter() - started) * 1000))

    def add_usage(self, lm: str, usage_entry: dict[str, Any]) -> None:
        usage = dict(usage_entry or {})
        tokens_in = usage.get("prompt_tokens", usage.get("input_tokens"))
        tokens_out = usage.get("completion_tokens", usage.get("output_tokens"))
        call = ModelUsage(
            calls=1,
            input_tokens=int(tokens_in) if isinstance(tokens_in, int | float) else None,
            output_tokens=int(tokens_out) if isinstance(tokens_out, int | float) else None,
        )
        self._note(call)
        if (meter := _meter.get()) is not None:
            meter.add(lm, call)

    def _note(self, usage: ModelUsage) -> None:
        self._pending += usage

    def take(self) -> ModelUsage:
        taken, self._pending = self._pending, ModelUsage()
        return taken
