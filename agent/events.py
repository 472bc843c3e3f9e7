"""What the agent is doing while it answers, as events a platform can show (a stream, an edited message).

The agent stays platform-neutral: it emits these to a `Progress` callback; adapters render them. Emitting
never blocks or fails the answer: a callback that raises is logged and ignored by `emit`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass

log = logging.getLogger("parley.agent")


@dataclass(frozen=True)
class StepStarted:
    """A tool call is about to run: its step number (from 1), the tool, the thought that led to it, and its
    arguments summarised for a status line."""

    index: int
    tool: str
    thought: str = ""
    arguments: str = ""

    @property
    def call(self) -> str:
        """The call as a status line names it: `calculator(expression=6*7)`, or the tool alone."""
        return f"{self.tool}({self.arguments})" if self.arguments else self.tool


@dataclass(frozen=True)
class StepFinished:
    """A tool call ended: `outcome` is the runner's (ok, error, denied, timeout, ...). Nothing of the tool's output:
    only the model saw it, and a status line in the channel must not show what a tool read (a file, a query)."""

    index: int
    tool: str
    outcome: str


@dataclass(frozen=True)
class ApprovalWaiting:
    """A tool call waits for a person's approval; the stream goes on after the decision."""

    index: int
    tool: str
    request_id: str = ""


@dataclass(frozen=True)
class AnswerText:
    """Answer text as it is produced: a piece to append (the whole answer at once from models that do not
    stream)."""

    text: str


Event = StepStarted | StepFinished | ApprovalWaiting | AnswerText

# Told about each event as it happens; must return quickly (queue the work, do not await the platform here).
Progress = Callable[[Event], None]


# How long a status line's arguments may be: a task card's title, a line under an edited message.
BRIEF_CHARS = 80


def brief(text: str, limit: int = BRIEF_CHARS) -> str:
    """The first line of `text`, cut to `limit` characters with an ellipsis: what a status line shows of it."""
    line = text.strip().split("\n", 1)[0].strip()
    return line if len(line) <= limit else line[: limit - 1].rstrip() + "\u2026"


def summarise(args: Mapping[str, object], limit: int = BRIEF_CHARS) -> str:
    """A tool call's arguments as one short line (`expression=12*7, precision=2`): every argument is in the
    execution record and the approval prompt; a status line only needs to say which call this is."""
    return brief(", ".join(f"{name}={value}" for name, value in args.items()), limit)


def emit(progress: Progress | None, event: Event) -> None:
    """Hand an event to `progress` when there is one; a failing callback never fails the answer."""
    if progress is None:
        return
    try:
        progress(event)
    except Exception:
        log.exception("a progress callback failed on %s", type(event).__name__)
