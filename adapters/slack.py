"""The Slack adapter: slack-bolt's AsyncApp, over HTTP (`POST /slack/events`) or Socket Mode.

Events become `IncomingMessage`s and go to the dispatcher before Slack is acknowledged (Bolt runs the
listener before it answers, `process_before_response=True`), so a crash never loses one and a Slack retry
is dropped by the inbox. Replies stream into the thread of the message while they are produced
(adapters/slack_stream.py); otherwise they are posted there (a DM is answered in the DM), converted to mrkdwn and
split to Slack's size, and a slow one's question carries a reaction meanwhile. Approval requests are Block Kit
messages with Approve / Deny / Always buttons; `/parley NAME` runs the command set (bot/commands.py).

Files shared with a question (and earlier in its thread) become attachments downloaded from Slack's file host
with the bot token (files:read); files a reply carries are uploaded into its thread (files:write).
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
from collections.abc import Coroutine, Sequence
from functools import partial
from typing import Any

import aiohttp
from aiohttp import web
from pydantic import ValidationError
from slack_bolt.adapter.aiohttp import to_aiohttp_response
from slack_bolt.adapter.socket_mode.aiohttp import AsyncSocketModeHandler
from slack_bolt.adapter.socket_mode.async_internals import send_async_response
from slack_bolt.adapter.socket_mode.internals import build_headers
from slack_bolt.app.async_app import AsyncApp
from slack_bolt.request.async_request import AsyncBoltRequest
from slack_bolt.response import BoltResponse
from slack_sdk.errors import SlackApiError, SlackClientError
from slack_sdk.http_retry.builtin_async_handlers import (
    AsyncConnectionErrorRetryHandler,
    AsyncRateLimitErrorRetryHandler,
    AsyncServerErrorRetryHandler,
)
from slack_sdk.socket_mode.aiohttp import SocketModeClient
from slack_sdk.socket_mode.request import SocketModeRequest
from slack_sdk.socket_mode.response import SocketModeResponse
from slack_sdk.web.async_client import AsyncWebClient
from slack_sdk.webhook.async_client import AsyncWebhookClient
from structlog.contextvars import bound_contextvars
from yarl import URL

from adapters.approval_text import arguments_filename, full_arguments, show_call, shown_name
from adapters.edge import QuietLog, problems
from adapters.files import download
from adapters.options import SlackConfig
from adapters.slack_edge import (
    ActionBody,
    BadRequest,
    Ignored,
    MessageEvent,
    SlackFile,
    SlashCommand,
    Verifier,
    canonical,
    event_id_of,
    parse_body,
)
from adapters.slack_prompt import FILE_ABOVE, MAX_LISTED_ARGUMENTS, NO_FILE, literal, prompt_blocks, section
from adapters.slack_stream import STOP_EVENT, UNREACHABLE, SlackStream, SlackStreams, last_key, metadata
from adapters.text import split_message, to_mrkdwn
from agent.approvals import ApprovalRequest, ApprovalState, Decision, PromptLocation
from agent.attachments.models import Attachment, AttachmentRefused
from agent.commands import NO_COMMANDS, UNREADABLE, CommandCall, CommandReply, ConfirmClick
from agent.messages import APOLOGY, IncomingMessage, Reply, new_error_id
from agent.ports import DeliveryError, Handlers, NotAccepting, PlatformUnavailable, StreamMoved

log = logging.getLogger("parley.slack")

DECISION_ACTIONS = {"parley_approve": (True, False), "parley_deny": (False, False), "parley_always": (True, True)}
# The button of a command's confirmation (forget): its value carries the confirmation's action and value.
CONFIRM_ACTION = "parley_confirm"
OUTCOME_EMOJI = {
    ApprovalState.APPROVED: ":white_check_mark:",
    ApprovalState.DENIED: ":no_entry:",
    ApprovalState.EXPIRED: ":hourglass:",
    ApprovalState.PENDING: ":hourglass_flowing_sand:",
}
# A prompt that cannot be updated because it is no longer there: nothing is left to take the buttons off.
PROMPT_GONE = frozenset({"message_not_found", "channel_not_found", "is_archived"})
# How many of a thread's earlier messages by other people the agent is shown.
THREAD_CONTEXT_MESSAGES = 10
# A thread's messages, read once for its text and once for its files, are kept this long (and this many threads).
THREAD_CACHE_S = 30.0
THREAD_CACHE_SIZE = 64
# Files Slack lists but no longer serves: deleted (`tombstone`), or beyond a free workspace's history.
GONE_MODES = frozenset({"tombstone", "hidden_by_limit"})
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
# Headers Bolt may see: Slack's own, not the sender's others (Bolt honours some of its own internal ones).
BOLT_HEADERS = ("x-slack-request-timestamp", "x-slack-signature", "x-slack-retry-num", "x-slack-retry-reason")


class SlackUnavailable(PlatformUnavailable):
    """Slack cannot be used with these settings: the message says why, in one line."""


def channel_of(key: str) -> tuple[str, str]:
    """The team and channel id in a Slack memory key (`slack:T123/C456`)."""
    team, _, channel = key.removeprefix("slack:").partition("/")
    return team, channel


class SlackAdapter:
    """One Slack workspace's bot. Call `connect(handlers)` before events arrive."""

    name = "slack"
    resumable = True

    def __init__(self, config: SlackConfig) -> None:
        self.config = config
        # One session (one connection pool) for every call; built inside the running loop. slack-sdk's own
        # timeout (30 s) applies only to sessions it makes itself: without one here, a Slack that stops answering
        # would hold a call for aiohttp's five minutes. File downloads set their own.
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30))
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
        # The edge verifies the signature on the raw bytes (adapters/slack_edge.py), before anything is parsed;
        # Bolt gets the checked, canonical body only, so its own check (of the original bytes) is off.
        self.verifier = Verifier(config.signing_secret)
        self.app = AsyncApp(
            client=self.client,
            signing_secret=config.signing_secret,
            process_before_response=True,
            request_verification_enabled=False,
        )
        self.app.error(self._on_error)
        # Bad requests are logged at most once a minute per sender and kind: a stream of them cannot fill the log.
        self.quiet = QuietLog(log)
        self._handlers: Handlers | None = None
        self._socket: _CheckedSocketMode | None = None
        self._background: set[asyncio.Task[Any]] = set()
        # Message (channel, ts) -> its pending or shown progress reaction.
        self._progress: dict[tuple[str, str], asyncio.Task[bool]] = {}
        self._bot_user = ""
        # (channel, thread, message ts) -> (when read, the thread's messages): conversations.replies once per answer.
        self._threads: dict[tuple[str, str, str], tuple[float, list[dict[str, Any]]]] = {}
        self._register()
        # Replies streamed while they are produced; the person's Stop on one arrives as an event.
        self.streams = SlackStreams(self.client, self._post_files)
        self.app.event(STOP_EVENT)(self.streams.on_stopped)

    def connect(self, handlers: Handlers) -> None:
        self._handlers = handlers
        self.streams.stop = handlers.stop

    # Serving ------------------------------------------------------------------------------------------

    async def handle_http(self, request: web.Request) -> web.Response:
        """`POST /slack/events`: 401 unless Slack signed these exact bytes, 400 for a body of the wrong shape,
        otherwise Bolt dispatches the checked body to the listeners."""
        raw = await request.read()
        source = request.remote or "unknown"
        try:
            self.verifier.verify(raw, request.headers)
            body = canonical(parse_body(raw, request.content_type))
        except BadRequest as bad:
            self.quiet.warning(
                f"{bad.status}:{source}", "refused a request from %s: %s (HTTP %d)", source, bad.reason, bad.status
            )
            return web.json_response({"error": bad.reason}, status=bad.status)
        except Ignored as kind:
            log.debug("acknowledged a Slack request of a kind Parley does not handle: %s", kind)
            return web.Response(status=200)
        headers: dict[str, str | Sequence[str]] = {
            k: v for k, v in request.headers.items() if k.lower() in BOLT_HEADERS
        }
        headers["content-type"] = "application/json"
        response = await self.app.async_dispatch(
            AsyncBoltRequest(body=json.dumps(body), query=request.query_string, headers=headers)
        )
        return await to_aiohttp_response(response)

    async def _on_error(self, error: Exception, body: dict[str, Any]) -> BoltResponse:
        """Bolt's error handler, for what escaped a listener: never a 500. A closed dispatcher is a 503, so
        Slack redelivers; anything else is Parley's own failure, logged once with an error id (and so reported
        to Sentry with the request's event id), and the person gets an apology instead of silence."""
        if isinstance(error, NotAccepting):
            return BoltResponse(status=503, body="", headers={"Retry-After": "1"})
        error_id = new_error_id()
        event_id = event_id_of(body)
        with bound_contextvars(error_id=error_id, event_id=event_id):
            log.error(
                "a Slack request failed (event %s, error id %s): %s",
                event_id or "-",
                error_id,
                type(error).__name__,
                exc_info=error,
            )
        text = APOLOGY.format(error_id=error_id)
        return BoltResponse(status=200, body=json.dumps({"response_type": "ephemeral", "text": text}))

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
        self._socket = _CheckedSocketMode(self, self.config.app_token)
        await self._socket.connect_async()  # type: ignore[no-untyped-call]

    async def close(self) -> None:
        await self.streams.close()
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
        app.action(CONFIRM_ACTION)(self._on_confirm)

    async def _on_mention(self, body: dict[str, Any], event: dict[str, Any], context: dict[str, Any]) -> None:
        await self._receive(body, event, context, is_dm=False)

    async def _on_message(self, body: dict[str, Any], event: dict[str, Any], context: dict[str, Any]) -> None:
        # Channel messages that mention the bot arrive as app_mention too; only DMs are taken here.
        if event.get("channel_type") == "im":
            await self._receive(body, event, context, is_dm=True)

    async def _receive(
        self, body: dict[str, Any], event: dict[str, Any], context: dict[str, Any], *, is_dm: bool
    ) -> None:
        try:
            seen = MessageEvent.model_validate(event)
        except ValidationError as exc:
            self.quiet.warning("event-shape", "dropped a Slack %s event (%s)", event.get("type"), problems(exc))
            return
        if seen.subtype == "message_changed" and self.config.answer_edits and is_dm and seen.message:
            seen = seen.message.model_copy(update={"channel": seen.channel})
        elif seen.subtype and seen.subtype != "file_share":
            return  # edits (unless opted in), deletions, joins, other bots' posts
        if seen.bot_id or not seen.user:
            return
        bot_user = context.get("bot_user_id") or ""
        text = seen.text
        if bot_user:
            text = text.replace(f"<@{bot_user}>", "", 1).strip()
        thread = seen.thread_ts or ("" if is_dm else seen.ts)
        message = IncomingMessage(
            platform=self.name,
            workspace=str(body.get("team_id") or seen.team or ""),
            channel=seen.channel,
            thread=thread,
            user=seen.user,
            text=text,
            message_id=seen.ts,
            # The inbox's key: the event id, else the message's ts (see agent.storage.models.event_key for neither).
            event_id=str(body.get("event_id") or seen.ts),
            mentioned=not is_dm,
            is_dm=is_dm,
            attachments=attachments_of(seen.files, "message"),
        )
        if await self._connected().submit(message):
            self._progress[(message.channel, seen.ts)] = asyncio.create_task(self._show_progress(message))

    async def _on_command(self, ack: Any, command: dict[str, Any]) -> None:
        """`/parley NAME TEXT`: the command set (bot/commands.py) answers in the acknowledgement, within Slack's
        3 s; an `ask` is stored first and answered later through the command's response URL."""
        try:
            cmd = SlashCommand.model_validate(command)
        except ValidationError:
            self.quiet.warning("command-shape", "refused a slash command of an unexpected shape")
            await ack(UNREADABLE)
            return
        commands = self._connected().commands
        if commands is None:
            await ack(NO_COMMANDS)
            return
        name, _, text = cmd.text.strip().partition(" ")
        call = CommandCall(
            platform=self.name,
            workspace=cmd.team_id,
            channel=cmd.channel_id,
            user=cmd.user_id,
            name=name,
            text=text.strip(),
            reply_url=cmd.response_url,
            event_id=f"command-{cmd.trigger_id or time.time()}",
            prefix=f"{self.config.command} ",
        )
        await ack(**_rendered(await commands.run(call)))

    async def _on_confirm(self, ack: Any, body: dict[str, Any], action: dict[str, Any], respond: Any) -> None:
        """A click on a command's confirmation button: its answer replaces the prompt (through the response URL,
        else as an ephemeral message)."""
        await ack()
        commands = self._connected().commands
        try:
            clicked = ActionBody.model_validate(body)
            value = json.loads(str(action.get("value") or "{}"))
            confirmed, about = str(value["action"]), str(value["value"])
        except (ValidationError, ValueError, KeyError, TypeError, RecursionError):
            self.quiet.warning("action-shape", "dropped a confirmation click of an unexpected shape")
            return
        if commands is None:
            return
        click = ConfirmClick(
            platform=self.name,
            workspace=clicked.workspace,
            channel=clicked.channel.id or "",
            user=clicked.user.id or "",
            action=confirmed,
            value=about,
        )
        text = to_mrkdwn((await commands.confirm(click)).text)
        if clicked.response_url:
            try:
                await respond(text=text, replace_original=True)
                return
            except Exception as exc:  # the prompt stays; the answer is said beside it instead
                log.info("could not replace a confirmation prompt: %s", type(exc).__name__)
        if clicked.channel.id and clicked.user.id:
            await self._quietly(
                self.client.chat_postEphemeral(channel=clicked.channel.id, user=clicked.user.id, text=text)
            )

    async def _on_decision(self, ack: Any, body: dict[str, Any], action: dict[str, Any]) -> None:
        await ack()
        decide = self._connected().decide
        try:
            clicked = ActionBody.model_validate(body)
        except ValidationError:
            self.quiet.warning("action-shape", "dropped an approval click of an unexpected shape")
            return
        approve, always = DECISION_ACTIONS[str(action.get("action_id"))]
        try:
            value = json.loads(str(action.get("value") or "{}"))
            request_id, shown = str(value["id"]), str(value["hash"])
        except (ValueError, KeyError, TypeError, RecursionError):
            request_id, shown = "", ""
        user = clicked.user.id or ""
        verdict = await decide(Decision(request_id, self.name, user, approve, shown, always))
        if not verdict.accepted and clicked.channel.id and user:
            await self._quietly(
                self.client.chat_postEphemeral(channel=clicked.channel.id, user=user, text=verdict.refusal)
            )

    async def _earlier(self, message: IncomingMessage) -> list[dict[str, Any]]:
        """The thread's messages by other people before this one (none outside a thread), oldest first; read
        once for both the thread's text and its files."""
        if not message.thread or message.thread == message.message_id:
            return []
        key = (message.channel, message.thread, message.message_id)
        now = time.monotonic()
        for stale in [k for k, (at, _) in self._threads.items() if now - at > THREAD_CACHE_S]:
            del self._threads[stale]
        cached = self._threads.get(key)
        if cached is not None:
            return cached[1]
        history = await self.client.conversations_replies(
            channel=message.channel, ts=message.thread, limit=THREAD_CONTEXT_MESSAGES * 2
        )
        earlier = [
            item
            for item in history.get("messages") or []
            if isinstance(item, dict)
            and item.get("ts") != message.message_id
            and not item.get("bot_id")
            and item.get("user") != self._bot_user
        ]
        while len(self._threads) >= THREAD_CACHE_SIZE:
            del self._threads[next(iter(self._threads))]
        self._threads[key] = (now, earlier)
        return earlier

    async def attachments(self, message: IncomingMessage) -> tuple[Attachment, ...]:
        """The message's files, then those of the thread's earlier messages, newest first; each downloads from
        Slack's file host with the bot token. A thread that cannot be read leaves only the message's own."""
        found = [a for a in message.attachments if a.origin == "message"]
        try:
            earlier = await self._earlier(message)
        except SlackClientError as exc:
            log.info("no thread files for %s: %s", message.message_id, exc)
            earlier = []
        for item in reversed(earlier):
            try:
                seen = MessageEvent.model_validate(item)
            except ValidationError:
                continue
            found += attachments_of(seen.files, "thread")
        unique = {a.url or f"{a.name}#{i}": a for i, a in enumerate(found)}
        return tuple(a.bound(partial(self._fetch, a.url)) for a in unique.values())

    async def _fetch(self, url: str, max_bytes: int) -> bytes:
        if not url:
            raise AttachmentRefused("Slack did not share its contents with Parley")
        return await download(
            self._session,
            url,
            max_bytes,
            platform="Slack",
            allowed=self._on_file_host,
            headers={"Authorization": f"Bearer {self.config.bot_token}"},
        )

    def _on_file_host(self, url: URL) -> bool:
        """Slack's file host for the configured API: `files.slack.com` for `slack.com`, or the API host itself
        (a test server, a proxy), on the same scheme and port. The bot token goes nowhere else."""
        api = URL(self.config.api_url)
        return (url.scheme, url.port) == (api.scheme, api.port) and url.host in (api.host, f"files.{api.host}")

    async def thread_context(self, message: IncomingMessage) -> str:
        """For a mention inside an existing thread: what other people said there before it (Parley's own
        exchanges in the thread are in memory already)."""
        lines = []
        for item in await self._earlier(message):
            text = re.sub(r"<@[A-Z0-9]+>", "", str(item.get("text", ""))).strip()
            if text:
                lines.append(f"<{item.get('user', 'someone')}>: {text[:500]}")
        if not lines:
            return ""
        return "Earlier in this thread:\n" + "\n".join(lines[-THREAD_CONTEXT_MESSAGES:])

    # Replies out ---------------------------------------------------------------------------------------

    async def already_delivered(self, message: IncomingMessage, reply: Reply, key: str) -> bool:
        """Whether the reply's last chunk is in the conversation, found by the key `deliver` puts in each chunk's
        metadata: a process that died between posting and recording leaves it there. A reply through a
        slash command's response URL cannot be looked up: it counts as not delivered."""
        if message.reply_url:
            return False
        last = last_key(key, reply)
        if message.thread:
            found = await self.client.conversations_replies(
                channel=message.channel, ts=message.thread, include_all_metadata=True, limit=200
            )
        else:
            found = await self.client.conversations_history(
                channel=message.channel, oldest=message.message_id or "0", include_all_metadata=True, limit=200
            )
        for item in found.get("messages") or []:
            carried = item.get("metadata") if isinstance(item, dict) else None
            payload = carried.get("event_payload") if isinstance(carried, dict) else None
            if isinstance(payload, dict) and payload.get("key") == last:
                return True
        return False

    async def deliver(self, message: IncomingMessage, reply: Reply, key: str) -> None:
        chunks = split_message(to_mrkdwn(reply.text)) or ["(no answer)"]
        # Files first: once the text is there, so are they, which is what `already_delivered` relies on.
        await self._post_files(message, reply)
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
                        metadata=metadata(f"{key}:{i}"),
                    )
        except SlackApiError as exc:
            error = str(exc.response.get("error", "unknown"))
            raise DeliveryError(f"Slack refused the reply: {error}", transient=error not in PERMANENT_ERRORS) from None
        except UNREACHABLE as exc:  # slack-sdk's errors, and aiohttp's and timeouts its retries passed on
            raise DeliveryError(f"Slack could not be reached: {type(exc).__name__}") from None
        self._progress_done(message)

    def stopped(self, where: str) -> str | None:
        """A person stopped the stream at `where` ("CHANNEL TS"): see `SlackStreams.stopped`."""
        return self.streams.stopped(where)

    async def open_stream(
        self, message: IncomingMessage, key: str, *, resume: str = "", moved: StreamMoved | None = None
    ) -> SlackStream | None:
        """Stream the reply to `message` (adapters/slack_stream.py) when the settings allow; the stream is the
        sign of progress from then on, so the reaction is not put (or is taken off)."""
        if not self.config.stream:
            return None
        stream = await self.streams.open(message, key, resume=resume, moved=moved)
        if stream is not None:
            self._progress_done(message)
        return stream

    def _progress_done(self, message: IncomingMessage) -> None:
        """The reply landed (or streams): the progress reaction is not put, or is taken off."""
        progress = self._progress.pop((message.channel, message.message_id), None)
        if progress is not None:
            if not progress.done():
                progress.cancel()  # answered before the reaction was due: nothing to show or clear
            elif not progress.cancelled() and progress.result():
                self._spawn(self._react(message, add=False))
                if self.config.assistant_status and message.thread:
                    self._spawn(self._status(message, ""))

    async def _post_files(self, message: IncomingMessage, reply: Reply) -> None:
        """The reply's files, uploaded into its thread (files:write). A transient failure is retried with the
        reply; a refusal (no files:write, say) is said in the thread instead, and the text follows."""
        for out in reply.files:
            try:
                await self.client.files_upload_v2(
                    channel=message.channel,
                    thread_ts=message.thread or None,
                    content=out.content,
                    filename=out.name,
                    title=out.name,
                )
            except SlackApiError as exc:
                error = str(exc.response.get("error", "unknown"))
                if error in ("ratelimited", "internal_error", "fatal_error", "service_unavailable"):
                    raise DeliveryError(f"Slack did not take {out.name}: {error}") from None
                log.warning("Slack refused the file %s of a reply: %s", out.name, error)
                note = f"I couldn't attach {out.name}: Slack refused it ({error})."
                await self._quietly(
                    self.client.chat_postMessage(channel=message.channel, thread_ts=message.thread or None, text=note)
                )
            except UNREACHABLE as exc:
                raise DeliveryError(f"Slack could not be reached: {type(exc).__name__}") from None

    async def post(self, channel: str, text: str) -> None:
        """Post to a channel (its memory key, `slack:T/C`, or a channel id): for scheduled reports."""
        _, channel_id = channel_of(channel) if channel.startswith("slack:") else ("", channel)
        for chunk in split_message(to_mrkdwn(text)) or ["(empty)"]:
            await self.client.chat_postMessage(channel=channel_id, text=chunk)

    async def request_approval(self, request: ApprovalRequest) -> PromptLocation:
        """Post the prompt (adapters/slack_prompt.py) in the conversation's thread. When a value is folded, the
        complete arguments are posted first as a JSON file (any size, never rendered as mrkdwn, and still there
        as the record of what was decided once the buttons are gone)."""
        _, channel = channel_of(request.channel)
        shown = show_call(request.args, max_arguments=MAX_LISTED_ARGUMENTS)
        where = FILE_ABOVE if not shown.folded or await self._attach_arguments(request, channel) else NO_FILE
        value = json.dumps({"id": request.id, "hash": request.args_hash})
        buttons = [
            _button("Approve", "parley_approve", value, "primary"),
            _button("Deny", "parley_deny", value, "danger"),
            _button("Always in this channel", "parley_always", value, None),
        ]
        posted = await self.client.chat_postMessage(
            channel=channel,
            thread_ts=request.thread or None,
            text=f"Approval needed to run {request.tool}",
            blocks=prompt_blocks(request, shown, where, buttons),
        )
        return PromptLocation(self.name, str(posted["channel"]), str(posted["ts"]))

    async def _attach_arguments(self, request: ApprovalRequest, channel: str) -> bool:
        """The complete arguments as a file where the prompt goes; False (logged) when Slack refused it, for
        instance to an app installed without the files:write scope."""
        try:
            await self.client.files_upload_v2(
                channel=channel,
                thread_ts=request.thread or None,
                content=full_arguments(request),
                filename=arguments_filename(request),
                title=f"Arguments of {request.tool}, for the approval request below",
            )
        except SlackClientError as exc:
            log.warning("approval request %s: the full arguments could not be attached: %s", request.id, exc)
            return False
        return True

    async def approval_settled(self, request: ApprovalRequest) -> None:
        """Replace the prompt, wherever and by whichever process it was posted, with its outcome: no buttons."""
        prompt = request.prompt
        if prompt is None or prompt.platform != self.name:
            return
        tool = literal(shown_name(request.tool))
        text = f"`{tool}` asked by <@{request.requester}>: {OUTCOME_EMOJI[request.state]} {request.outcome}."
        try:
            await self.client.chat_update(channel=prompt.channel, ts=prompt.message, text=text, blocks=[section(text)])
        except SlackApiError as exc:
            if exc.response.get("error") not in PROMPT_GONE:
                raise
            log.info("approval request %s: its prompt is gone (%s)", request.id, exc.response.get("error"))

    # Helpers ---------------------------------------------------------------------------------------------

    def _connected(self) -> Handlers:
        if self._handlers is None:
            raise RuntimeError("the Slack adapter is not connected to a dispatcher")
        return self._handlers

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


