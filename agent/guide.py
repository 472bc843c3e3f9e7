"""Steps and answers the embedded model is not trusted with, decided by rule on the local path only.

Measured on SmolLM2-135M with the compact prompt, greedy decoding: it picked the right tool for 3 to 5 of 11
newcomer questions whatever the prompt (few-shot examples make it copy the last example's tool), wrote
`.+12.75` for 12*7, and turned a calculator result of -4 into "9-13 is 4". Left to choose, it also
called remember_fact on "thanks for your help!", storing a fact nobody gave. So the steps are fixed here:
arithmetic goes to the calculator with the expression read off the question, the time or date somewhere to
current_time with the place's IANA zone, anything else straight to `finish` (remembered facts and the recent
conversation are in the context already; "remember that ..." is the runtime's rule). One tool call is the
budget, and a calculator or clock result is stated by a template rather than retold by the model. A question
about the person's own world ("my dog", "our CEO") that nothing remembered mentions gets "I don't know"
rather than an invented name. The model writes every other answer: greetings, general knowledge, facts from
memory.

Real providers never see any of this: the adapter consults the guide only for engines that ask for compact
prompts.
"""

from __future__ import annotations

import re
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

from agent.compact import TrajectoryStep, parse_trajectory
from agent.storage.terms import STOPWORDS
from agent.tools.calculator import CalculatorError, evaluate
from agent.tools.timezones import zone_in

FINISH = "finish"

# Spoken arithmetic, in the order it is rewritten ("square root of" before "of", "divided by" before "by").
_SPOKEN = (
    (r"\bsquare root of\s*(-?[\d.]+)", r"sqrt(\1)"),
    (r"\bsqrt\s*(-?[\d.]+)", r"sqrt(\1)"),
    (r"(-?[\d.]+)\s*(?:%|percent)\s+of\s+(-?[\d.]+)", r"(\1/100*\2)"),
    (r"\bto the power of\b", "**"),
    (r"\bsquared\b", "**2"),
    (r"\bcubed\b", "**3"),
    (r"\b(?:multiplied by|times)\b", "*"),
    (r"(?<=\d)\s*x\s*(?=\d)", "*"),
    (r"\b(?:divided by|over)\b", "/"),
    (r"\bplus\b", "+"),
    (r"\bminus\b", "-"),
)
_ASKING = re.compile(
    r"^(?:(?:and|so|ok|okay|then|now|also|please)[\s,]+)*"
    r"(?:what(?:'s| is| are)|how much is|calculate|compute|work out|evaluate)?\s*(?:the\s+)?",
    re.I,
)
_MATH = re.compile(r"^[\d\s.+\-*/()%^]*(?:sqrt\([\d.\-]+\)[\d\s.+\-*/()%^]*)*$")
_OPERATOR = re.compile(r"[+\-*/^%]|sqrt|\*\*")
# "that", "it", "the result": the number the previous answer gave.
_PREVIOUS = re.compile(r"\b(?:that|it|the result|the answer|this)\b", re.I)
_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")

# Asking for the time, date or weekday ("what time is it", "what's the date", "day of the week"), not merely
# mentioning a day ("what should I do today?").
_ASKS_TIME = re.compile(
    r"\b(?:what|which)(?:'s|\s+is)?\s+(?:the\s+)?(?:time|date|day)\b|\btime is it\b|\bthe (?:time|date) (?:in|now)\b"
    r"|\bday of the week\b|\btoday's date\b",
    re.I,
)

# The person's own world: only memory can answer "what is my dog called?".
_PRIVATE = re.compile(r"\b(?:my|our|we|us|mine|ours|the team's|our team's)\b", re.I)
_CONTENT_WORD = re.compile(r"[a-z][a-z'-]{2,}")
# Words that name no subject: memory's stop words, and how people ask for a name.
_NOT_CONTENT = STOPWORDS | {"name", "named", "called", "call", "tell", "know", "mine", "ours"}

DONT_KNOW = 'I don\'t know: nobody has told me that here. You can teach me with "remember that ...".'


@dataclass(frozen=True)
class Step:
    """A step as ReAct's predictor returns it."""

    tool: str
    args: dict[str, Any]

    def outputs(self) -> dict[str, Any]:
        return {"next_thought": "", "next_tool_name": self.tool, "next_tool_args": self.args}


