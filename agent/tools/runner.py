"""The tool runner: the one path every tool call takes, whoever asks for it.

validate arguments -> pre-hooks -> approval gate -> run with a timeout (sync tools on a worker thread) ->
cap the output -> post-hooks -> record the execution. Every failure becomes a short observation the model
can act on; nothing a tool does can crash the run or stall the event loop.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import json
import logging
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, Protocol

from pydantic import ValidationError

from agent.events import StepFinished, StepStarted, brief, emit, summarise
from agent.storage.models import Execution
from agent.tools.context import ToolContext, tool_context
from agent.tools.registry import ToolError, ToolRegistry, ToolSpec

if TYPE_CHECKING:  # the storage seam imports approval models, whose package imports this module
    from agent.storage.base import Executions

log = logging.getLogger("parley.tools")

Outcome = Literal["ok", "error", "invalid_args", "unknown_tool", "timeout", "denied", "cancelled"]
DEFAULT_MAX_OUTPUT_CHARS = 4000
# Sync tools run here, not on the default executor: a hung tool must not starve the database or the model.
TOOL_THREADS = 8


@dataclass(frozen=True)
class ToolCall:
    """A request to run a tool, bound to the conversation that asked for it."""

    tool: str
    args: dict[str, Any]
    context: ToolContext | None = None
    # The call's step number in its message (agent/events.py), 0 when nobody is told about its steps.
    step: int = 0


@dataclass(frozen=True)
class ToolResult:
    observation: str
    outcome: Outcome
    duration_ms: float
    truncated: bool = False

    @property
    def ok(self) -> bool:
        return self.outcome == "ok"


class ToolRefused(Exception):
    """Raised by a pre-hook or the approval gate to stop a call; the message becomes the observation."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class RunStopped(Exception):
    """Raised by the approval gate to end the whole answer, not just the call: `reply` is what the person is
    told (a cap they reached, say). The model is not asked to relay it, so the person always sees it."""

    def __init__(self, reply: str) -> None:
        super().__init__(reply)
        self.reply = reply


class ToolHook(Protocol):
    """`before` runs ahead of every validated call and may raise ToolRefused; `after` sees every outcome."""

    async def before(self, call: ToolCall, spec: ToolSpec) -> None: ...

    async def after(self, call: ToolCall, result: ToolResult) -> None: ...


class ApprovalGate(Protocol):
    """Decides whether a call may run; raises ToolRefused with the reason when it may not."""

    async def check(self, call: ToolCall, spec: ToolSpec) -> None: ...


def denied_by_policy(spec: ToolSpec) -> ToolRefused:
    return ToolRefused(f"{spec.name} is disabled by policy; answer without it")


def cannot_ask(spec: ToolSpec) -> ToolRefused:
    """Nobody can be asked here (no conversation, or a platform without prompts): refused, never run."""
    return ToolRefused(f"{spec.name} needs a person's approval, which cannot be asked for here")


class PolicyGate:
    """The gate until approvals can be asked for: `allow` runs, everything else is refused.

    Refusing `confirm` and `approve` (instead of running them) keeps the promise that no risky tool runs
    without a human's yes, even before there is a way to ask.
    """

    async def check(self, call: ToolCall, spec: ToolSpec) -> None:
        if spec.approval == "deny":
            raise denied_by_policy(spec)
        if spec.approval != "allow":
            raise cannot_ask(spec)


