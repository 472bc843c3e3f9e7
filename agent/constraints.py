"""JSON schemas that constrain each ReAct step, so even a 135M-parameter model emits a valid step.

The tool name of a step is one of the tools (each variant pins the name and that tool's arguments), and the
extract step may only produce its output fields.
"""

from __future__ import annotations

from typing import Any

import dspy

# llama.cpp unrolls maxLength into grammar rules: keep the bounds small (the answer is bounded by max_tokens).
THOUGHT_CHARS = 200
ARG_CHARS = 100


def _argument(schema: dict[str, Any]) -> dict[str, Any]:
    kind = schema.get("type", "string")
    out: dict[str, Any] = {"type": kind}
    if kind == "string":
        out["maxLength"] = ARG_CHARS
    return out


def step_schema(tools: dict[str, Any]) -> dict[str, Any]:
    """One object variant per tool: `next_tool_name` is that tool, `next_tool_args` its arguments."""
    variants = []
    for name, tool in tools.items():
        args = {arg: _argument(spec) for arg, spec in (tool.args or {}).items()}
        variants.append(
            {
                "type": "object",
                "properties": {
                    "next_thought": {"type": "string", "maxLength": THOUGHT_CHARS},
                    "next_tool_name": {"const": name},
                    "next_tool_args": {
                        "type": "object",
                        "properties": args,
                        "required": [a for a, spec in (tool.args or {}).items() if "default" not in spec],
                        "additionalProperties": False,
                    },
                },
                "required": ["next_thought", "next_tool_name", "next_tool_args"],
                "additionalProperties": False,
            }
        )
    return {"anyOf": variants}


MAX_LIST_ITEMS = 6


def _output_field(name: str, annotation: Any) -> dict[str, Any]:
    if getattr(annotation, "__origin__", None) is list:
        return {"type": "array", "items": {"type": "string", "maxLength": ARG_CHARS}, "maxItems": MAX_LIST_ITEMS}
    if name == "reasoning":
        return {"type": "string", "maxLength": THOUGHT_CHARS}
    return {"type": "string"}


def output_schema(signature: type[dspy.Signature]) -> dict[str, Any]:
    """Every output field of the signature: lists as short arrays of strings, the rest as strings."""
    fields = list(signature.output_fields)
    properties: dict[str, Any] = {
        name: _output_field(name, info.annotation) for name, info in signature.output_fields.items()
    }
    return {
        "type": "object",
        "properties": properties,
        "required": fields,
        "additionalProperties": False,
    }


def _response_format(name: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"type": "json_schema", "json_schema": {"name": name, "schema": schema}}


def constrain(agent: dspy.ReAct) -> None:
    """Attach the step schema to the ReAct predictor and the output schema to the extract predictor."""
    for name, predictor in agent.named_predictors():
        if name == "react":
            predictor.config["response_format"] = _response_format("react_step", step_schema(agent.tools))
        else:
            constrain_output(predictor)


def constrain_output(predictor: dspy.Predict) -> None:
    """Constrain a plain predictor to its output fields."""
    predictor.config["response_format"] = _response_format("answer", output_schema(predictor.signature))