def previous_number(context: str) -> str | None:
    """The last number of the last assistant turn in the context ("assistant: 7*8 = 56" gives 56)."""
    turns = [line for line in context.splitlines() if line.startswith("assistant: ")]
    numbers = _NUMBER.findall(turns[-1]) if turns else []
    return numbers[-1] if numbers else None


def expression(question: str, context: str = "") -> str | None:
    """The arithmetic a question asks for, as a calculator expression, or None if it asks for something else."""
    text = question.strip().rstrip("?!. ").strip()
    text = _ASKING.sub("", text, count=1).strip()
    if _PREVIOUS.search(text):
        number = previous_number(context)
        if number is None:
            return None
        text = _PREVIOUS.sub(number, text)
    for pattern, replacement in _SPOKEN:
        text = re.sub(pattern, replacement, text, flags=re.I)
    text = " ".join(text.split())
    if not text or not _MATH.match(text) or not _OPERATOR.search(text) or not re.search(r"\d", text):
        return None
    try:
        evaluate(text)
    except CalculatorError:
        return None
    return text


def first_step(question: str, context: str, tools: Collection[str]) -> Step | None:
    """The step an unmistakable question needs, or None to let the model choose."""
    if "calculator" in tools and (expr := expression(question, context)) is not None:
        return Step("calculator", {"expression": expr})
    if "current_time" in tools and _ASKS_TIME.search(question) and not re.search(r"\d", question):
        return Step("current_time", {"timezone": zone_in(question) or "UTC"})
    return None


def templated_answer(steps: list[TrajectoryStep]) -> str | None:
    """A calculator or clock result, stated plainly: a 135M model retelling it drops signs and digits."""
    results = [s for s in steps if s.ok]
    if not results:
        return None
    last = results[-1]
    if last.tool == "calculator":
        expr = _json_arg(last.args, "expression")
        return f"{expr} = {last.observation}" if expr else last.observation
    if last.tool == "current_time":
        return _time_answer(last.observation, _json_arg(last.args, "timezone") or "UTC")
    return None


def _time_answer(observation: str, zone: str) -> str:
    """The clock's reading as a sentence: "It's 01:40 on Tuesday 2026-12-02 in Asia/Tokyo (JST)."."""
    match = re.match(r"(?P<day>\w+) (?P<date>\S+) (?P<hm>\d{2}:\d{2}):\d{2} (?P<abbr>\S+)", observation)
    if match is None:
        return observation
    abbr = "" if match["abbr"] == zone else f" ({match['abbr']})"
    return f"It's {match['hm']} on {match['day']} {match['date']} in {zone}{abbr}."


def _json_arg(args: str, name: str) -> str:
    match = re.search(rf'"{name}"\s*:\s*"((?:[^"\\]|\\.)*)"', args)
    return match.group(1) if match else ""


def unknown_private(question: str, context: str) -> bool:
    """A question about the person's own world whose words nothing in memory mentions."""
    if not _PRIVATE.search(question):
        return False
    words = {w for w in _CONTENT_WORD.findall(question.lower()) if w not in _NOT_CONTENT}
    # What was said or remembered, not what was asked: an earlier "who is our CEO?" tells nothing.
    known = "\n".join(line for line in context.lower().splitlines() if not line.rstrip().endswith("?"))
    return bool(words) and not any(w in known or w.rstrip("s") in known for w in words)


def decide_step(inputs: dict[str, Any], tools: Collection[str]) -> dict[str, Any]:
    """A ReAct step by rule: the obvious first call, else `finish` (also after the one call allowed)."""
    question, context = str(inputs.get("question", "")), str(inputs.get("context", ""))
    step = None
    if not parse_trajectory(str(inputs.get("trajectory", ""))):
        step = first_step(question, context, tools)
    return (step or Step(FINISH, {})).outputs()


def decide_answer(inputs: dict[str, Any]) -> dict[str, Any] | None:
    """The answer by rule: a calculator or clock result, or "I don't know" for what nothing remembered
    mentions; None lets the model write it."""
    question, context = str(inputs.get("question", "")), str(inputs.get("context", ""))
    steps = parse_trajectory(str(inputs.get("trajectory", "")))
    answer = templated_answer(steps)
    if answer is None and not any(s.ok for s in steps) and unknown_private(question, context):
        answer = DONT_KNOW
    return None if answer is None else {"reasoning": "", "answer": answer}
