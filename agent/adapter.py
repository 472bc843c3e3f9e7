"""DSPy's JSON adapter without the work it repeats on every model call.

The system message and the output requirements depend only on the signature, yet DSPy rebuilds them (pydantic
schemas included) for every call; and each text input goes through a pydantic TypeAdapter built anew, only to
come back as the same string. Together that was about a quarter of the agent's own time per answer. The
messages are the same as DSPy's, which a test checks on generated inputs.
"""

from __future__ import annotations

from typing import Any
from weakref import WeakKeyDictionary

import dspy
from dspy.adapters.utils import format_field_value

_system_messages: WeakKeyDictionary[type[Any], str] = WeakKeyDictionary()
_output_requirements: WeakKeyDictionary[type[Any], str | None] = WeakKeyDictionary()


class CachedJSONAdapter(dspy.JSONAdapter):  # type: ignore[misc]
    """Behaves as `dspy.JSONAdapter`; signatures are immutable classes, so the caches cannot go stale."""

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
