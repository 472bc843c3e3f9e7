"""The cached JSON adapter sends exactly the messages DSPy's own JSON adapter would."""

from __future__ import annotations

from typing import Any

import dspy
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.adapter import CachedJSONAdapter
from agent.react import RobustReAct
from agent.runtime import Answer
from agent.tools import BUILTIN_TOOLS, ToolRegistry, ToolRunner

REACT = RobustReAct(Answer, ToolRegistry.of(*BUILTIN_TOOLS).enabled(), ToolRunner(ToolRegistry()), max_iters=3)
SIGNATURES = {
    "answer": Answer,
    "react step": REACT.react.signature,
    "extract": REACT.extract.predict.signature,
}
text = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=200)


@pytest.mark.parametrize("name", list(SIGNATURES))
@settings(max_examples=40, deadline=None)
@given(values=st.lists(text, min_size=4, max_size=4), use_list=st.booleans())
def test_messages_are_the_same_as_dspys(name: str, values: list[str], use_list: bool) -> None:
    signature = SIGNATURES[name]
    inputs: dict[str, Any] = dict(zip(signature.input_fields, values, strict=False))
    if use_list and inputs:
        first = next(iter(inputs))
        inputs[first] = [values[0], {"k": values[1]}]  # not a string: formatted the way DSPy does it
    for _ in range(2):  # the second call is served from the caches
        assert CachedJSONAdapter().format(signature, [], inputs) == dspy.JSONAdapter().format(signature, [], inputs)
