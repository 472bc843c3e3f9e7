"""Chat commands, written once for every platform: ask, stop, facts, forget, tools, help, usage and channel.

Each adapter turns its platform's command (a Slack slash command, a Discord interaction, a console line) into a
`CommandCall` and renders the `CommandReply` it gets back (agent/commands.py); nothing here knows which platform
it answers. A command that must be confirmed (forget) replies with a `Confirmation`; the click comes back through
`confirm`, checked against the channel it was shown in. Replies are Markdown and never carry internals: a failure
is one apology with an error id, the details go to the log.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING

from structlog.contextvars import bound_contextvars

from agent.approvals import ApprovalPolicy
from agent.commands import COMMANDS, CommandCall, CommandReply, Confirmation, ConfirmClick
from agent.messages import APOLOGY, IncomingMessage, new_error_id
from agent.ports import Handlers, NotAccepting, Submit
from agent.storage.base import Storage
from agent.storage.models import UsageTotal
from agent.tools.registry import ToolRegistry, ToolSpec
from bot.budgets import BudgetGuard, Period, Whose, period_bounds, wait_text
from bot.channels import ChannelConfig, InvalidSetting, Shown, message_scopes
from bot.usage import usd

if TYPE_CHECKING:
    from bot.app import App
    from bot.dispatcher import Dispatcher

log = logging.getLogger("parley.commands")

FORGET = "forget"
NOT_APPROVER = "Only an approver of this channel can see or change its settings."
# A Discord DM belongs to no server, so to no scope that settings are kept for (bot/channels.py).
NO_SCOPE = "Settings are kept per server channel: a direct message follows the global settings."
RESTARTING = "I'm restarting and not taking questions this moment. Please ask again in a minute."
# The periods usage is shown for: the ones budgets count over.
PERIODS: tuple[tuple[Period, str], ...] = (("daily", "Today"), ("monthly", "This month"))


Handler = Callable[["ChatCommands", CommandCall], Awaitable[CommandReply]]
# The dispatcher's `stop_mine`: stops a person's answers under way in a channel (platform, channel key, user).
StopMine = Callable[[str, str, str], Awaitable[bool | None]]


class ChatCommands:
    """The command set (`agent.commands.Commands`) over the storage, the tools, the dispatcher and the settings.

    `submit` is the dispatcher's: an `ask` goes through the inbox like any message. `channels` is where channel
    settings are read and changed (None: not available here); approvers are the approval policy's."""

    def __init__(
        self,
        storage: Storage,
        registry: ToolRegistry,
        submit: Submit,
        policy: ApprovalPolicy,
        *,
        channels: ChannelConfig | None = None,
        stop: StopMine | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.storage = storage
        self.stop_mine = stop
        self.registry = registry
        self.submit = submit
        self.policy = policy
        self.channels = channels
        self.clock = clock

    async def run(self, call: CommandCall) -> CommandReply:
        """Run the named command (an unknown one shows the help)."""
        handler = HANDLERS.get(call.name.strip().lower(), ChatCommands.help)
        return await self._safely(handler(self, call), call.platform, call.name)

    async def confirm(self, click: ConfirmClick) -> CommandReply:
        """Act on a click of a confirmation's button (or a yes on the console)."""
        confirmed = CONFIRMED.get(click.action)
        if confirmed is None:
            return CommandReply("That button no longer does anything.")
        return await self._safely(confirmed(self, click), click.platform, f"confirm {click.action}")

    async def _safely(self, work: Awaitable[CommandReply], platform: str, what: str) -> CommandReply:
        try:
            return await work
        except NotAccepting:  # starting or shutting down: nothing was stored, so asking again is the fix
            return CommandReply(RESTARTING)
        except Exception as exc:
            error_id = new_error_id()
            with bound_contextvars(error_id=error_id):
                log.exception(
                    "the %s command %r failed (error id %s): %s", platform, what, error_id, type(exc).__name__
                )
            return CommandReply(APOLOGY.format(error_id=error_id))

    # The commands -----------------------------------------------------------------------------------------

    async def ask(self, call: CommandCall) -> CommandReply:
        question = call.text.strip()
        if not question:
            return CommandReply(f"Ask me something: `{call.prefix}ask <question>`.")
        await self.submit(_message(call, question))
        return CommandReply(f"Thinking about: {question}", answer_follows=True)

    async def stop(self, call: CommandCall) -> CommandReply:
        if self.stop_mine is None:
            return CommandReply("Stopping answers is not available here.")
        stopped = await self.stop_mine(call.platform, call.channel_key, call.user)
        if stopped is None:  # passed on to the other replicas: the one running it stops it
            return CommandReply("Stopping your answer in this channel, if one is under way.")
        return CommandReply("Stopped your answer." if stopped else "No answer to you is under way in this channel.")

    async def facts(self, call: CommandCall) -> CommandReply:
        remembered = await self.storage.facts.of_channel(call.channel_key)
        if not remembered:
            return CommandReply("Nothing remembered in this channel yet.")
        return CommandReply("\n".join(f"- **{fact.key}**: {fact.value}" for fact in remembered))

    async def forget(self, call: CommandCall) -> CommandReply:
        return CommandReply(
            "Forget everything this channel remembers? Its facts and conversation history are erased for good.",
            confirm=Confirmation(
                question="Forget everything this channel remembers?",
                label="Yes, forget",
                action=FORGET,
                value=call.channel_key,
            ),
        )

    async def forget_confirmed(self, click: ConfirmClick) -> CommandReply:
        # The value names the channel the prompt was shown in; a click must come from there.
        if click.value != click.channel_key:
            return CommandReply("That button belongs to another channel: nothing was forgotten.")
        counts = await self.storage.forget(click.value)
        return CommandReply(f"Forgotten: {counts.get('facts', 0)} facts and {counts.get('turns', 0)} turns.")

    async def tools(self, call: CommandCall) -> CommandReply:
        usable = await self._usable_tools(call)
        if not usable:
            return CommandReply("No tools are enabled in this channel.")
        return CommandReply("\n".join(f"- `{s.name}` ({s.approval}): {_summary(s.description)}" for s in usable))

    async def _usable_tools(self, call: CommandCall) -> list[ToolSpec]:
        """The enabled tools, narrowed to the channel's allowlist when it has one."""
        enabled = self.registry.enabled()
        if self.channels is None:
            return enabled
        allowed = (await self.channels.resolve(_message(call))).profile.tools
        return enabled if allowed is None else [s for s in enabled if s.name in allowed]

    async def help(self, call: CommandCall) -> CommandReply:
        lines = [f"**Parley** answers when you mention it or message it directly, and with `{call.prefix}ask`."]
        for name, info in COMMANDS.items():
            typed = f"{call.prefix}{name} {info.args}".strip()
            lines.append(f"- `{typed}`: {info.help}")
        lines.append("Say _remember that ..._ to teach me a fact.")
        return CommandReply("\n".join(lines))

    async def usage(self, call: CommandCall) -> CommandReply:
        whose = call.text.strip().lower() or "me"
        if whose not in ("me", "channel"):
            return CommandReply(f"Usage: `{call.prefix}usage me` or `{call.prefix}usage channel`.")
        now = self.clock()
        message = _message(call)
        # Where usage counts: a thread-channel's counts in its parent channel.
        channel = message.conversation.settings_channel
        owner: Whose = "user" if whose == "me" else "channel"
        who = {"user": f"{call.platform}:{call.user}"} if owner == "user" else {"channel": channel}
        title = "Your usage" if owner == "user" else "This channel's usage"
        lines = [f"**{title}**"]
        for period, name in PERIODS:
            total = await self.storage.usage.spent(since=period_bounds(period, now)[0], **who)
            lines.append(f"- {name}: {_spent(total)}")
        if self.channels is not None:
            budgets = (await self.channels.resolve(message)).budgets
            if budgets.exempt_approvers and owner == "user" and self._approver(call):
                lines.append("- Budgets: none for you (approvers are exempt).")
            else:
                guard = BudgetGuard(self.storage.usage, clock=self.clock)
                for s in await guard.standing(message, budgets, owner):
                    left = s.budget.quantity(max(s.budget.amount - s.used, 0.0))
                    name = f"{s.period.capitalize()} budget" + (" in this channel" if s.in_channel else "")
                    lines.append(f"- {name}: {left} left of {s.budget} (resets in {wait_text(s.resets_at - now)})")
        return CommandReply("\n".join(lines))

    async def channel(self, call: CommandCall) -> CommandReply:
        action, _, rest = call.text.strip().partition(" ")
        key, _, value = rest.strip().partition(" ")
        action, key, value = action.lower(), key.strip(), value.strip()
        how = f"`{call.prefix}channel show`, `{call.prefix}channel set KEY VALUE` or `{call.prefix}channel reset KEY`"
        if action not in ("show", "set", "reset") or (action != "show" and not key) or (action == "set" and not value):
            return CommandReply(f"Usage: {how}.")
        scopes = message_scopes(_message(call))
        if not scopes:
            return CommandReply(NO_SCOPE)
        if not self._approver(call):
            return CommandReply(NOT_APPROVER)
        if self.channels is None:
            return CommandReply("Channel settings are not available here.")
        # A thread's own settings when called in one, else the channel's.
        scope = scopes[0]
        actor = f"{call.platform}:{call.user}"
        old: str | None = None
        try:
            if action == "set":
                old = await self.channels.set(scope, key, value, actor)
            elif action == "reset":
                old = await self.channels.reset(scope, key, actor)
            shown = await self.channels.show(scope)
        except InvalidSetting as exc:
            return CommandReply(exc.message)
        if action == "show":
            return CommandReply(f"**Settings of {scope}**\n" + "\n".join(_setting(s) for s in shown))
        now = next(s for s in shown if s.key == key.strip().lower())
        was = "not set here" if old is None else f"`{old}`"
        done = "Set" if action == "set" else "Reset"
        return CommandReply(f"{done} `{now.key}` at {scope} (it was {was}).\n{_setting(now)}")

    def _approver(self, call: CommandCall) -> bool:
        return self.policy.is_approver(call.platform, call.channel_key, call.user, call.roles, parent=call.parent_key)


# Each command's handler (agent.commands.COMMANDS says how each is typed and what it does).
HANDLERS: Mapping[str, Handler] = {
    "ask": ChatCommands.ask,
    "stop": ChatCommands.stop,
    "facts": ChatCommands.facts,
    "forget": ChatCommands.forget,
    "tools": ChatCommands.tools,
    "usage": ChatCommands.usage,
    "channel": ChatCommands.channel,
    "help": ChatCommands.help,
}

# What a confirmation's click does, by the confirmation's action.
CONFIRMED: Mapping[str, Callable[[ChatCommands, ConfirmClick], Awaitable[CommandReply]]] = {
    FORGET: ChatCommands.forget_confirmed,
}


def chat_handlers(parley: App, dispatcher: Dispatcher) -> Handlers:
    """What every adapter hands its platform's events to: the dispatcher's submit, decide and stop, and the
    command set over the same storage, tools and settings."""
    policy = parley.approvals.policy
    commands = ChatCommands(
        parley.storage,
        parley.runner.registry,
        dispatcher.submit,
        policy,
        channels=parley.channels,
        stop=dispatcher.stop_mine,
    )
    return Handlers(dispatcher.submit, dispatcher.decide, commands, dispatcher.stop_answer)


def _message(call: CommandCall, text: str = "") -> IncomingMessage:
    """The call as the message it would be: what an `ask` submits, and what channel settings resolve for."""
    return IncomingMessage(
        platform=call.platform,
        workspace=call.workspace,
        channel=call.channel,
        thread=call.thread,
        user=call.user,
        text=text,
        event_id=call.event_id,
        mentioned=True,
        is_dm=call.is_dm,
        reply_url=call.reply_url,
        parent=call.parent,
        roles=call.roles,
    )


def _setting(shown: Shown) -> str:
    return f"- `{shown.key}`: {shown.value or '(none)'} _({shown.source})_"


def _spent(total: UsageTotal) -> str:
    answers = f"{total.answers:,} answer" + ("" if total.answers == 1 else "s")
    cost = f", {usd(total.cost)}" if total.cost is not None else ""
    return f"{total.tokens:,} tokens in {answers}{cost}"


def _summary(text: str) -> str:
    """A tool's description as one line: its first paragraph, however its docstring was wrapped."""
    return " ".join(text.strip().split("\n\n", 1)[0].split())
