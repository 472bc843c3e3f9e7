"""The conversation a tool call belongs to, set by the runtime for the duration of one message."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from agent.attachments.models import Outbox
from agent.events import Progress
from agent.messages import Conversation

if TYPE_CHECKING:  # the storage seam imports approval models, whose package imports the tools
    from agent.storage.base import Storage


@dataclass(frozen=True)
class ToolContext:
    storage: Storage
    conversation: Conversation
    user: str
    # Ties tool executions to the reasoning chain of the same message.
    run_id: str = ""
    # Where the message came from: approval prompts go back there.
    platform: str = "console"
    # The files the reply will post: a tool whose result is too long for chat posts it here (`post_file`).
    files: Outbox | None = None
    # The only tools this conversation may call (its channel settings' allowlist); None: every enabled tool. A
    # call of any other is answered as a call of a tool that does not exist.
    allowed: frozenset[str] | None = None
    # Told each tool step as it starts, waits for approval and ends (agent/events.py), for platforms that show it.
    progress: Progress | None = None
    # Numbers the message's tool steps from 1, across every ReAct run of its mode (decompose's parts, the voters).
    steps: Iterator[int] = field(default_factory=lambda: itertools.count(1), compare=False, repr=False)


_current: ContextVar[ToolContext | None] = ContextVar("parley_tool_context", default=None)


@contextmanager
def tool_context(ctx: ToolContext) -> Iterator[ToolContext]:
    """Make `ctx` the context of tool calls made inside the block (contextvars follow tasks and threads)."""
    token = _current.set(ctx)
    try:
        yield ctx
    finally:
        _current.reset(token)


def current() -> ToolContext:
    ctx = _current.get()
    if ctx is None:
        raise RuntimeError("this tool needs a conversation and was called outside one")
    return ctx


def current_or_none() -> ToolContext | None:
    return _current.get()
