"""The platform-neutral message model every adapter normalises into."""

from __future__ import annotations

import re
import time
import uuid
from dataclasses import asdict, dataclass, field

from agent.attachments.models import Attachment, OutFile

# C0 and C1 control characters but tab and newline, and lone (unpaired) UTF-16 surrogates: text holding them
# cannot be encoded as UTF-8 (the model client, SQLite) or shows as garbage, so the edge replaces them.
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")
_SURROGATE = re.compile(r"[\ud800-\udfff]")


def clean_text(value: str) -> str:
    """Text from outside made safe for everything downstream: line ends normalised to `\\n`, control
    characters dropped, and each lone surrogate (half an emoji, say) replaced by U+FFFD."""
    value = value.replace("\r\n", "\n").replace("\r", "\n")
    return _SURROGATE.sub("\ufffd", _CONTROL.sub("", value))


@dataclass(frozen=True)
class Conversation:
    """Where memory lives: a channel key and, optionally, a thread inside it.

    `channel` is the memory key: the plain name for the console (`team`), `platform:workspace/channel`
    for chat platforms, so two workspaces never share memory.
    """

    channel: str
    thread: str = ""
    # The key of the channel this one is a thread of, where the platform gives a thread a channel id of its own
    # (Discord); "" elsewhere. Memory stays the thread's own; settings and usage are the parent's.
    parent: str = ""

    @property
    def settings_channel(self) -> str:
        """The channel whose settings, budgets, rate limit and approvers apply here, and whose usage this counts
        in: a thread-channel's parent, else the channel itself."""
        return self.parent or self.channel


def channel_key(platform: str, workspace: str, channel: str) -> str:
    """A channel's memory key: the plain name on the console (`team`), `platform:workspace/channel` elsewhere."""
    return channel if platform == "console" else f"{platform}:{workspace}/{channel}"


@dataclass(frozen=True)
class IncomingMessage:
    """One message as the agent sees it, whatever platform it came from."""

    platform: str
    channel: str
    user: str
    text: str
    workspace: str = ""
    thread: str = ""
    message_id: str = ""
    event_id: str = ""
    mentioned: bool = False
    is_dm: bool = False
    received_at: float = field(default_factory=time.time)
    # Where the reply goes instead of the conversation, when the platform gave one (a slash command's
    # response URL, an interaction's follow-up webhook).
    reply_url: str = ""
    # What the platform adds to memory: the earlier messages of the thread by other people, say.
    context: str = ""
    # Files shared with the message (and, once the platform added them, with earlier messages of its thread).
    attachments: tuple[Attachment, ...] = ()
    # The platform's id of the channel `channel` is a thread of, where a thread has a channel id of its own
    # (Discord): the parent's settings, budgets, rate limit and approvers apply in the thread.
    parent: str = ""
    # The sender's role ids, where the platform has roles (Discord): approvers may be named by role.
    roles: tuple[str, ...] = ()

    @property
    def conversation(self) -> Conversation:
        parent = channel_key(self.platform, self.workspace, self.parent) if self.parent else ""
        return Conversation(channel_key(self.platform, self.workspace, self.channel), self.thread, parent)


@dataclass(frozen=True)
class Step:
    """One step of a reasoning chain: what the model thought, which tool it called with what, what came back.

    `kind` is `action` (a tool call and its observation), `thought` (the model decided to finish),
    `observation` (the model's step was malformed and it was told so) or `conclusion` (the final answer).
    `part` names the sub-question (decompose mode) or the voter (vote mode) the step belongs to.
    """

    thought: str
    tool: str
    args: dict[str, object]
    observation: str
    kind: str = "action"
    outcome: str = ""
    part: str = ""
    model_ms: float | None = None
    tool_ms: float | None = None
    input_tokens: int | None = None
    output_tokens: int | None = None


@dataclass(frozen=True)
class Reply:
    """The agent's answer to one message, with the trajectory that produced it."""

    text: str
    steps: tuple[Step, ...] = ()
    chain_id: int | None = None
    error_id: str | None = None
    # answered | unanswered (the agent ran out of steps) | rejected (bad input) | limited (rate limit)
    # | fallback (no model could answer) | stopped (the person stopped it) | error
    status: str = "answered"
    # Files posted with the reply (a query result too long for chat), kept with it until delivered.
    files: tuple[OutFile, ...] = ()

    def as_dict(self) -> dict[str, object]:
        return {
            "answer": self.text,
            "status": self.status,
            "chain_id": self.chain_id,
            "error_id": self.error_id,
            "files": [{"name": f.name, "media_type": f.media_type, "size": len(f.content)} for f in self.files],
            "trajectory": [asdict(s) for s in self.steps],
        }


# What a person is told when Parley failed on their message, wherever it failed: the id finds the log line.
APOLOGY = "Sorry, something went wrong on my side and I couldn't answer that (error id {error_id}). Please try again."


def new_error_id() -> str:
    """A short id for a failure: the user's reply, the log line and the Sentry event all carry it."""
    return uuid.uuid4().hex[:12]