class _CheckedSocketMode(AsyncSocketModeHandler):
    """Socket Mode with the same edge as HTTP: each payload is cleaned and shape-checked before Bolt sees it
    (the websocket needs no signature); a bad one is acknowledged, so Slack does not resend it, and dropped."""

    def __init__(self, adapter: SlackAdapter, app_token: str) -> None:
        super().__init__(adapter.app, app_token)
        self.adapter = adapter

    async def handle(self, client: SocketModeClient, req: SocketModeRequest) -> None:  # type: ignore[override]
        started = time.time()
        try:
            body = canonical(req.payload)
        except Ignored:
            await client.send_socket_mode_response(SocketModeResponse(envelope_id=req.envelope_id))
            return
        except BadRequest as bad:
            self.adapter.quiet.warning(f"socket:{req.type}", "dropped a Socket Mode %s payload: %s", req.type, bad)
            await client.send_socket_mode_response(SocketModeResponse(envelope_id=req.envelope_id))
            return
        request = AsyncBoltRequest(mode="socket_mode", body=body, headers=build_headers(req))
        response = await self.app.async_dispatch(request)
        await send_async_response(client, req, response, started)


def attachments_of(files: Sequence[SlackFile], origin: str) -> tuple[Attachment, ...]:
    """Slack's file objects as attachments, not yet bound: a file without a private URL (not shared in full,
    deleted) keeps an empty one, and its fetcher says so."""
    return tuple(
        Attachment(
            name=f.name or f.title or f.id or "file",
            media_type=f.mimetype or "application/octet-stream",
            size=f.size,
            url="" if f.mode in GONE_MODES else (f.url_private_download or f.url_private or ""),
            origin=origin,
        )
        for f in files
    )


def _rendered(reply: CommandReply) -> dict[str, Any]:
    """A command's reply as the acknowledgement's fields: mrkdwn text, and a confirmation as a button below it;
    seen only by the caller."""
    text = to_mrkdwn(reply.text)
    fields: dict[str, Any] = {"text": text, "response_type": "ephemeral"}
    if reply.confirm is not None:
        value = json.dumps({"action": reply.confirm.action, "value": reply.confirm.value})
        fields["text"] = reply.confirm.question
        fields["blocks"] = [
            section(text),
            {"type": "actions", "elements": [_button(reply.confirm.label, CONFIRM_ACTION, value, "danger")]},
        ]
    return fields


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
