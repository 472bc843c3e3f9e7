"""The compact prompt of the constrained local path.

DSPy's prompts explain the fields, their types and the JSON structure at length (about 1,500 tokens for the
ReAct step): a real model needs that; a 135M model on two cores pays ~9 s for it and answers worse. When the
JSON schema already constrains the output, the prompt only has to say what to do, and show it: a few worked
answers, as chat turns. Every call of one agent shares the system message and the examples, and each call's
user message extends the previous one's up to the task line, so llama.cpp reuses the processed prefix and
processes only what is new.

A registered prompt may also carry a rule that decides the call without the model (`agent.guide`).
Real providers never see any of this: the adapter uses it only for engines that ask for compact prompts.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from weakref import WeakKeyDictionary

# The step fields of the trajectory ReAct formats ("[[ ## tool_name_0 ## ]]"), in its order.
_TRAJECTORY_FIELD = re.compile(r"\[\[ ## (thought|tool_name|tool_args|observation)_(\d+) ## \]\]\n")
# Output fields the constrained schemas leave out: a 135M model's thoughts cost ~1 s a call and help nothing.
OPTIONAL_OUTPUTS = ("next_thought", "reasoning")
# A long tool result would push the question out of a small model's attention; the runner caps it too.
OBSERVATION_CHARS = 600

STEP_TASK = "Next step: one tool, as JSON."
ANSWER_TASK = "Now write the answer for the user, as JSON."

# Worked answers: a 135M model copies the form of an example far better than it follows a rule.
EXAMPLES = (
    ("(nothing remembered yet)", "hi, who are you?", "Hi! I'm Parley, the assistant of this team."),
    ("(nothing remembered yet)", "what can you do?", "I do arithmetic, tell the time anywhere and remember facts."),
    ("Known facts:\n- lunch: lunch is at noon", "when is lunch?", "Lunch is at noon."),
    ("(nothing remembered yet)", "what is the capital of Italy?", "The capital of Italy is Rome."),
    ("(nothing remembered yet)", "thank you!", "You're welcome!"),
)

# Decides a call by rule instead of by the model: the call's outputs, or None to ask the model.
Decide = Callable[[dict[str, Any]], dict[str, Any] | None]


def ask_the_model(inputs: dict[str, Any]) -> None:
    return None


def system_text(instructions: str) -> str:
    """The signature's instructions and the few rules a small model can follow."""
    return f"""{" ".join(instructions.split())}

Rules:
- Answer in one short sentence.
- Use the known facts, the recent conversation and the tool results when they hold the answer.
- If nothing tells you the answer, say that you don't know."""


@dataclass(frozen=True)
class CompactPrompt:
    """The system message (shared by every signature of one agent), the task line that ends the call, and
    the rule that may decide the call without the model."""

    system: str
    task: str
    decide: Decide = ask_the_model

    def messages(self, inputs: dict[str, Any]) -> list[dict[str, Any]]:
        examples: list[dict[str, Any]] = []
        for context, question, answer in EXAMPLES:
            user = f"{context}\n\nQuestion: {question}\n\nStep 1: finish\n\n{ANSWER_TASK}"
            examples.append({"role": "user", "content": user})
            examples.append({"role": "assistant", "content": json.dumps({"answer": answer})})
        return [
            {"role": "system", "content": self.system},
            *examples,
            {"role": "user", "content": user_text(inputs, self.task)},
        ]


_prompts: WeakKeyDictionary[type[Any], CompactPrompt] = WeakKeyDictionary()


def register(signature: type[Any], prompt: CompactPrompt) -> None:
    """Use `prompt` for `signature` on engines that ask for compact prompts."""
    _prompts[signature] = prompt


def prompt_for(signature: type[Any]) -> CompactPrompt | None:
    return _prompts.get(signature)


@dataclass(frozen=True)
class TrajectoryStep:
    """One step of ReAct's trajectory, read back from its text."""

    tool: str
    args: str
    observation: str

    @property
    def ok(self) -> bool:
        """A tool result (not the finish step, an error or a refusal)."""
        return self.tool != "finish" and not self.observation.startswith(("Error:", "Not run:", "Cancelled."))


def parse_trajectory(trajectory: str) -> list[TrajectoryStep]:
    """The steps of ReAct's formatted trajectory ("[[ ## tool_name_0 ## ]]" ...), in order."""
    parts = _TRAJECTORY_FIELD.split(trajectory)
    fields: dict[int, dict[str, str]] = {}
    for i in range(1, len(parts) - 2, 3):
        fields.setdefault(int(parts[i + 1]), {})[parts[i]] = parts[i + 2].strip()
    return [
        TrajectoryStep(f.get("tool_name", ""), f.get("tool_args", "{}"), f.get("observation", ""))
        for _, f in sorted(fields.items())
    ]


def trajectory_text(trajectory: str) -> str:
    """ReAct's trajectory as numbered step lines ("Step 1: calculator {...}" / "Result: 84")."""
    lines = []
    for number, step in enumerate(parse_trajectory(trajectory), 1):
        if step.tool == "finish":
            lines.append(f"Step {number}: finish")
            continue
        observation = step.observation
        if len(observation) > OBSERVATION_CHARS:
            observation = observation[:OBSERVATION_CHARS] + " ..."
        lines.append(f"Step {number}: {step.tool} {step.args}\nResult: {observation}")
    return "\n".join(lines)


def user_text(inputs: dict[str, Any], task: str) -> str:
    """Context, question and the steps so far, then the task: everything before the task is shared by the
    calls of one question, so its processed tokens are reused."""
    parts = []
    for name, value in inputs.items():
        text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, default=str)
        if name == "trajectory":
            parts.append(trajectory_text(text))
        elif name == "context":
            parts.append(text.strip())
        else:
            parts.append(f"{name.replace('_', ' ').capitalize()}: {text.strip()}")
    parts.append(task)
    return "\n\n".join(p for p in parts if p)