@dataclass
class ToolRunner:
    registry: ToolRegistry
    executions: Executions | None = None
    hooks: Sequence[ToolHook] = ()
    gate: ApprovalGate = field(default_factory=PolicyGate)
    max_output_chars: int = DEFAULT_MAX_OUTPUT_CHARS
    _threads: ThreadPoolExecutor = field(
        default_factory=lambda: ThreadPoolExecutor(TOOL_THREADS, thread_name_prefix="parley-tool")
    )

    async def run(
        self, name: str, args: object, context: ToolContext | None = None, *, thought: str = ""
    ) -> ToolResult:
        """Run one call and return what the model should observe; never raises except on cancellation.

        The context's `progress` is told the step as it starts (with `thought`, what led to it) and as it ends."""
        started = time.time()
        clock = time.perf_counter()
        progress = context.progress if context is not None else None
        step = next(context.steps) if context is not None and progress is not None else 0
        call = ToolCall(name, dict(args) if isinstance(args, dict) else {"value": args}, context, step)
        if progress is not None:  # summarised only for someone watching: an argument may be a whole file
            emit(progress, StepStarted(step, name, brief(thought, 200), summarise(call.args)))
        spec = self.registry.get(name)
        try:
            allowed = context.allowed if context is not None else None
            if spec is None or not spec.enabled or (allowed is not None and name not in allowed):
                available = [s.name for s in self.registry.enabled() if allowed is None or s.name in allowed]
                names = ", ".join([*available, "finish"])
                result = self._result(
                    "unknown_tool", f"Error: there is no tool named {name!r}. Available: {names}.", clock
                )
            elif not isinstance(args, dict):
                result = self._result("invalid_args", f"Error: arguments for {name} must be a JSON object.", clock)
            else:
                result = await self._run_spec(spec, call, clock)
        except asyncio.CancelledError:
            await self._finish(call, self._result("cancelled", "Cancelled.", clock), started)
            raise
        except RunStopped as stopped:
            await self._finish(call, self._result("denied", f"Not run: {stopped.reply}", clock), started)
            raise
        await self._finish(call, result, started)
        return result

    async def _run_spec(self, spec: ToolSpec, call: ToolCall, clock: float) -> ToolResult:
        try:
            validated = spec.args_model.model_validate(call.args)
        except ValidationError as exc:
            observation = f"Error: invalid arguments for {spec.name}: {_explain(exc)}. {expected_form(spec)}"
            return self._result("invalid_args", observation, clock)
        kwargs = {name: getattr(validated, name) for name in type(validated).model_fields}
        if spec.check is not None:
            refused = await self._precheck(spec, kwargs)
            if refused is not None:
                # What the tool itself would have said, had it been run (and approved) first.
                return self._result("error", f"Error: {refused}", clock)
        try:
            for hook in self.hooks:
                await hook.before(call, spec)
            await self.gate.check(call, spec)
        except ToolRefused as refused:
            return self._result("denied", f"Not run: {refused.reason}.", clock)
        return await self._execute(spec, kwargs, call.context, clock)

    async def _precheck(self, spec: ToolSpec, kwargs: dict[str, Any]) -> str | None:
        """The tool's own refusal of these arguments, found before anyone is asked to approve them; None if
        it would take them. Run on the tool threads: a check may touch the file system or a database."""
        assert spec.check is not None
        job = functools.partial(spec.check, **kwargs)
        try:
            await asyncio.wait_for(asyncio.get_running_loop().run_in_executor(self._threads, job), spec.timeout_s)
        except ToolError as exc:
            return str(exc)
        except TimeoutError:
            return f"{spec.name} could not check its arguments within {spec.timeout_s:g} s"
        except Exception as exc:
            log.warning("the argument check of %s raised %s", spec.name, type(exc).__name__, exc_info=True)
            return f"{spec.name} could not check its arguments ({type(exc).__name__})"
        return None

    async def _execute(
        self, spec: ToolSpec, kwargs: dict[str, Any], context: ToolContext | None, clock: float
    ) -> ToolResult:
        # The tool sees the conversation of this call, whoever called the runner.
        def invoke() -> Any:
            with tool_context(context) if context else nullcontext():
                return spec.fn(**kwargs)

        async def invoke_async() -> Any:
            with tool_context(context) if context else nullcontext():
                return await spec.fn(**kwargs)

        try:
            if spec.is_async:
                output = await asyncio.wait_for(invoke_async(), spec.timeout_s)
            else:
                job = functools.partial(contextvars.copy_context().run, invoke)
                future = asyncio.get_running_loop().run_in_executor(self._threads, job)
                output = await asyncio.wait_for(future, spec.timeout_s)
        except TimeoutError:
            return self._result("timeout", f"Error: {spec.name} did not finish within {spec.timeout_s:g} s.", clock)
        except ToolError as exc:
            return self._result("error", f"Error: {exc}", clock)
        except Exception as exc:
            log.warning("tool %s raised %s", spec.name, type(exc).__name__, exc_info=True)
            return self._result("error", f"Error: {spec.name} failed ({type(exc).__name__}).", clock)
        text = output if isinstance(output, str) else str(output)
        if len(text) > self.max_output_chars:
            cut = text[: self.max_output_chars]
            note = f"\n[output truncated: showing {self.max_output_chars:,} of {len(text):,} characters]"
            return self._result("ok", cut + note, clock, truncated=True)
        return self._result("ok", text, clock)

    @staticmethod
    def _result(outcome: Outcome, observation: str, clock: float, *, truncated: bool = False) -> ToolResult:
        return ToolResult(observation, outcome, (time.perf_counter() - clock) * 1000, truncated)

    async def _finish(self, call: ToolCall, result: ToolResult, started: float) -> None:
        """The step's end is told; post-hooks see every outcome (unknown tools and bad arguments too); then the
        record is written."""
        progress = call.context.progress if call.context is not None else None
        emit(progress, StepFinished(call.step, call.tool, result.outcome))
        for hook in self.hooks:
            try:
                await hook.after(call, result)
            except Exception:
                log.exception("tool hook %s failed after %s", type(hook).__name__, call.tool)
        if self.executions is None:
            return
        ctx = call.context
        execution = Execution(
            tool=call.tool,
            args=call.args,
            outcome=result.outcome,
            observation=result.observation,
            duration_ms=result.duration_ms,
            started_at=started,
            run_id=ctx.run_id if ctx else "",
            channel=ctx.conversation.channel if ctx else "",
            thread=ctx.conversation.thread if ctx else "",
            user_id=ctx.user if ctx else "",
            truncated=result.truncated,
        )
        try:
            # Shielded: a cancelled run still leaves its execution on record.
            await asyncio.shield(self.executions.record(execution))
        except Exception:
            log.exception("could not record the execution of %s", call.tool)

    def close(self) -> None:
        self._threads.shutdown(wait=False, cancel_futures=True)


