"""JSON schemas that constrain each ReAct step, so even a 135M-parameter model emits a valid step.

The tool name of a step is one of the tools (each variant pins the name and that tool's arguments), and the
extract step may only produce its output fields. The thought fields (`next_thought`, the extract step's
`reasoning`) are left out: on two cores each costs about a second per call, and a 135M model's thoughts do not
make its steps better; the adapter fills them in empty. The answer has a maxLength, so a looping answer stops
there instead of at max_tokens. The same agents get the compact prompts of `agent.compact` (used only by
engines that ask for them).
"""

from __future__ import annotations

from functools import partial
from typing import Any

import dspy

from agent import compact, guide

# llama.cpp unrolls maxLength into grammar rules: keep the bounds small.
ARG_CHARS = 100
# A chat answer; longer is a loop or a ramble (about 80 tokens, ~1.5 s of generation on two cores).
ANSWER_CHARS = 300


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
                    "next_tool_name": {"const": name},
                    "next_tool_args": {
                        "type": "object",
                        "properties": args,
                        "required": [a for a, spec in (tool.args or {}).items() if "default" not in spec],
                        "additionalProperties": False,
                    },
                },
                "required": ["next_tool_name", "next_tool_args"],
                "additionalProperties": False,
            }
        )
    return {"anyOf": variants}


MAX_LIST_ITEMS = 6


def _output_field(name: str, annotation: Any) -> dict[str, Any]:
    if getattr(annotation, "__origin__", None) is list:
        return {"type": "array", "items": {"type": "string", "maxLength": ARG_CHARS}, "maxItems": MAX_LIST_ITEMS}
    return {"type": "string", "maxLength": ANSWER_CHARS}


def output_schema(signature: type[dspy.Signature]) -> dict[str, Any]:
    """Every output field of the signature but the thoughts: lists as short arrays of strings, the rest as
    strings of at most ANSWER_CHARS."""
    fields = [name for name in signature.output_fields if name not in compact.OPTIONAL_OUTPUTS]
    properties: dict[str, Any] = {
        name: _output_field(name, signature.output_fields[name].annotation) for name in fields
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
    """Attach the step schema to the ReAct predictor and the output schema to the extract predictor, and
    register both for the compact path: one system message, so their calls share a processed prefix, and
    the guide's rules for the steps and answers a 135M model gets wrong."""
    system = compact.system_text(agent.signature.instructions)
    step_rule = partial(guide.decide_step, tools=frozenset(agent.tools))
    for name, predictor in agent.named_predictors():
        if name == "react":
            predictor.config["response_format"] = _response_format("react_step", step_schema(agent.tools))
            compact.register(predictor.signature, compact.CompactPrompt(system, compact.STEP_TASK, step_rule))
        else:
            constrain_output(predictor)
            prompt = compact.CompactPrompt(system, compact.ANSWER_TASK, guide.decide_answer)
            compact.register(predictor.signature, prompt)


def constrain_output(predictor: dspy.Predict) -> None:
    """Constrain a plain predictor to its output fields."""
    predictor.config["response_format"] = _response_format("answer", output_schema(predictor.signature))
