"""DSPy's JSON adapter without the work it repeats on every model call.

The system message and the output requirements depend only on the signature, yet DSPy rebuilds them (pydantic
schemas included) for every call; and each text input goes through a pydantic TypeAdapter built anew, only to
come back as the same string. Together that was about a quarter of the agent's own time per answer. The
messages are the same as DSPy's, which a test checks on generated inputs.

One exception: an engine that sets `compact_prompts` (the embedded model) gets the compact prompt of
`agent.compact` for the signatures registered there; every other model gets DSPy's messages byte for byte.
Parsing differs in one point: a missing thought field (`next_thought`, `reasoning`) is filled in empty, since
the constrained schemas leave them out.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any
from weakref import WeakKeyDictionary

import dspy
import json_repair
from dspy.adapters.utils import format_field_value

from agent import compact

# Set for the duration of one call whose engine asked for compact prompts; `format` and `parse` read it.
_compact_call: ContextVar[bool] = ContextVar("parley_compact_call", default=False)
_system_messages: WeakKeyDictionary[type[Any], str] = WeakKeyDictionary()
_output_requirements: WeakKeyDictionary[type[Any], str | None] = WeakKeyDictionary()


def wants_compact_prompts(lm: Any) -> bool:
    """Whether the LM's engine asked for compact prompts (the flag survives `lm.copy()`, which keeps the engine)."""
    return getattr(getattr(lm, "engine", None), "compact_prompts", False) is True


@contextmanager
def _call_for(lm: Any) -> Iterator[None]:
    token = _compact_call.set(wants_compact_prompts(lm))
    try:
        yield
    finally:
        _compact_call.reset(token)


class CachedJSONAdapter(dspy.JSONAdapter):  # type: ignore[misc]
    """Behaves as `dspy.JSONAdapter`; signatures are immutable classes, so the caches cannot go stale."""

    def __call__(
        self, lm: Any, lm_kwargs: dict[str, Any], signature: type[Any], demos: list[Any], inputs: dict[str, Any]
    ) -> list[dict[str, Any]]:
        with _call_for(lm):
            if (decided := _decided(signature, inputs)) is not None:
                return decided
            result: list[dict[str, Any]] = super().__call__(lm, lm_kwargs, signature, demos, inputs)
        return result

    async def acall(
        self, lm: Any, lm_kwargs: dict[str, Any], signature: type[Any], demos: list[Any], inputs: dict[str, Any]
    ) -> list[dict[str, Any]]:
        with _call_for(lm):
            if (decided := _decided(signature, inputs)) is not None:
                return decided
            result: list[dict[str, Any]] = await super().acall(lm, lm_kwargs, signature, demos, inputs)
        return result

    def format(self, signature: type[Any], demos: list[Any], inputs: dict[str, Any]) -> list[dict[str, Any]]:
        prompt = compact.prompt_for(signature) if _compact_call.get() else None
        if prompt is not None:
            return prompt.messages(inputs)
        messages: list[dict[str, Any]] = super().format(signature, demos, inputs)
        return messages

    def parse(self, signature: type[Any], completion: str) -> dict[str, Any]:
        parsed: dict[str, Any] = super().parse(signature, _with_optional_outputs(signature, completion))
        return parsed

    def format_system_message(self, signature: type[Any]) -> str:
        cached = _system_messages.get(signature)
        if cached is None:
            cached = _system_messages[signature] = str(super().format_system_message(signature))
        return cached

    def user_message_output_requirements(self, signature: type[Any]) -> str | None:
        if signature not in _output_requirements:
            _output_requirements[signature] = super().user_message_output_requirements(signature)
        return _output_requirements[signature]

    def format_user_message_content(
        self,
        signature: type[Any],
        inputs: dict[str, Any],
        prefix: str = "",
        suffix: str = "",
        main_request: bool = False,
    ) -> str:
        """DSPy's `ChatAdapter.format_user_message_content`, with plain strings passed through as they are."""
        messages = [prefix]
        for name, field in signature.input_fields.items():
            if name in inputs:
                value = inputs[name]
                shown = value if type(value) is str else format_field_value(field_info=field, value=value)
                messages.append(f"[[ ## {name} ## ]]\n{shown}")
        if main_request:
            requirements = self.user_message_output_requirements(signature)
            if requirements is not None:
                messages.append(requirements)
        messages.append(suffix)
        return "\n\n".join(messages).strip()


def _decided(signature: type[Any], inputs: dict[str, Any]) -> list[dict[str, Any]] | None:
    """On the compact path, the outputs a rule gives for this call (`agent.guide`), with no model call."""
    prompt = compact.prompt_for(signature) if _compact_call.get() else None
    outputs = prompt.decide(inputs) if prompt is not None else None
    if outputs is None:
        return None
    return [{name: outputs.get(name, "") for name in signature.output_fields}]


def _with_optional_outputs(signature: type[Any], completion: str) -> str:
    """The constrained schemas leave the thought fields out, and DSPy's parser wants every output field: a
    missing thought is filled in empty (never a reason to lose a step). Anything else is left to DSPy."""
    optional = [name for name in compact.OPTIONAL_OUTPUTS if name in signature.output_fields]
    # An unconstrained model (every real provider) writes every field: no second parse of its completion.
    if all(f'"{name}"' in completion for name in optional):
        return completion
    data = json_repair.loads(completion)
    if not isinstance(data, dict) or all(name in data for name in optional):
        return completion
    for name in optional:
        data.setdefault(name, "")
    return json.dumps(data)