def _explain(exc: ValidationError) -> str:
    """Pydantic's errors as one short line naming each bad argument."""
    parts = []
    for error in exc.errors()[:3]:
        where = ".".join(str(p) for p in error["loc"]) or "arguments"
        if error["type"] == "extra_forbidden":
            parts.append(f"unexpected argument {where!r}")
        elif error["type"] == "missing":
            parts.append(f"missing argument {where!r}")
        else:
            parts.append(f"{where}: {error['msg']} (got {_short(error.get('input'))})")
    return "; ".join(parts)


def expected_form(spec: ToolSpec) -> str:
    """The exact form the arguments take, with an example where the tool has one: a small model repairs a
    call by copying a form far more reliably than by reading a validation message."""
    props: dict[str, dict[str, Any]] = spec.parameters.get("properties", {})
    required = set(spec.required)
    fields = ", ".join(
        f"{json.dumps(name)}: {_type_name(schema)}{'' if name in required else ' (optional)'}"
        for name, schema in props.items()
    )
    form = f"Expected: {spec.name}({{{fields}}})"
    if spec.examples and len(props) == 1:
        form += f", for example {json.dumps({next(iter(props)): spec.examples[0]})}"
    elif spec.examples:
        form += f", for example {spec.examples[0]}"
    return form + "."


def _type_name(schema: dict[str, Any]) -> str:
    """JSON schema type as one word ("string"); unions ("string or null") from pydantic's anyOf."""
    if "anyOf" in schema:
        return " or ".join(_type_name(option) for option in schema["anyOf"])
    return str(schema.get("type", "value"))


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."
