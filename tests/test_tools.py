"""Built-in tools and the JSON schemas that constrain the embedded model's steps."""

from __future__ import annotations

import pytest

from agent.constraints import step_schema
from agent.engines import ScriptedEngine, scripted_model
from agent.runtime import Agent
from agent.storage import Storage
from agent.tools import ToolError, ToolRunner
from agent.tools.builtins import current_time
from agent.tools.calculator import CalculatorError, evaluate, format_number


@pytest.mark.parametrize(
    ("expression", "expected"),
    [("12*7", "84"), ("0.1+0.2", "0.3"), ("2^10", "1024"), ("sqrt(16) + 1", "5"), ("7 // 2", "3"), ("-3 % 2", "-1")],
)
def test_calculator_answers(expression: str, expected: str) -> None:
    assert format_number(evaluate(expression)) == expected


@pytest.mark.parametrize(
    ("expression", "reason"),
    [
        ("9**9**9", "exponent"),
        ("10**1001", "exponent"),
        ("1/0", "division by zero"),
        ("1" * 201, "longer than"),
        ("'a' * 5", "only numbers"),
        ("__import__('os')", "cannot evaluate"),
        ("(1+2", "cannot parse"),
        ("", "empty"),
        ("1e308*10", "finite"),
    ],
)
def test_calculator_refuses_with_a_reason(expression: str, reason: str) -> None:
    with pytest.raises(CalculatorError, match=reason):
        evaluate(expression)


async def test_current_time_zones() -> None:
    assert "UTC" in await current_time("UTC")
    with pytest.raises(ToolError, match="IANA"):
        await current_time("Mars/Olympus")


def test_step_schema_pins_each_tool_name_and_its_arguments(storage: Storage, runner: ToolRunner) -> None:
    agent = Agent(storage, scripted_model(ScriptedEngine(), constrained=True), runner)
    schema = agent.react.react.config["response_format"]["json_schema"]["schema"]
    variants = {v["properties"]["next_tool_name"]["const"]: v for v in schema["anyOf"]}
    assert set(variants) == {"calculator", "current_time", "remember_fact", "recall_facts", "finish"}
    calc_args = variants["calculator"]["properties"]["next_tool_args"]
    assert calc_args["required"] == ["expression"] and calc_args["additionalProperties"] is False
    assert variants["current_time"]["properties"]["next_tool_args"]["required"] == []  # has a default
    extract = dict(agent.react.named_predictors())["extract.predict"]
    assert extract.config["response_format"]["json_schema"]["schema"]["required"] == ["answer"]  # no thought
    assert step_schema({})["anyOf"] == []
