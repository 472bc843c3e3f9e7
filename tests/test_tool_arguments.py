"""A call that fails on its arguments tells the model the exact form they take, so it can repair the call."""

from __future__ import annotations

import pytest

from agent.tools import ToolRunner


@pytest.mark.parametrize(
    ("tool", "args", "form"),
    [
        (
            "calculator",
            {"expr": "12*7"},
            'Expected: calculator({"expression": string}), for example {"expression": "12*7"}.',
        ),
        ("calculator", {}, 'Expected: calculator({"expression": string}), for example {"expression": "12*7"}.'),
        (
            "remember_fact",
            {"key": "standup"},
            'Expected: remember_fact({"key": string, "value": string}), for example key "standup time", value "9:30".',
        ),
        ("current_time", {"timezone": 9}, 'Expected: current_time({"timezone": string (optional)}), for example'),
    ],
)
async def test_bad_arguments_get_the_expected_form(
    runner: ToolRunner, tool: str, args: dict[str, object], form: str
) -> None:
    result = await runner.run(tool, args)
    assert result.outcome == "invalid_args"
    assert result.observation.startswith(f"Error: invalid arguments for {tool}: ")
    assert form in result.observation


async def test_good_arguments_are_not_explained(runner: ToolRunner) -> None:
    result = await runner.run("calculator", {"expression": "12*7"})
    assert (result.outcome, result.observation) == ("ok", "84")
