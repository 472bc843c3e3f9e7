"""ReAct made robust for a service: a malformed step or a model stuck in a loop ends in an answer, not a crash."""

from __future__ import annotations

import logging
from typing import Any

import dspy
from dspy.utils.exceptions import AdapterParseError, ContextWindowExceededError

log = logging.getLogger("parley.agent")


class RobustReAct(dspy.ReAct):  # type: ignore[misc]
    """dspy.ReAct whose async loop turns a malformed step into an observation and stops a repeated call."""

    async def aforward(self, **input_args: Any) -> dspy.Prediction:
        trajectory: dict[str, Any] = {}
        max_iters = input_args.pop("max_iters", self.max_iters)
        previous: tuple[str, str] | None = None
        for idx in range(max_iters):
            try:
                pred = await self._async_call_with_potential_trajectory_truncation(self.react, trajectory, **input_args)
            except ContextWindowExceededError:
                log.warning("context window exceeded; ending the trajectory")
                break
            except AdapterParseError as err:
                # A step the adapter cannot parse costs one iteration and tells the model what went wrong.
                trajectory[f"thought_{idx}"] = ""
                trajectory[f"tool_name_{idx}"] = "invalid_step"
                trajectory[f"tool_args_{idx}"] = {}
                trajectory[f"observation_{idx}"] = (
                    "Your last step was not valid JSON with next_thought, next_tool_name and next_tool_args"
                    f" ({type(err).__name__}). Choose one of the listed tools."
                )
                continue
            call = (str(pred.next_tool_name), repr(pred.next_tool_args))
            if call == previous:
                # The same call with the same arguments gives the same observation: stop looping.
                break
            previous = call
            trajectory[f"thought_{idx}"] = pred.next_thought
            trajectory[f"tool_name_{idx}"] = pred.next_tool_name
            trajectory[f"tool_args_{idx}"] = pred.next_tool_args
            try:
                tool = self.tools[pred.next_tool_name]
                trajectory[f"observation_{idx}"] = await tool.acall(**pred.next_tool_args)
            except Exception as err:
                trajectory[f"observation_{idx}"] = f"Error calling {pred.next_tool_name}: {err}"
            if pred.next_tool_name == "finish":
                break
        extract = await self._async_call_with_potential_trajectory_truncation(self.extract, trajectory, **input_args)
        return dspy.Prediction(trajectory=trajectory, **extract)
