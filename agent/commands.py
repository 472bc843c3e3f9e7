"""Chat commands as every platform sees them: a neutral call in, a neutral reply out.

The commands themselves live once in `bot/commands.py`; each adapter turns its platform's command (a Slack slash
command, a Discord interaction, a console line) into a `CommandCall` and renders the `CommandReply` (Block Kit,
Discord components, terminal text). A reply that needs a yes first carries a `Confirmation`; the click comes back
as a `ConfirmClick`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

from agent.messages import channel_key


@dataclass(frozen=True)
class CommandInfo:
    """A command as people see it: how its arguments are typed, and what it does in one line."""

    args: str
    help: str


# Every chat command, in the order help lists them. bot/commands.py runs them; platforms that register their
# commands (Discord's slash commands) describe them from here.
COMMANDS: Mapping[str, CommandInfo] = {
    "ask": CommandInfo("<question>", "ask me something; the answer is posted here"),
    "stop": CommandInfo("", "stop my answer to you that is under way in this channel"),
    "facts": CommandInfo("", "what this channel remembers"),
    "forget": CommandInfo("", "erase what this channel remembers (asks first)"),
    "tools": CommandInfo("", "the tools I can use in this channel"),
    "usage": CommandInfo("[me|channel]", "tokens used today and this month, yours or this channel's"),
    "channel": CommandInfo("show|set KEY VALUE|reset KEY", "this channel's settings (approvers only)"),
    "help": CommandInfo("", "the commands, and how to talk to me"),
}

# What a platform answers itself when it cannot hand a command on: its shape was wrong, or no command set is
# connected (an adapter built for posting only).
UNREADABLE = "Sorry, I could not read that command. Please try again."
NO_COMMANDS = "Commands are not available right now."


@dataclass(frozen=True)
class CommandCall:
    """One command as typed: `name` (ask, facts, forget, ...) and the text after it, with who and where."""

    platform: str
    channel: str
    user: str
    name: str
    text: str = ""
    workspace: str = ""
    thread: str = ""
    # The platform's role ids of the user, where it has roles (Discord): approvers may be named by role.
    roles: tuple[str, ...] = ()
    # Where an `ask` answer goes when it is not the channel itself (a Slack response URL, a Discord interaction).
    reply_url: str = ""
    # The platform's id of this invocation: the inbox key of an `ask`.
    event_id: str = ""
    # How a command is typed here, so help shows it as the user types it: `/parley ` on Slack, `/` elsewhere.
    prefix: str = "/"
    is_dm: bool = False
    # The platform's id of the channel `channel` is a thread of (Discord): its settings and approvers apply.
    parent: str = ""

    @property
    def channel_key(self) -> str:
        """The channel's memory key (`slack:T1/C2`; the plain name on the console)."""
        return channel_key(self.platform, self.workspace, self.channel)

    @property
    def parent_key(self) -> str:
        """The memory key of the channel this one is a thread of; "" when it is none's."""
        return channel_key(self.platform, self.workspace, self.parent) if self.parent else ""


@dataclass(frozen=True)
class Confirmation:
    """A question the user must confirm before the command acts: rendered as a button (or a y/N prompt) whose
    click returns `action` and `value` as a `ConfirmClick`."""

    question: str
    label: str
    action: str
    value: str


@dataclass(frozen=True)
class CommandReply:
    """What to show: markdown text (each adapter converts it), seen only by the caller (an `ask` answers in the
    channel, through the dispatcher)."""

    text: str
    confirm: Confirmation | None = None
    # The command handed a question to the dispatcher: its answer follows where the call's `reply_url` points
    # (Discord shows its "thinking" placeholder until then instead of this text).
    answer_follows: bool = False


@dataclass(frozen=True)
class ConfirmClick:
    """A click on a confirmation's button: who clicked, where, and the action and value it carried."""

    platform: str
    channel: str
    user: str
    action: str
    value: str
    workspace: str = ""
    roles: tuple[str, ...] = ()

    @property
    def channel_key(self) -> str:
        """The memory key of the channel the click came from."""
        return channel_key(self.platform, self.workspace, self.channel)


class Commands(Protocol):
    """The command set, as the adapters call it."""

    async def run(self, call: CommandCall) -> CommandReply: ...

    async def confirm(self, click: ConfirmClick) -> CommandReply: ...
