"""A guard on every model answer before it reaches a person.

A small model can fall into a loop ("The answer is: The answer is: ..." until its token limit) or echo the
prompt's scaffolding (JSON, field markers) instead of an answer. A repeated phrase is cut to its first
occurrence; when nothing useful is left, the answer becomes the tool result it should have used (the
calculator's 84), or empty, which the runtime turns into an honest "I couldn't work that out".
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence

# A phrase followed by copies of itself, each after whitespace. Units of 12+ characters loop from their
# second copy; shorter ones ("84 84", "very very") only from their third, so ordinary emphasis survives.
_LONG_LOOP = re.compile(r"(?<!\S)(?P<unit>\S.{10,}?\S)(?:\s+(?P=unit))+(?!\S)", re.S)
_SHORT_LOOP = re.compile(r"(?<!\S)(?P<unit>\S.{0,10}?)(?:\s+(?P=unit)){2,}(?!\S)", re.S)
# How much of an answer's end the loop patterns search (the whole of a 10,000-character answer took 0.6 s).
LOOP_WINDOW = 2000
# DSPy's field markers ("[[ ## answer ## ]]"), and output field names opening a line ("answer: 84", "reasoning:").
_MARKER = re.compile(r"\[\[\s*##\s*\w+\s*##\s*\]\]")
_FIELD_NAMES = re.compile(
    r"^[ \t]*\"?(?:next_thought|next_tool_name|next_tool_args|reasoning|answer)\"?[ \t]*:[ \t]*", re.I | re.M
)
# Words that carry no answer on their own: "The answer is:" says nothing.
_FILLER = frozenset({"the", "a", "an", "answer", "final", "result", "is", "are", "was", "here", "it", "so", "my", "i"})
_WORD = re.compile(r"[^\W_]+", re.U)
# Observations that are not results: the finish step's, and the runner's refusals and errors.
_NOT_RESULTS = ("Completed.", "Error:", "Not run:", "Cancelled.")


def collapse_repeats(text: str) -> str:
    """A run of a repeated phrase that ends the answer becomes its first occurrence; a copy the token limit cut
    short goes too. A model stuck in a loop repeats until its token limit, so a loop runs to the end: repetition
    followed by more text is content (code, a table, a list) and stays as it is. The patterns cost time
    quadratic in what they search, so they search the last LOOP_WINDOW characters; the copies of a loop found
    there are then followed back to its first one with plain string comparison."""
    for pattern in (_LONG_LOOP, _SHORT_LOOP):
        start = max(len(text) - LOOP_WINDOW, 0)
        while match := pattern.search(text, start):
            unit, rest = match.group("unit"), text[match.end() :]
            tail = rest.strip()
            # A trailing partial copy: cut short by the token limit it goes, but one that ends a sentence is
            # the loop's true end ("is 84. The answer is 84. The answer is 84." loops on "84. The answer is").
            if tail and unit.startswith(tail) and not tail.endswith((".", "!", "?")):
                rest = tail = ""
            if tail:  # not at the end: look for a loop that starts later
                start = match.start() + 1
                continue
            begin = match.start()
            while (before := text[:begin].rstrip()).endswith(unit) and (
                len(before) == len(unit) or before[-len(unit) - 1].isspace()
            ):
                begin = len(before) - len(unit)
            text = text[:begin] + unit + rest
            start = begin + len(unit)
    return text


def strip_scaffolding(text: str) -> str:
    """The answer inside a JSON object the model wrote as its answer, and no field markers or field names."""
    stripped = text.strip()
    if stripped.startswith("{"):
        try:
            data = json.loads(stripped)
        except ValueError:
            data = None
        if isinstance(data, dict):
            inner = data.get("answer") or next((v for v in data.values() if isinstance(v, str) and v.strip()), "")
            stripped = str(inner).strip()
    stripped = _MARKER.sub(" ", stripped)
    stripped = _FIELD_NAMES.sub("", stripped)
    return re.sub(r"[ \t]{2,}", " ", stripped).strip()


def is_useful(text: str) -> bool:
    """Whether the text says anything beyond filler words and punctuation."""
    return any(word.casefold() not in _FILLER for word in _WORD.findall(text))


def results(observations: Sequence[str]) -> list[str]:
    """The observations that are tool results, not errors or refusals."""
    return [o.strip() for o in observations if o.strip() and not o.strip().startswith(_NOT_RESULTS)]


def guard_answer(answer: str, observations: Sequence[str] = ()) -> str:
    """The answer a person should see: loops collapsed, scaffolding removed; if that leaves nothing useful (or
    the answer was empty), the last tool result, else "" (the runtime then says plainly that it could not
    work the question out)."""
    cleaned = collapse_repeats(strip_scaffolding(answer))
    if (cleaned and cleaned == answer.strip()) or is_useful(cleaned):
        return cleaned  # nothing was wrong with it, or something useful is left after the cut
    found = results(observations)
    return found[-1] if found else ""
