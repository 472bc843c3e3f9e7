"""ReAct made robust for a service, on top of `dspy.ReAct`.

- every tool call goes through the ToolRunner (validation, approval, timeout, output cap, record);
- a malformed step becomes an observation, a repeated identical call ends the loop;
- context overflow from any engine truncates the oldest steps (DSPy's truncation) instead of failing;
- the trajectory is formatted with plain strings, not a signature rebuilt every step;
- each step is recorded with its model and tool timings and token usage.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Sequence
from typing import Any

import dspy
from dspy.adapters.utils import format_field_value
from dspy.utils.exceptions import AdapterParseError, ContextWindowExceededError, LMInvalidRequestError
from pydantic.fields import FieldInfo

from agent.answer_stream import streaming_answer
from agent.chains import StepRecorder
from agent.loop_guard import guard_answer
from agent.messages import Step
from agent.tools.context import current_or_none
from agent.tools.registry import ToolSpec
from agent.tools.runner import ToolRunner

log = logging.getLogger("parley.agent")

FINISH = "finish"


class EmptyCompletion(Exception):
    """The provider answered with no text at all (a 200 without choices, say): the provider failed, not the
    model's wording, so it counts against the provider's breaker instead of costing a step."""


def raise_if_empty(err: Exception) -> None:
    if isinstance(err, AdapterParseError) and not (err.lm_response or "").strip():
        raise EmptyCompletion("the model provider returned an empty completion") from None


TRUNCATION_ATTEMPTS = 3
# Every trajectory field is text; DSPy formats a value by its field's annotation.
_TEXT_FIELD = FieldInfo(annotation=str)
_OVERFLOW_WORDS = ("context length", "context window", "maximum context", "too many tokens", "exceeds the context")


def is_context_overflow(exc: BaseException) -> bool:
    """Context overflow, however the engine reported it (some servers send a plain invalid-request error)."""
    if isinstance(exc, ContextWindowExceededError):
        return True
    return isinstance(exc, LMInvalidRequestError) and any(w in str(exc).lower() for w in _OVERFLOW_WORDS)


def dspy_tool(spec: ToolSpec) -> dspy.Tool:
    """What the model is told about a tool; calls never go through this object, they go through the runner."""
    return dspy.Tool(spec.fn, name=spec.name, desc=spec.description, args=spec.args)


def _text(value: Any) -> str:
    """A trajectory value as DSPy formats it; a string is already that (no pydantic round trip)."""
    return value if type(value) is str else str(format_field_value(_TEXT_FIELD, value))


class RobustReAct(dspy.ReAct):  # type: ignore[misc]
    """dspy.ReAct whose async loop runs tools through the runner and records every step."""

    def __init__(
        self, signature: type[dspy.Signature], specs: Sequence[ToolSpec], runner: ToolRunner, max_iters: int
    ) -> None:
        super().__init__(signature, tools=[dspy_tool(s) for s in specs], max_iters=max_iters)
        # DSPy types the tool name as a Literal of known names, so an invented name would fail parsing and
        # never reach the runner; as plain text it does, and the runner answers and records it.
        names = ", ".join(self.tools)
        self.react.signature = self.react.signature.with_updated_fields(
            "next_tool_name", type_=str, desc=f"exactly one of: {names}"
        )
        self.runner = runner

    def _format_trajectory(self, trajectory: dict[str, Any]) -> str:
        # The same text as dspy.ReAct's version, without building a pydantic Signature on every step.
        parts = [f"[[ ## {k} ## ]]\n{_text(v)}" for k, v in trajectory.items()]
        return "\n\n".join(parts).strip()

    async def _predict(
        self, module: dspy.Module, trajectory: dict[str, Any], recorder: StepRecorder, input_args: dict[str, Any]
    ) -> dspy.Prediction:
        """The one place the model is called: timed, and retried with older steps dropped on context overflow."""
        for _ in range(TRUNCATION_ATTEMPTS):
            try:
                with recorder.timing():
                    return await module.acall(**input_args, trajectory=self._format_trajectory(trajectory))
            except Exception as err:
                if not is_context_overflow(err):
                    raise
                log.warning("the trajectory exceeded the context window; dropping its oldest step")
                trajectory = self.truncate_trajectory(trajectory)
        raise ContextWindowExceededError(message="the context window was exceeded even after truncation")

    async def aforward(self, **input_args: Any) -> dspy.Prediction:
        max_iters = input_args.pop("max_iters", self.max_iters)
        part = input_args.pop("part", "")
        recorder = StepRecorder()
        with dspy.context(usage_tracker=recorder):
            trajectory, steps, outputs = await self._run(max_iters, part, recorder, input_args)
        used = recorder.take()
        if "answer" in outputs:
            # Every answer passes the loop guard; the tool results are what it falls back on.
            results = [s.observation for s in steps if s.outcome == "ok"]
            outputs["answer"] = guard_answer(str(outputs["answer"]), results)
        answer = str(outputs.get("answer", next(iter(outputs.values()), "")))
        steps.append(
            Step(
                str(outputs.get("reasoning", "")),
                "",
                {},
                answer,
                kind="conclusion",
                part=part,
                model_ms=used.duration_ms,
                input_tokens=used.input_tokens,
                output_tokens=used.output_tokens,
            )
        )
        return dspy.Prediction(trajectory=trajectory, steps=tuple(steps), **outputs)

    async def _run(
        self, max_iters: int, part: str, recorder: StepRecorder, input_args: dict[str, Any]
    ) -> tuple[dict[str, Any], list[Step], dict[str, Any]]:
        """The steps, then the extract call that draws the outputs from them."""
        trajectory, steps = await self._loop(max_iters, part, recorder, input_args)
        try:
            # The whole question's answer streams as it is written; a part's (decompose, vote) is not the reply.
            with streaming_answer() if not part else contextlib.nullcontext():
                extract = await self._predict(self.extract, trajectory, recorder, input_args)
            outputs = {name: extract[name] for name in self.signature.output_fields}
        except (AdapterParseError, ContextWindowExceededError) as err:
            raise_if_empty(err)
            # No answer could be drawn from the steps: the caller tells the user so, plainly.
            log.warning("no answer could be extracted: %s", type(err).__name__)
            outputs = dict.fromkeys(self.signature.output_fields, "")
        return trajectory, steps, outputs

    async def _loop(
        self, max_iters: int, part: str, recorder: StepRecorder, input_args: dict[str, Any]
    ) -> tuple[dict[str, Any], list[Step]]:
        trajectory: dict[str, Any] = {}
        steps: list[Step] = []
        context = current_or_none()
        previous: tuple[str, str] | None = None
        for idx in range(max_iters):
            try:
                pred = await self._predict(self.react, trajectory, recorder, input_args)
            except ContextWindowExceededError:
                log.warning("context window exceeded even after truncation; ending the trajectory")
                break
            except AdapterParseError as err:
                raise_if_empty(err)
                # A step the adapter cannot parse costs one iteration and tells the model what went wrong.
                observation = (
                    "Your last step was not valid JSON with next_thought, next_tool_name and next_tool_args"
                    f" ({type(err).__name__}). Choose one of the listed tools."
                )
                trajectory.update(
                    {
                        f"thought_{idx}": "",
                        f"tool_name_{idx}": "invalid_step",
                        f"tool_args_{idx}": {},
                        f"observation_{idx}": observation,
                    }
                )
                used = recorder.take()
                steps.append(Step("", "", {}, observation, kind="observation", part=part, model_ms=used.duration_ms))
                continue
            used = recorder.take()
            name, args, thought = str(pred.next_tool_name), pred.next_tool_args, str(pred.next_thought)
            call = (name, repr(args))
            if call == previous:
                # The same call with the same arguments gives the same observation: stop looping.
                break
            previous = call
            if name == FINISH:
                observation, outcome, tool_ms, kind = "Completed.", "", None, "thought"
            else:
                result = await self.runner.run(name, args, context, thought=thought)
                observation, outcome, tool_ms, kind = result.observation, result.outcome, result.duration_ms, "action"
            trajectory.update(
                {
                    f"thought_{idx}": thought,
                    f"tool_name_{idx}": name,
                    f"tool_args_{idx}": args,
                    f"observation_{idx}": observation,
                }
            )
            steps.append(
                Step(
                    thought,
                    name,
                    dict(args) if isinstance(args, dict) else {"value": args},
                    observation,
                    kind=kind,
                    outcome=outcome,
                    part=part,
                    model_ms=used.duration_ms,
                    tool_ms=tool_ms,
                    input_tokens=used.input_tokens,
                    output_tokens=used.output_tokens,
                )
            )
            if name == FINISH:
                break
        return trajectory, steps
