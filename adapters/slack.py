"""The Slack adapter: slack-bolt's AsyncApp, over HTTP (`POST /slack/events`) or Socket Mode.

Events become `IncomingMessage`s and go to the dispatcher before Slack is acknowledged (Bolt runs the
listener before it answers, `process_before_response=True`), so a crash never loses one and a Slack retry
is dropped by the inbox. Replies are posted in the thread of the message (a DM is answered in the DM),
converted to mrkdwn and split to Slack's size. While Parley works, the question carries a reaction.
Approval requests are Block Kit messages with Approve / Deny / Always buttons.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
from collections.abc import Coroutine, Sequence
from dataclasses import dataclass
from typing import Any

import aiohttp
from aiohttp import web
from slack_bolt.adapter.aiohttp import to_aiohttp_response, to_bolt_request
from slack_bolt.adapter.socket_mode.aiohttp import AsyncSocketModeHandler
from slack_bolt.app.async_app import AsyncApp
from slack_sdk.errors import SlackApiError, SlackClientError
from slack_sdk.http_retry.builtin_async_handlers import (
    AsyncConnectionErrorRetryHandler,
    AsyncRateLimitErrorRetryHandler,
    AsyncServerErrorRetryHandler,
)
from slack_sdk.web.async_client import AsyncWebClient
from slack_sdk.webhook.async_client import AsyncWebhookClient

from adapters.text import split_message, to_mrkdwn
from agent.approvals import ApprovalRequest, ApprovalState
from agent.memory import Memory
from agent.messages import IncomingMessage, Reply
from agent.ports import Decide, DeliveryError, PlatformUnavailable, Submit
from agent.tools.registry import ToolRegistry

log = logging.getLogger("parley.slack")

DECISION_ACTIONS = {"parley_approve": (True, False), "parley_deny": (False, False), "parley_always": (True, True)}
FORGET_ACTION = "parley_forget"
OUTCOME_EMOJI = {
    ApprovalState.APPROVED: ":white_check_mark:",
    ApprovalState.DENIED: ":no_entry:",
    ApprovalState.EXPIRED: ":hourglass:",
    ApprovalState.PENDING: ":hourglass_flowing_sand:",
}
# How many of a thread's earlier messages by other people the agent is shown.
THREAD_CONTEXT_MESSAGES = 10
# Slack errors a retry cannot fix: the reply is given up (and logged) instead of retried.
PERMANENT_ERRORS = frozenset(
    {
        "channel_not_found",
        "not_in_channel",
        "is_archived",
        "msg_too_long",
        "no_text",
        "invalid_auth",
        "account_inactive",
    }
)
HELP = (
    "*Parley* answers when you mention it, in DMs, and with `{command} ask <question>`.\n"
    "`{command} facts`: what this channel remembers. `{command} forget`: erase it (asks first).\n"
    "`{command} tools`: the tools I can use. Say _remember that ..._ to teach me a fact."
)


class SlackUnavailable(PlatformUnavailable):
    """Slack cannot be used with these settings: the message says why, in one line."""


@dataclass(frozen=True)
class SlackConfig:
    bot_token: str
    signing_secret: str
    app_token: str | None = None
    api_url: str = "https://slack.com/api/"
    command: str = "/parley"
    progress_reaction: str = "eyes"
    # The reaction appears only when an answer takes longer than this: a quick answer needs no sign of
    # progress, and two fewer calls per message keep Parley inside Slack's rate limit for reactions.
    progress_after_s: float = 1.0
    # Answer an edited DM as a new message (edits are otherwise ignored, like deletions).
    answer_edits: bool = False
    # Also show "is thinking..." as the assistant thread status (apps with the assistant:write scope).
    assistant_status: bool = False


def channel_of(key: str) -> tuple[str, str]:
    """The team and channel id in a Slack memory key (`slack:T123/C456`)."""
    team, _, channel = key.removeprefix("slack:").partition("/")
    return team, channel


class SlackAdapter:
    """One Slack workspace's bot. Call `connect(submit, decide)` before events arrive."""

    name = "slack"
    resumable = True

    def __init__(self, config: SlackConfig, *, memory: Memory, registry: ToolRegistry) -> None:
        self.config = config
        self.memory = memory
        self.registry = registry
        # One session (one connection pool) for every call; built inside the running loop.
        self._session = aiohttp.ClientSession()
        self.client = AsyncWebClient(
            token=config.bot_token,
            base_url=config.api_url,
            session=self._session,
            retry_handlers=[
                AsyncConnectionErrorRetryHandler(max_retry_count=2),
                AsyncRateLimitErrorRetryHandler(max_retry_count=3),
                AsyncServerErrorRetryHandler(max_retry_count=2),
            ],
        )
        self.app = AsyncApp(client=self.client, signing_secret=config.signing_secret, process_before_response=True)
        self._submit: Submit | None = None
        self._decide: Decide | None = None
        self._socket: AsyncSocketModeHandler | None = None
        self._prompts: dict[str, tuple[str, str]] = {}  # approval request id -> (channel id, message ts)
        self._background: set[asyncio.Task[Any]] = set()
        # Message (channel, ts) -> its pending or shown progress reaction.
        self._progress: dict[tuple[str, str], asyncio.Task[bool]] = {}
        self._bot_user = ""
        self._register()

    def connect(self, submit: Submit, decide: Decide) -> None:
        self._submit, self._decide = submit, decide

    # Serving ------------------------------------------------------------------------------------------

    async def handle_http(self, request: web.Request) -> web.Response:
        """`POST /slack/events`: Bolt verifies the signature (401 for a bad or stale one) and dispatches."""
        response = await self.app.async_dispatch(await to_bolt_request(request))
        return await to_aiohttp_response(response)

    async def start(self) -> None:
        """Check the bot token now (a bad one is one clear line at start-up, not a dropped first event), then
        connect Socket Mode when there is an app token; otherwise events arrive over HTTP."""
        try:
            identity = await self.client.auth_test()
        except SlackApiError as exc:
            raise SlackUnavailable(f"Slack refused the bot token ({exc.response.get('error', 'unknown')})") from None
        except SlackClientError as exc:
            raise SlackUnavailable(f"Slack cannot be reached at {self.config.api_url} ({type(exc).__name__})") from None
        self._bot_user = str(identity.get("user_id") or "")
        log.info("connected to Slack team %s as %s", identity.get("team_id"), self._bot_user)
        if self.config.app_token:
            await self.start_socket_mode()

    async def is_connected(self) -> bool:
        """The token was accepted and, in Socket Mode, the websocket is up (it reconnects by itself)."""
        if not self._bot_user:
            return False
        if self._socket is None:
            return not self.config.app_token
        connected: bool = await self._socket.client.is_connected()
        return connected

    async def start_socket_mode(self) -> None:
        if not self.config.app_token:
            raise ValueError("Socket Mode needs an app token (xapp-...)")
        self._socket = AsyncSocketModeHandler(self.app, self.config.app_token)
        await self._socket.connect_async()  # type: ignore[no-untyped-call]

    async def close(self) -> None:
        if self._socket is not None:
            await self._socket.close_async()  # type: ignore[no-untyped-call]
        for task in [*self._background, *self._progress.values()]:
            task.cancel()
        await asyncio.gather(*self._background, *self._progress.values(), return_exceptions=True)
        self._progress.clear()
        await self._session.close()

    # Events in -----------------------------------------------------------------------------------------

    def _register(self) -> None:
        app = self.app
        app.event("app_mention")(self._on_mention)
        app.event("message")(self._on_message)
        app.command(self.config.command)(self._on_command)
        app.action(re.compile("^parley_(approve|deny|always)$"))(self._on_decision)
        app.action(FORGET_ACTION)(self._on_forget)

    async def _on_mention(self, body: dict[str, Any], event: dict[str, Any], context: dict[str, Any]) -> None:
        await self._receive(body, event, context, is_dm=False)

    async def _on_message(self, body: dict[str, Any], event: dict[str, Any], context: dict[str, Any]) -> None:
        # Channel messages that mention the bot arrive as app_mention too; only DMs are taken here.
        if event.get("channel_type") == "im":
            await self._receive(body, event, context, is_dm=True)

    async def _receive(
        self, body: dict[str, Any], event: dict[str, Any], context: dict[str, Any], *, is_dm: bool
    ) -> None:
        if event.get("subtype") == "message_changed" and self.config.answer_edits and is_dm:
            event = {**event.get("message", {}), "channel": event.get("channel", "")}
        elif event.get("subtype"):
            return  # edits (unless opted in), deletions, joins, other bots' posts
        if event.get("bot_id") or not event.get("user"):
            return
        bot_user = context.get("bot_user_id") or ""
        text = str(event.get("text", ""))
        if bot_user:
            text = text.replace(f"<@{bot_user}>", "", 1).strip()
        ts = str(event.get("ts", ""))
        thread = str(event.get("thread_ts") or ("" if is_dm else ts))
        message = IncomingMessage(
            platform=self.name,
            workspace=str(body.get("team_id") or event.get("team", "")),
            channel=str(event.get("channel", "")),
            thread=thread,
            user=str(event.get("user", "")),
            text=text,
            message_id=ts,
            event_id=str(body.get("event_id") or ts),
            mentioned=not is_dm,
            is_dm=is_dm,
        )
        if await self._require_submit()(message):
            self._progress[(message.channel, ts)] = asyncio.create_task(self._show_progress(message))

    async def _on_command(self, ack: Any, command: dict[str, Any]) -> None:
        """`/parley ask|facts|forget|tools|help`: everything but `ask` is answered in the acknowledgement."""
        sub, _, rest = str(command.get("text", "")).strip().partition(" ")
        key = f"slack:{command.get('team_id', '')}/{command.get('channel_id', '')}"
        name = self.config.command
        if sub == "ask" and rest.strip():
            message = IncomingMessage(
                platform=self.name,
                workspace=str(command.get("team_id", "")),
                channel=str(command.get("channel_id", "")),
                user=str(command.get("user_id", "")),
                text=rest.strip(),
                event_id=f"command-{command.get('trigger_id', time.time())}",
                mentioned=True,
                reply_url=str(command.get("response_url", "")),
            )
            await self._require_submit()(message)
            await ack(f"Thinking about: {rest.strip()}")
        elif sub == "facts":
            facts = await self.memory.facts(key)
            listed = "\n".join(f"- **{f.key}**: {f.value}" for f in facts)
            await ack(to_mrkdwn(listed) if facts else "Nothing remembered in this channel yet.")
        elif sub == "forget":
            await ack(
                text="Forget everything this channel remembers?",
                blocks=[
                    {
                        "type": "section",
                        "text": {"type": "mrkdwn", "text": "Forget everything this channel remembers?"},
                    },
                    {
                        "type": "actions",
                        "elements": [
                            {
                                "type": "button",
                                "style": "danger",
                                "text": {"type": "plain_text", "text": "Yes, forget"},
                                "action_id": FORGET_ACTION,
                                "value": key,
                            }
                        ],
                    },
                ],
            )
        elif sub == "tools":
            lines = [f"• `{s.name}` ({s.approval}): {s.description.splitlines()[0]}" for s in self.registry.enabled()]
            await ack("\n".join(lines) or "No tools are enabled.")
        else:
            await ack(HELP.format(command=name))

    async def _on_forget(self, ack: Any, body: dict[str, Any], action: dict[str, Any], respond: Any) -> None:
        await ack()
        counts = await self.memory.forget(str(action.get("value", "")))
        await respond(
            text=f"Forgotten: {counts.get('facts', 0)} facts and {counts.get('turns', 0)} turns.",
            replace_original=True,
        )

    async def _on_decision(self, ack: Any, body: dict[str, Any], action: dict[str, Any]) -> None:
        await ack()
        if self._decide is None:
            return
        approve, always = DECISION_ACTIONS[str(action.get("action_id"))]
        try:
            value = json.loads(str(action.get("value", "{}")))
            request_id, shown = str(value["id"]), str(value["hash"])
        except (ValueError, KeyError, TypeError):
            request_id, shown = "", ""
        user = str(body.get("user", {}).get("id", ""))
        verdict = await self._decide(
            request_id, platform=self.name, user=user, approve=approve, args_hash=shown, always=always
        )
        if not verdict.accepted:
            channel = str(body.get("channel", {}).get("id", ""))
            await self._quietly(
                self.client.chat_postEphemeral(
                    channel=channel, user=user, text=f"You cannot do that: {verdict.reason}."
                )
            )

    async def thread_context(self, message: IncomingMessage) -> str:
        """For a mention inside an existing thread: what other people said there before it (Parley's own
        exchanges in the thread are in memory already)."""
        if not message.thread or message.thread == message.message_id:
            return ""
        history = await self.client.conversations_replies(
            channel=message.channel, ts=message.thread, limit=THREAD_CONTEXT_MESSAGES * 2
        )
        lines = []
        for item in history.get("messages") or []:
            if item.get("ts") == message.message_id or item.get("bot_id") or item.get("user") == self._bot_user:
                continue
            text = re.sub(r"<@[A-Z0-9]+>", "", str(item.get("text", ""))).strip()
            if text:
                lines.append(f"<{item.get('user', 'someone')}>: {text[:500]}")
        if not lines:
            return ""
        return "Earlier in this thread:\n" + "\n".join(lines[-THREAD_CONTEXT_MESSAGES:])

    # Replies out ---------------------------------------------------------------------------------------

    async def deliver(self, message: IncomingMessage, reply: Reply, key: str) -> None:
        chunks = split_message(to_mrkdwn(reply.text)) or ["(no answer)"]
        try:
            if message.reply_url:
                webhook = AsyncWebhookClient(message.reply_url)
                for chunk in chunks:
                    answer = await webhook.send(text=chunk, response_type="in_channel", replace_original=False)
                    if answer.status_code >= 500 or answer.status_code == 429:
                        raise DeliveryError(f"response_url answered {answer.status_code}")
                    if answer.status_code >= 400:
                        raise DeliveryError(f"response_url refused the reply ({answer.status_code})", transient=False)
            else:
                for i, chunk in enumerate(chunks):
                    await self.client.chat_postMessage(
                        channel=message.channel,
                        thread_ts=message.thread or None,
                        text=chunk,
                        metadata={"event_type": "parley_reply", "event_payload": {"key": f"{key}:{i}"}},
                    )
        except SlackApiError as exc:
            error = str(exc.response.get("error", "unknown"))
            raise DeliveryError(f"Slack refused the reply: {error}", transient=error not in PERMANENT_ERRORS) from None
        except SlackClientError as exc:
            raise DeliveryError(f"Slack could not be reached: {type(exc).__name__}") from None
        progress = self._progress.pop((message.channel, message.message_id), None)
        if progress is not None:
            if not progress.done():
                progress.cancel()  # answered before the reaction was due: nothing to show or clear
            elif not progress.cancelled() and progress.result():
                self._spawn(self._react(message, add=False))
                if self.config.assistant_status and message.thread:
                    self._spawn(self._status(message, ""))

    async def post(self, channel: str, text: str) -> None:
        """Post to a channel (its memory key, `slack:T/C`, or a channel id): for scheduled reports."""
        _, channel_id = channel_of(channel) if channel.startswith("slack:") else ("", channel)
        for chunk in split_message(to_mrkdwn(text)) or ["(empty)"]:
            await self.client.chat_postMessage(channel=channel_id, text=chunk)

    async def request_approval(self, request: ApprovalRequest) -> None:
        _, channel = channel_of(request.channel)
        value = json.dumps({"id": request.id, "hash": request.args_hash})
        args = "\n".join(f"• `{k}`: {json.dumps(v, default=str)[:500]}" for k, v in request.args.items()) or "(none)"
        who = "the person who asked" if request.level == "confirm" else "an approver"
        expires = int(request.expires_at)
        text = (
            f"*Approval needed*: <@{request.requester}> asked me to run `{request.tool}`.\n{args}\n"
            f"Needs {who}. Expires <!date^{expires}^{{time}}|in {round((request.expires_at - time.time()) / 60)} min>."
        )
        buttons = [
            _button("Approve", "parley_approve", value, "primary"),
            _button("Deny", "parley_deny", value, "danger"),
            _button("Always in this channel", "parley_always", value, None),
        ]
        posted = await self.client.chat_postMessage(
            channel=channel,
            thread_ts=request.thread or None,
            text=f"Approval needed to run {request.tool}",
            blocks=[
                {"type": "section", "text": {"type": "mrkdwn", "text": text}},
                {"type": "actions", "elements": buttons},
            ],
        )
        self._prompts[request.id] = (str(posted["channel"]), str(posted["ts"]))

    async def approval_settled(self, request: ApprovalRequest) -> None:
        shown = self._prompts.pop(request.id, None)
        if shown is None:
            return
        text = f"`{request.tool}` asked by <@{request.requester}>: {OUTCOME_EMOJI[request.state]} {request.outcome}."
        await self.client.chat_update(
            channel=shown[0],
            ts=shown[1],
            text=text,
            blocks=[{"type": "section", "text": {"type": "mrkdwn", "text": text}}],
        )

    # Helpers ---------------------------------------------------------------------------------------------

    def _require_submit(self) -> Submit:
        if self._submit is None:
            raise RuntimeError("the Slack adapter is not connected to a dispatcher")
        return self._submit

    async def _show_progress(self, message: IncomingMessage) -> bool:
        """Put the progress reaction on the question once the answer is slow; True when it was put."""
        await asyncio.sleep(self.config.progress_after_s)
        if self.config.assistant_status and message.thread:
            await self._status(message, "is thinking...")
        return await self._react(message, add=True)

    async def _status(self, message: IncomingMessage, status: str) -> None:
        """The assistant thread status; a workspace or thread without assistant support just refuses it."""
        call = self.client.assistant_threads_setStatus(
            channel_id=message.channel, thread_ts=message.thread, status=status
        )
        await self._quietly(call)

    async def _react(self, message: IncomingMessage, *, add: bool) -> bool:
        """The progress sign on the question: added while the answer is slow, removed when it lands."""
        call = self.client.reactions_add if add else self.client.reactions_remove
        return await self._quietly(
            call(channel=message.channel, timestamp=message.message_id, name=self.config.progress_reaction)
        )

    async def _quietly(self, call: Coroutine[Any, Any, Any]) -> bool:
        try:
            await call
        except SlackClientError as exc:
            log.info("a best-effort Slack call failed: %s", exc)
            return False
        return True

    def _spawn(self, work: Coroutine[Any, Any, Any]) -> None:
        task = asyncio.create_task(work)
        self._background.add(task)
        task.add_done_callback(self._background.discard)


def _button(text: str, action_id: str, value: str, style: str | None) -> dict[str, Any]:
    button: dict[str, Any] = {
        "type": "button",
        "text": {"type": "plain_text", "text": text},
        "action_id": action_id,
        "value": value,
    }
    if style:
        button["style"] = style
    return button


__all__: Sequence[str] = ("SlackAdapter", "SlackConfig", "channel_of")
