"""A fake Slack on 127.0.0.1 that the real slack-sdk and slack-bolt talk to: Web API, Socket Mode, response URLs.

It runs in its own thread and event loop; use it as a context manager::

    with FakeSlack() as slack:
        client = AsyncWebClient(token=slack.bot_token, base_url=slack.api_url)
        app = AsyncApp(client=client, signing_secret="s")
        handler = AsyncSocketModeHandler(app, app_token=slack.app_token)
        await handler.connect_async()          # apps.connections.open, then the websocket; "hello" arrives
        envelope_id = slack.send_events_api({"type": "app_mention", ...})
        await slack.wait_for_ack(envelope_id)
        await slack.wait_for_call("chat.postMessage")
        await handler.close_async()

Web API (`{url}/api/<method>`, the `api_url` is the client's `base_url`). Bodies may be JSON or form-encoded and
parameters may also come in the query string: slack-sdk sends `chat.postMessage`, `chat.update`,
`chat.postEphemeral` and `assistant.threads.setStatus` as JSON, `conversations.replies` and `users.info` as GET
with a query string, and `auth.test`, `reactions.*`, `chat.delete` and `apps.connections.open` as a POST with the
parameters in the query string and an empty body. The token comes from `Authorization: Bearer ...` (or a
`token` parameter). No token: `not_authed`; an unknown token: `invalid_auth`; the app token (`xapp-`) on a bot
method or the bot token on `apps.connections.open`: `not_allowed_token_type`. All of them are HTTP 200 with
`{"ok": false, "error": ...}`, as Slack answers. Unknown methods: `unknown_method`.

Faults, per method, consumed one per call (the call is still recorded)::

    slack.fail_next("chat.postMessage", 429, 500, "channel_not_found", Fault.slow(2.0))

An int 429 is `Fault.rate_limited()` (HTTP 429, `Retry-After: <FakeSlack.retry_after>`, error `ratelimited`);
another int is that HTTP status with `{"ok": false, "error": "fatal_error"}`; a string is HTTP 200 with that
error. slack-sdk's `AsyncRateLimitErrorRetryHandler` sleeps `int(Retry-After) + random()` seconds, so a 0 keeps
tests fast; its `AsyncServerErrorRetryHandler` retries only 500 and 503.

Streams (`chat.startStream` / `chat.appendStream` / `chat.stopStream`, sent as JSON): a stream is a message whose
`stream` holds its state, chunks and markdown text. In a channel (an id not starting with `D`) `chat.startStream`
needs `recipient_user_id` and `recipient_team_id` (`missing_recipient_user_id`, `missing_recipient_team_id`
otherwise); chunks must be `markdown_text` (12,000 characters at most per chunk), `task_update` (with id, title
and status), `plan_update` or `blocks` (`invalid_chunks`); a stream takes `max_stream_text` characters of
markdown in all (`msg_too_long`). Appends and the stop are refused with `message_not_in_streaming_state` once the
stream stopped, expired (`stream_ttl_s` after its start, or at once with `expire_stream`) or was stopped by the
person (`stop_stream_by_user`, after which a test sends the `message_stream_stopped` event itself).
`chat.stopStream` keeps the `metadata` it is given, as `chat.update` does; `streams(channel)` lists the streamed
messages with everything they received.

Files (what `files_upload_v2` does): `files.getUploadURLExternal` hands out `{url}/upload/<file id>`, the client
POSTs the bytes there, and `files.completeUploadExternal` shares the uploaded files into `channel_id` (and
`thread_ts`) as a message with `files`; `shared_files()` lists them with their content.

Files people share: `add_file(name, content, mimetype)` stores a file and returns Slack's file object for an
event's `files` (`url_private` and `url_private_download` point here). `GET /files-pri/<id>/<name>` serves it
only with `Authorization: Bearer <bot token>` (403 otherwise: real Slack redirects to its login page, which a
client must not follow either); `redirect_to=URL` answers 302 to that URL instead. `downloads` records each
download as (file id, whether the token was right).

Socket Mode: `apps.connections.open` hands out `ws://127.0.0.1:<port>/link/?ticket=...`; a client that connects
gets `{"type": "hello", ...}` first. `send_events_api`, `send_slash_command` and `send_interactive` push
envelopes (to the newest connection) and return the envelope id; the client's acks land in `acks`.
`disconnect_all()` closes every socket (slack-sdk reconnects by itself: a new `apps.connections.open`, a new
socket), `send_disconnect()` sends Slack's `{"type": "disconnect"}` message instead. The `send_*` calls block the
calling thread briefly, the `wait_*` helpers are coroutines: after a disconnect, `await
slack.wait_for_connections(n)` before sending again, since the client reconnects on the test's own loop.

Records (appended on the server thread under a lock; the helpers return snapshots): `calls` (every Web API
request as a `Call`, stamped with when it arrived), `acks`, `received` (other frames the clients sent), `sent`
(envelopes pushed), `responses[name]` (bodies POSTed to `response_url(name)`), `connections` (websockets accepted
so far).

Helpers for driving a Slack HTTP endpoint (`POST /slack/events`) without a network: `sign`, `slack_headers`,
`event_callback_body`, `slash_command_body`, `block_actions_body`, `url_verification_body`, `ssl_check_body`.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple
from urllib.parse import urlencode

from aiohttp import WSCloseCode, WSMsgType, web

from tests.fakes.background import BackgroundServer

VERIFICATION_TOKEN = "fake-verification-token"
FIRST_TS = 1_700_000_000_000_000  # microseconds; ts values count up from "1700000000.000100"
TS_STEP = 100

JSON = "application/json"
FORM = "application/x-www-form-urlencoded"


# --------------------------------------------------------------------------------------------------------------
# Records and faults


class Call(NamedTuple):
    """One Web API request: the method, its parameters (token removed), the request headers, and what was answered."""

    method: str
    params: dict[str, Any]
    headers: dict[str, str]
    status: int = 200
    response: dict[str, Any] | None = None
    # When the request arrived (time.time()): benchmarks measure how soon after an event something showed.
    at: float = 0.0

    @property
    def ok(self) -> bool:
        return self.status == 200 and bool(self.response and self.response.get("ok"))


class Ack(NamedTuple):
    """A Socket Mode acknowledgement the client sent back: `{"envelope_id": ..., "payload": ...}`."""

    envelope_id: str
    payload: dict[str, Any] | None
    connection: int


@dataclass(frozen=True)
class Fault:
    """How one Web API call goes wrong: wait `delay_s`, then answer `status` with `{"ok": false, "error": error}`
    (and a `Retry-After` header when `retry_after` is set); `answer=True` answers normally after the wait."""

    status: int = 200
    error: str = "fatal_error"
    retry_after: int | None = None
    delay_s: float = 0.0
    answer: bool = False

    @classmethod
    def rate_limited(cls, retry_after: int = 0) -> Fault:
        """HTTP 429, `Retry-After` in whole seconds (slack-sdk parses it with `int()`), error `ratelimited`."""
        return cls(status=429, error="ratelimited", retry_after=int(retry_after))

    @classmethod
    def server_error(cls, status: int = 500, error: str = "fatal_error") -> Fault:
        return cls(status=status, error=error)

    @classmethod
    def slack_error(cls, error: str) -> Fault:
        """HTTP 200 with `{"ok": false, "error": error}`: how Slack reports almost everything."""
        return cls(status=200, error=error)

    @classmethod
    def slow(cls, delay_s: float) -> Fault:
        """Answer normally, but only after `delay_s` (a client timeout shorter than it fires)."""
        return cls(delay_s=delay_s, answer=True)


FaultLike = int | str | Fault


# --------------------------------------------------------------------------------------------------------------
# Request signing and the bodies Slack POSTs to an HTTP endpoint


def sign(secret: str, body: bytes | str, timestamp: int | None = None) -> dict[str, str]:
    """Slack's request signature headers for `body`: `v0=` + HMAC-SHA256(secret, `v0:{timestamp}:{body}`)."""
    raw = body.encode() if isinstance(body, str) else body
    ts = int(time.time()) if timestamp is None else int(timestamp)
    digest = hmac.new(secret.encode(), b"v0:%d:" % ts + raw, hashlib.sha256).hexdigest()
    return {"X-Slack-Request-Timestamp": str(ts), "X-Slack-Signature": f"v0={digest}"}


def slack_headers(
    secret: str,
    body: bytes | str,
    *,
    timestamp: int | None = None,
    retry_num: int | None = None,
    retry_reason: str = "http_timeout",
) -> dict[str, str]:
    """Everything Slack sends with `body`: the content type (JSON or form, from the body), the signature and,
    for a redelivery, `X-Slack-Retry-Num` and `X-Slack-Retry-Reason`."""
    raw = body.encode() if isinstance(body, str) else body
    headers = {"Content-Type": JSON if raw.lstrip().startswith(b"{") else FORM, "User-Agent": "Slackbot 1.0"}
    headers.update(sign(secret, raw, timestamp))
    if retry_num is not None:
        headers["X-Slack-Retry-Num"] = str(retry_num)
        headers["X-Slack-Retry-Reason"] = retry_reason
    return headers


def event_callback(
    event: Mapping[str, Any],
    *,
    event_id: str,
    team_id: str = "T1",
    api_app_id: str = "A1",
    bot_user_id: str = "UBOT",
    event_time: int | None = None,
) -> dict[str, Any]:
    """The Events API `event_callback` envelope (the HTTP body, and the Socket Mode `payload`)."""
    if event_time is None:
        stamp = event.get("event_ts") or event.get("ts")
        event_time = int(float(stamp)) if stamp else int(time.time())
    return {
        "token": VERIFICATION_TOKEN,
        "team_id": team_id,
        "api_app_id": api_app_id,
        "event": dict(event),
        "type": "event_callback",
        "event_id": event_id,
        "event_time": event_time,
        "authorizations": [
            {
                "enterprise_id": None,
                "team_id": team_id,
                "user_id": bot_user_id,
                "is_bot": True,
                "is_enterprise_install": False,
            }
        ],
        "is_ext_shared_channel": False,
        "event_context": f"4-{event.get('type', 'event')}-{team_id}-{event.get('channel', '')}",
    }


def event_callback_body(
    event: Mapping[str, Any], *, event_id: str, team_id: str = "T1", api_app_id: str = "A1"
) -> bytes:
    """The JSON body Slack POSTs for an event."""
    return json.dumps(event_callback(event, event_id=event_id, team_id=team_id, api_app_id=api_app_id)).encode()


def slash_command_payload(
    command: str,
    text: str,
    *,
    user_id: str,
    channel_id: str,
    response_url: str,
    trigger_id: str = "t",
    team_id: str = "T1",
    api_app_id: str = "A1",
    channel_name: str = "general",
    user_name: str = "someone",
) -> dict[str, str]:
    """The fields of a slash command (form fields over HTTP; the `payload` object in Socket Mode)."""
    return {
        "token": VERIFICATION_TOKEN,
        "team_id": team_id,
        "team_domain": "fake",
        "channel_id": channel_id,
        "channel_name": channel_name,
        "user_id": user_id,
        "user_name": user_name,
        "command": command,
        "text": text,
        "api_app_id": api_app_id,
        "is_enterprise_install": "false",
        "response_url": response_url,
        "trigger_id": trigger_id,
    }


def slash_command_body(
    command: str,
    text: str,
    *,
    user_id: str,
    channel_id: str,
    response_url: str,
    trigger_id: str = "t",
    team_id: str = "T1",
) -> bytes:
    """The form-encoded body Slack POSTs for a slash command.

    Beware: Bolt's body parser looks for the substring "payload" anywhere in a form body and then reads only the
    `payload` field, so a command whose text contains "payload" parses to an empty body."""
    fields = slash_command_payload(
        command,
        text,
        user_id=user_id,
        channel_id=channel_id,
        response_url=response_url,
        trigger_id=trigger_id,
        team_id=team_id,
    )
    return urlencode(fields).encode()


def block_actions_payload(
    actions: Iterable[Mapping[str, Any]],
    *,
    user_id: str,
    channel_id: str,
    message_ts: str,
    response_url: str,
    team_id: str = "T1",
    api_app_id: str = "A1",
    trigger_id: str = "t",
    message: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """A `block_actions` interactivity payload for a button press (or other actions) on a message.

    Each action needs at least `action_id`; `type` ("button"), `block_id`, `action_ts` and `value` get defaults."""
    now = f"{time.time():.6f}"
    filled = []
    for action in actions:
        item = {"type": "button", "block_id": "actions", "action_ts": now, "value": "", **action}
        if item["type"] == "button" and "text" not in item:
            item["text"] = {"type": "plain_text", "text": str(item["action_id"]), "emoji": True}
        filled.append(item)
    return {
        "type": "block_actions",
        "user": {"id": user_id, "username": user_id.lower(), "name": user_id.lower(), "team_id": team_id},
        "api_app_id": api_app_id,
        "token": VERIFICATION_TOKEN,
        "container": {"type": "message", "message_ts": message_ts, "channel_id": channel_id, "is_ephemeral": False},
        "trigger_id": trigger_id,
        "team": {"id": team_id, "domain": "fake"},
        "enterprise": None,
        "is_enterprise_install": False,
        "channel": {"id": channel_id, "name": "general"},
        "message": dict(message) if message is not None else {"type": "message", "ts": message_ts, "text": ""},
        "state": {"values": {}},
        "response_url": response_url,
        "actions": filled,
    }


def block_actions_body(
    actions: Iterable[Mapping[str, Any]],
    *,
    user_id: str,
    channel_id: str,
    message_ts: str,
    response_url: str,
    team_id: str = "T1",
) -> bytes:
    """The form-encoded body (`payload=<json>`) Slack POSTs for interactivity."""
    payload = block_actions_payload(
        actions,
        user_id=user_id,
        channel_id=channel_id,
        message_ts=message_ts,
        response_url=response_url,
        team_id=team_id,
    )
    return urlencode({"payload": json.dumps(payload)}).encode()


def url_verification_body(challenge: str) -> bytes:
    """The JSON body Slack POSTs when the request URL is configured; the app must echo `challenge`."""
    return json.dumps({"token": VERIFICATION_TOKEN, "challenge": challenge, "type": "url_verification"}).encode()


def ssl_check_body() -> bytes:
    """The form body of Slack's periodic certificate check of a slash command URL."""
    return urlencode({"ssl_check": "1", "token": VERIFICATION_TOKEN}).encode()


# --------------------------------------------------------------------------------------------------------------
# The fake


def _ts_key(ts: str) -> tuple[int, int]:
    seconds, _, fraction = str(ts).partition(".")
    return int(seconds), int(fraction.ljust(6, "0") or 0)


def _as_fault(fault: FaultLike, retry_after: int) -> Fault:
    if isinstance(fault, Fault):
        return fault
    if isinstance(fault, str):
        return Fault.slack_error(fault)
    if fault == 429:
        return Fault.rate_limited(retry_after)
    return Fault.server_error(int(fault))


_APP_TOKEN_METHODS = frozenset({"apps.connections.open"})


class FakeSlack(BackgroundServer):
    """Slack's Web API, Socket Mode websocket and response URLs on 127.0.0.1, in its own thread and event loop."""

    thread_name = "fake-slack"

    def __init__(
        self,
        *,
        bot_token: str = "xoxb-test",
        app_token: str = "xapp-test",
        team_id: str = "T1",
        team: str = "Fake Team",
        team_domain: str = "fake",
        user_id: str = "UBOT",
        user: str = "parley",
        bot_id: str = "BBOT",
        api_app_id: str = "A1",
        retry_after: int = 0,
        max_text: int = 40_000,
        max_blocks: int = 50,
        socket_wait_s: float = 2.0,
        stream_ttl_s: float = 300.0,
        max_stream_text: int = 12_000,
    ) -> None:
        super().__init__()
        self.bot_token = bot_token
        self.app_token = app_token
        self.team_id = team_id
        self.team = team
        self.team_domain = team_domain
        self.user_id = user_id
        self.user = user
        self.bot_id = bot_id
        self.api_app_id = api_app_id
        # Retry-After (seconds) of a fault given as the int 429.
        self.retry_after = retry_after
        self.max_text = max_text
        self.max_blocks = max_blocks
        # How long a send_* waits for a live Socket Mode connection before it gives up.
        self.socket_wait_s = socket_wait_s
        # A stream stops taking appends this long after it started (Slack's: about five minutes), and takes at
        # most this much markdown text in all (Slack documents 12,000 characters per call).
        self.stream_ttl_s = stream_ttl_s
        self.max_stream_text = max_stream_text

        self.calls: list[Call] = []
        self.acks: list[Ack] = []
        self.received: list[Any] = []
        self.sent: list[dict[str, Any]] = []
        self.responses: defaultdict[str, list[Any]] = defaultdict(list)
        self.connections = 0

        self._lock = threading.Lock()
        self._faults: defaultdict[str, list[Fault]] = defaultdict(list)
        self._messages: defaultdict[str, list[dict[str, Any]]] = defaultdict(list)
        self._users: dict[str, dict[str, Any]] = {}
        # (channel, ts) -> Slack's reactions list; kept apart so reacting to an unseeded event message works.
        self._reactions: defaultdict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
        # file id -> {"filename", "length", "content" (bytes once uploaded)}; shared files in order.
        self._uploads: dict[str, dict[str, Any]] = {}
        self._shared: list[dict[str, Any]] = []
        # file id -> (content, mimetype, redirect URL or None): files people shared, served at /files-pri/.
        self._files: dict[str, tuple[bytes, str, str | None]] = {}
        self.downloads: list[tuple[str, bool]] = []
        self._clock = FIRST_TS
        self._event_seq = 0
        self._tickets: set[str] = set()
        self._sockets: list[tuple[int, web.WebSocketResponse]] = []
        self._closing: set[asyncio.Task[Any]] = set()

    # -- lifecycle ---------------------------------------------------------------------------------------------

    @property
    def url(self) -> str:
        return self.base_url

    @property
    def api_url(self) -> str:
        """The Web API base URL: pass it as `base_url` to `AsyncWebClient` (or as `PARLEY_SLACK__API_URL`)."""
        return f"{self.url}/api/"

    @property
    def socket_url(self) -> str:
        """The websocket endpoint (without a ticket); clients get a full URL from `apps.connections.open`."""
        return f"ws://127.0.0.1:{self.port}/link/"

    def response_url(self, name: str) -> str:
        """A response URL whose POSTed bodies are kept in `responses[name]`."""
        return f"{self.url}/response/{name}"

    def _app(self) -> web.Application:
        app = web.Application()
        app.router.add_route("*", "/api/{method}", self._api)
        app.router.add_get("/link/", self._socket)
        app.router.add_post("/response/{name}", self._response)
        app.router.add_post("/upload/{file_id}", self._upload)
        app.router.add_get("/files-pri/{file_id}/{name}", self._download)
        return app

    async def _before_stop(self) -> None:
        with self._lock:
            sockets = [ws for _, ws in self._sockets]
            self._sockets.clear()
        closes = [asyncio.ensure_future(ws.close(code=WSCloseCode.GOING_AWAY)) for ws in sockets]
        pending = closes + list(self._closing)
        if pending:
            # A client whose loop is blocked cannot answer the close handshake; don't wait for it long.
            _, late = await asyncio.wait(pending, timeout=0.5)
            for task in late:
                task.cancel()

    # -- seeding -----------------------------------------------------------------------------------------------

    def add_message(
        self,
        channel: str,
        text: str = "",
        *,
        user: str = "U1",
        ts: str | None = None,
        thread_ts: str | None = None,
        **fields: Any,
    ) -> str:
        """Put a message into `channel` (a thread reply with `thread_ts`) as if someone had posted it; its ts."""
        with self._lock:
            ts = ts or self._next_ts()
            message = {"type": "message", "user": user, "text": text, "ts": ts, **fields}
            if thread_ts is not None:
                message["thread_ts"] = thread_ts
            self._messages[channel].append(message)
        return ts

    def seed_thread(self, channel: str, thread_ts: str, messages: Iterable[Mapping[str, Any]]) -> None:
        """Seed a thread: each message gets `type`, a `ts` (when missing) and `thread_ts`; the one whose ts equals
        `thread_ts` is the parent. `conversations.replies` returns them, with replies posted later, in ts order."""
        with self._lock:
            for given in messages:
                message = {"type": "message", "user": "U1", "text": "", **given}
                message.setdefault("ts", self._next_ts())
                message["thread_ts"] = thread_ts
                self._messages[channel].append(message)

    def add_file(
        self,
        name: str,
        content: bytes,
        mimetype: str = "text/plain",
        *,
        redirect_to: str | None = None,
        size: int | None = None,
        **fields: Any,
    ) -> dict[str, Any]:
        """Store a shared file; Slack's file object for an event's `files` (`size` may lie, as a test wants)."""
        file_id = f"F{uuid.uuid4().hex[:10].upper()}"
        with self._lock:
            self._files[file_id] = (content, mimetype, redirect_to)
        url = f"{self.url}/files-pri/{file_id}/{name}"
        return {
            "id": file_id,
            "created": int(time.time()),
            "name": name,
            "title": name,
            "mimetype": mimetype,
            "filetype": name.rpartition(".")[2],
            "user": "U1",
            "size": len(content) if size is None else size,
            "mode": "hosted",
            "is_external": False,
            "url_private": url,
            "url_private_download": f"{url}?download=1",
            **fields,
        }

    def add_user(self, user_id: str, name: str | None = None, **fields: Any) -> None:
        """Make `users.info` answer for `user_id` with these fields (unknown users get a generated profile)."""
        with self._lock:
            self._users[user_id] = {**self._user_record(user_id, name), **fields}

    def fail_next(self, method: str, *faults: FaultLike) -> None:
        """The next calls of `method` fail, one fault each, in order (see `Fault`)."""
        with self._lock:
            self._faults[method].extend(_as_fault(fault, self.retry_after) for fault in faults)

    def stop_stream_by_user(self, channel: str, ts: str) -> None:
        """The person pressed Stop on a streamed message: Slack ends the stream (appends and stops are refused
        with `message_not_in_streaming_state` from now on); the app hears of it by the event the test sends
        (`stream_stopped_event`)."""
        with self._lock:
            message = self._find(channel, ts)
            if message is None or "stream" not in message:
                raise KeyError(f"no streamed message {ts} in {channel}")
            message["stream"]["state"] = "stopped_by_user"

    def expire_stream(self, channel: str, ts: str) -> None:
        """The stream of a message expires now, as Slack's do a few minutes after they start."""
        with self._lock:
            message = self._find(channel, ts)
            if message is None or "stream" not in message:
                raise KeyError(f"no streamed message {ts} in {channel}")
            message["stream"]["started"] = time.monotonic() - self.stream_ttl_s - 1

    def streams(self, channel: str) -> list[dict[str, Any]]:
        """The streamed messages of `channel` in ts order: ts, thread_ts, `state` (streaming, stopped,
        stopped_by_user, expired), `chunks` (every chunk appended, in order, markdown text as markdown_text
        chunks), `text` (the markdown streamed), the final `metadata`, and the message `text` now shown."""
        with self._lock:
            found = []
            for message in self._thread_messages(channel, None):
                stream = message.get("stream")
                if stream is None:
                    continue
                state = stream["state"]
                if state == "streaming" and self._expired(stream):
                    state = "expired"
                found.append(
                    {
                        "ts": message["ts"],
                        "thread_ts": message.get("thread_ts"),
                        "state": state,
                        "chunks": json.loads(json.dumps(stream["chunks"])),
                        "text": stream["text"],
                        "metadata": json.loads(json.dumps(message.get("metadata"))),
                        "shown": message.get("text", ""),
                        "recipient": stream["recipient"],
                    }
                )
            return found

    # -- reading records ---------------------------------------------------------------------------------------

    def calls_to(self, method: str) -> list[Call]:
        with self._lock:
            return [call for call in self.calls if call.method == method]

    def posted(self) -> list[dict[str, Any]]:
        """The parameters of each `chat.postMessage` call that posted a message, in order."""
        return [call.params for call in self.calls_to("chat.postMessage") if call.ok]

    def shared_files(self) -> list[dict[str, Any]]:
        """Files shared by `files.completeUploadExternal`, in order: id, name, title, channel, thread_ts, ts and
        content (decoded as UTF-8)."""
        with self._lock:
            return [dict(f) for f in self._shared]

    def messages(self, channel: str, thread_ts: str | None = None) -> list[dict[str, Any]]:
        """The messages in `channel` (only those of one thread with `thread_ts`), in ts order."""
        with self._lock:
            return [self._view(channel, m) for m in self._thread_messages(channel, thread_ts)]

    def reactions(self, channel: str, ts: str) -> list[str]:
        """The names of the reactions on a message (the bot's own, as added through the Web API)."""
        with self._lock:
            return [r["name"] for r in self._reactions.get((channel, ts), [])]

    def ack_for(self, envelope_id: str) -> Ack | None:
        with self._lock:
            return next((ack for ack in self.acks if ack.envelope_id == envelope_id), None)

    @property
    def open_connections(self) -> int:
        with self._lock:
            return len(self._sockets)

    async def wait_for(self, predicate: Callable[[], Any], timeout_s: float = 5.0, what: str = "condition") -> Any:
        """Poll `predicate` (called on the caller's thread) until it returns something truthy; return that."""
        deadline = time.monotonic() + timeout_s
        while True:
            value = predicate()
            if value:
                return value
            if time.monotonic() >= deadline:
                raise TimeoutError(f"FakeSlack: no {what} within {timeout_s} s")
            await asyncio.sleep(0.005)

    async def wait_for_ack(self, envelope_id: str, timeout_s: float = 5.0) -> Ack:
        ack: Ack = await self.wait_for(lambda: self.ack_for(envelope_id), timeout_s, f"ack of {envelope_id}")
        return ack

    async def wait_for_call(self, method: str, count: int = 1, timeout_s: float = 5.0) -> list[Call]:
        """Wait until `method` was called at least `count` times; all its calls so far."""
        calls: list[Call] = await self.wait_for(
            lambda: found if len(found := self.calls_to(method)) >= count else None, timeout_s, f"{count} x {method}"
        )
        return calls

    async def wait_for_connections(self, count: int, timeout_s: float = 5.0) -> None:
        """Wait until `count` websockets were accepted in total and one is open."""
        await self.wait_for(
            lambda: self.connections >= count and self.open_connections > 0, timeout_s, f"{count} connections"
        )

    # -- Socket Mode: pushing envelopes ------------------------------------------------------------------------

    def send_events_api(
        self,
        event: Mapping[str, Any],
        *,
        event_id: str | None = None,
        retry_attempt: int = 0,
        retry_reason: str = "",
        event_time: int | None = None,
    ) -> str:
        """Push an `events_api` envelope carrying an `event_callback` for `event`; its envelope id."""
        if event_id is None:
            with self._lock:
                self._event_seq += 1
                event_id = f"Ev{self._event_seq:010d}"
        payload = event_callback(
            event,
            event_id=event_id,
            team_id=self.team_id,
            api_app_id=self.api_app_id,
            bot_user_id=self.user_id,
            event_time=event_time,
        )
        extra = {"retry_attempt": retry_attempt, "retry_reason": retry_reason}
        return self._push("events_api", payload, accepts_response_payload=False, **extra)

    def send_slash_command(self, payload: Mapping[str, Any]) -> str:
        """Push a `slash_commands` envelope (payload: the command's fields, see `slash_command_payload`)."""
        return self._push("slash_commands", dict(payload), accepts_response_payload=True)

    def send_interactive(self, payload: Mapping[str, Any]) -> str:
        """Push an `interactive` envelope (payload: e.g. `block_actions_payload(...)`)."""
        accepts = payload.get("type") in {"view_submission", "block_suggestion"}
        return self._push("interactive", dict(payload), accepts_response_payload=accepts)

    def send_disconnect(self, reason: str = "refresh_requested") -> None:
        """Send Slack's `disconnect` message; slack-sdk then calls `apps.connections.open` again, closes the old
        socket and connects the new one."""
        message = {"type": "disconnect", "reason": reason, "debug_info": {"host": "applink-fake"}}
        self._run(self._send(message))

    def disconnect_all(self) -> int:
        """Close every open websocket (without waiting for the clients' close replies); how many were open."""
        count: int = self._run(self._disconnect_all())
        return count

    def _push(self, type_: str, payload: dict[str, Any], *, accepts_response_payload: bool, **extra: Any) -> str:
        envelope_id = str(uuid.uuid4())
        envelope = {
            "envelope_id": envelope_id,
            "payload": payload,
            "type": type_,
            "accepts_response_payload": accepts_response_payload,
            **extra,
        }
        self._run(self._send(envelope))
        return envelope_id

    async def _send(self, message: dict[str, Any]) -> None:
        deadline = time.monotonic() + self.socket_wait_s
        while True:
            with self._lock:
                live = [ws for _, ws in self._sockets if not ws.closed]
            if live:
                break
            if time.monotonic() >= deadline:
                raise RuntimeError(
                    "FakeSlack: no Socket Mode client is connected"
                    " (after a disconnect, await wait_for_connections(n) before sending)"
                )
            await asyncio.sleep(0.005)
        await live[-1].send_str(json.dumps(message))
        with self._lock:
            self.sent.append(message)

    async def _disconnect_all(self) -> int:
        with self._lock:
            sockets = [ws for _, ws in self._sockets]
            self._sockets.clear()
        for ws in sockets:
            task = asyncio.ensure_future(ws.close(code=WSCloseCode.GOING_AWAY, message=b"fake disconnect"))
            self._closing.add(task)
            task.add_done_callback(self._closing.discard)
        # Let each close() write its close frame; the handshake finishes once the client (on its loop) answers.
        await asyncio.sleep(0)
        return len(sockets)

    # -- Socket Mode: the websocket ----------------------------------------------------------------------------

    async def _socket(self, request: web.Request) -> web.StreamResponse:
        ticket = request.query.get("ticket", "")
        with self._lock:
            known = ticket in self._tickets
        if not known:
            return web.json_response({"ok": False, "error": "invalid_ticket"}, status=401)
        # Counted before the handshake answer goes out, so a client that has connected always sees itself counted.
        with self._lock:
            self.connections += 1
            number = self.connections
        # `timeout` bounds the wait for the client's close reply when we close.
        ws = web.WebSocketResponse(timeout=1.0, autoping=True)
        await ws.prepare(request)
        hello = {
            "type": "hello",
            "num_connections": self.open_connections + 1,
            "debug_info": {"host": "applink-fake", "build_number": 1, "approximate_connection_time": 18060},
            "connection_info": {"app_id": self.api_app_id},
        }
        await ws.send_str(json.dumps(hello))
        # Envelopes go only to sockets that got their hello.
        with self._lock:
            self._sockets.append((number, ws))
        try:
            async for msg in ws:
                if msg.type == WSMsgType.TEXT:
                    self._on_frame(msg.data, number)
        finally:
            with self._lock:
                self._sockets = [(n, s) for n, s in self._sockets if s is not ws]
        return ws

    def _on_frame(self, data: str, connection: int) -> None:
        try:
            frame = json.loads(data)
        except ValueError:
            frame = data
        with self._lock:
            if isinstance(frame, dict) and "envelope_id" in frame:
                self.acks.append(Ack(frame["envelope_id"], frame.get("payload"), connection))
            else:
                self.received.append(frame)

    # -- response URLs -----------------------------------------------------------------------------------------

    async def _response(self, request: web.Request) -> web.StreamResponse:
        text = await request.text()
        try:
            body: Any = json.loads(text)
        except ValueError:
            body = {"_raw": text}
        with self._lock:
            self.responses[request.match_info["name"]].append(body)
        return web.Response(text="ok", content_type="text/plain")

    async def _upload(self, request: web.Request) -> web.StreamResponse:
        data = await request.read()
        with self._lock:
            upload = self._uploads.get(request.match_info["file_id"])
            if upload is None:
                return web.Response(status=404, text="unknown upload")
            upload["content"] = data
        return web.Response(text=f"OK - {len(data)}", content_type="text/plain")

    async def _download(self, request: web.Request) -> web.StreamResponse:
        file_id = request.match_info["file_id"]
        authorized = request.headers.get("Authorization", "") == f"Bearer {self.bot_token}"
        with self._lock:
            self.downloads.append((file_id, authorized))
            stored = self._files.get(file_id)
        if stored is None:
            return web.Response(status=404, text="file_not_found")
        content, mimetype, redirect_to = stored
        if redirect_to is not None:
            raise web.HTTPFound(redirect_to)
        if not authorized:
            return web.Response(status=403, text="<html>sign in to Slack</html>", content_type="text/html")
        return web.Response(body=content, content_type=mimetype)

    # -- Web API -----------------------------------------------------------------------------------------------

    async def _api(self, request: web.Request) -> web.StreamResponse:
        method = request.match_info["method"]
        params: dict[str, Any] = dict(request.query)
        if request.method == "POST" and request.can_read_body:
            if request.content_type == JSON:
                body = await request.json()
                if isinstance(body, dict):
                    params.update(body)
            else:
                params.update({k: v for k, v in (await request.post()).items() if isinstance(v, str)})
        headers = dict(request.headers)
        arrived = time.time()
        token = params.pop("token", None)
        auth = request.headers.get("Authorization", "")
        if auth.startswith("Bearer "):
            token = auth.removeprefix("Bearer ").strip()

        with self._lock:
            fault = self._faults[method].pop(0) if self._faults[method] else None
        if fault is not None and fault.delay_s:
            await asyncio.sleep(fault.delay_s)

        extra_headers: dict[str, str] = {}
        if fault is not None and not fault.answer:
            status = fault.status
            answer: dict[str, Any] = {"ok": False, "error": fault.error}
            if fault.retry_after is not None:
                extra_headers["Retry-After"] = str(fault.retry_after)
        else:
            status = 200
            answer = self._answer(method, params, token)
        with self._lock:
            self.calls.append(Call(method, params, headers, status, answer, arrived))
        return web.json_response(answer, status=status, headers=extra_headers)

    def _answer(self, method: str, params: dict[str, Any], token: str | None) -> dict[str, Any]:
        if not token:
            return {"ok": False, "error": "not_authed"}
        wanted = self.app_token if method in _APP_TOKEN_METHODS else self.bot_token
        if token != wanted:
            known = token in (self.app_token, self.bot_token)
            return {"ok": False, "error": "not_allowed_token_type" if known else "invalid_auth"}
        handler = self._methods().get(method)
        if handler is None:
            return {"ok": False, "error": "unknown_method", "req_method": method}
        with self._lock:
            return handler(params)

    def _methods(self) -> dict[str, Callable[[dict[str, Any]], dict[str, Any]]]:
        return {
            "auth.test": self._auth_test,
            "chat.postMessage": self._post_message,
            "chat.update": self._update,
            "chat.postEphemeral": self._post_ephemeral,
            "chat.delete": self._delete,
            "reactions.add": self._reactions_add,
            "reactions.remove": self._reactions_remove,
            "assistant.threads.setStatus": self._set_status,
            "conversations.replies": self._replies,
            "conversations.history": self._history,
            "users.info": self._users_info,
            "apps.connections.open": self._connections_open,
            "files.getUploadURLExternal": self._upload_url,
            "files.completeUploadExternal": self._complete_upload,
            "chat.startStream": self._start_stream,
            "chat.appendStream": self._append_stream,
            "chat.stopStream": self._stop_stream,
        }

    # Each method below runs with self._lock held.

    def _next_ts(self) -> str:
        self._clock += TS_STEP
        return f"{self._clock // 1_000_000}.{self._clock % 1_000_000:06d}"

    def _find(self, channel: str, ts: str) -> dict[str, Any] | None:
        return next((m for m in self._messages.get(channel, []) if m.get("ts") == ts), None)

    def _thread_messages(self, channel: str, thread_ts: str | None) -> list[dict[str, Any]]:
        found = [
            m
            for m in self._messages.get(channel, [])
            if thread_ts is None or m.get("ts") == thread_ts or m.get("thread_ts") == thread_ts
        ]
        return sorted(found, key=lambda m: _ts_key(m["ts"]))

    def _view(self, channel: str, message: dict[str, Any], params: dict[str, Any] | None = None) -> dict[str, Any]:
        """A copy of a stored message as Slack returns it, with its reactions; its metadata only when the
        request asked for it (`include_all_metadata`), as Slack does."""
        view = json.loads(json.dumps(message))
        if str((params or {}).get("include_all_metadata", "")).lower() not in ("true", "1"):
            view.pop("metadata", None)
        reactions = self._reactions.get((channel, message["ts"]))
        if reactions:
            view["reactions"] = json.loads(json.dumps(reactions))
        return view

    @staticmethod
    def _blocks(params: dict[str, Any]) -> list[Any] | None:
        blocks = params.get("blocks")
        if isinstance(blocks, str):  # form-encoded clients send blocks as a JSON string
            blocks = json.loads(blocks) if blocks else None
        return blocks

    def _check_content(self, params: dict[str, Any]) -> str | None:
        text = params.get("text") or ""
        blocks = self._blocks(params)
        if not text and not blocks and not params.get("attachments"):
            return "no_text"
        if len(text) > self.max_text:
            return "msg_too_long"
        if blocks is not None and (not isinstance(blocks, list) or len(blocks) > self.max_blocks):
            return "invalid_blocks"
        return None

    def _auth_test(self, params: dict[str, Any]) -> dict[str, Any]:
        return {
            "ok": True,
            "url": f"https://{self.team_domain}.slack.com/",
            "team": self.team,
            "user": self.user,
            "team_id": self.team_id,
            "user_id": self.user_id,
            "bot_id": self.bot_id,
            "is_enterprise_install": False,
        }

    def _bot_message(self, params: dict[str, Any], **fields: Any) -> dict[str, Any]:
        """A new message by the bot, in the thread the call names (if any), with its own ts."""
        message: dict[str, Any] = {
            "type": "message",
            "user": self.user_id,
            "bot_id": self.bot_id,
            "app_id": self.api_app_id,
            "team": self.team_id,
            "ts": self._next_ts(),
            **fields,
        }
        if params.get("thread_ts"):
            message["thread_ts"] = str(params["thread_ts"])
        return message

    def _post_message(self, params: dict[str, Any]) -> dict[str, Any]:
        channel = params.get("channel")
        if not channel:
            return {"ok": False, "error": "channel_not_found"}
        error = self._check_content(params)
        if error:
            return {"ok": False, "error": error}
        message = self._bot_message(params, text=params.get("text") or "", blocks=self._blocks(params) or [])
        ts = message["ts"]
        metadata = params.get("metadata")
        if metadata:  # form-encoded clients send it as a JSON string
            message["metadata"] = json.loads(metadata) if isinstance(metadata, str) else metadata
        self._messages[channel].append(message)
        return {"ok": True, "channel": channel, "ts": ts, "message": dict(message)}

    def _update(self, params: dict[str, Any]) -> dict[str, Any]:
        channel, ts = params.get("channel"), params.get("ts")
        message = self._find(channel, ts) if channel and ts else None
        if message is None:
            return {"ok": False, "error": "message_not_found"}
        error = self._check_content(params)
        if error:
            return {"ok": False, "error": error}
        message["text"] = params.get("text") or ""
        if "blocks" in params:
            message["blocks"] = self._blocks(params) or []
        metadata = params.get("metadata")
        if metadata:
            message["metadata"] = json.loads(metadata) if isinstance(metadata, str) else metadata
        message["edited"] = {"user": self.user_id, "ts": self._next_ts()}
        return {"ok": True, "channel": channel, "ts": ts, "text": message["text"], "message": dict(message)}

    def _post_ephemeral(self, params: dict[str, Any]) -> dict[str, Any]:
        if not params.get("channel"):
            return {"ok": False, "error": "channel_not_found"}
        if not params.get("user"):
            return {"ok": False, "error": "user_not_in_channel"}
        error = self._check_content(params)
        if error:
            return {"ok": False, "error": error}
        return {"ok": True, "message_ts": self._next_ts()}

    def _delete(self, params: dict[str, Any]) -> dict[str, Any]:
        channel, ts = params.get("channel"), params.get("ts")
        message = self._find(channel, ts) if channel and ts else None
        if message is None:
            return {"ok": False, "error": "message_not_found"}
        self._messages[channel].remove(message)
        return {"ok": True, "channel": channel, "ts": ts}

    def _reaction_params(self, params: dict[str, Any]) -> tuple[str, str, str] | str:
        channel, ts, name = params.get("channel"), params.get("timestamp"), params.get("name")
        if not channel or not ts:
            return "no_item_specified"
        if not name:
            return "invalid_name"
        return str(channel), str(ts), str(name)

    def _reactions_add(self, params: dict[str, Any]) -> dict[str, Any]:
        target = self._reaction_params(params)
        if isinstance(target, str):
            return {"ok": False, "error": target}
        channel, ts, name = target
        reactions = self._reactions[(channel, ts)]
        entry = next((r for r in reactions if r["name"] == name), None)
        if entry is None:
            reactions.append({"name": name, "users": [self.user_id], "count": 1})
        elif self.user_id in entry["users"]:
            return {"ok": False, "error": "already_reacted"}
        else:
            entry["users"].append(self.user_id)
            entry["count"] += 1
        return {"ok": True}

    def _reactions_remove(self, params: dict[str, Any]) -> dict[str, Any]:
        target = self._reaction_params(params)
        if isinstance(target, str):
            return {"ok": False, "error": target}
        channel, ts, name = target
        reactions = self._reactions[(channel, ts)]
        entry = next((r for r in reactions if r["name"] == name), None)
        if entry is None or self.user_id not in entry["users"]:
            return {"ok": False, "error": "no_reaction"}
        entry["users"].remove(self.user_id)
        entry["count"] -= 1
        if not entry["users"]:
            reactions.remove(entry)
        return {"ok": True}

    def _set_status(self, params: dict[str, Any]) -> dict[str, Any]:
        if not params.get("channel_id") or not params.get("thread_ts") or "status" not in params:
            return {"ok": False, "error": "invalid_arguments"}
        return {"ok": True}

    def _replies(self, params: dict[str, Any]) -> dict[str, Any]:
        channel, ts = params.get("channel"), params.get("ts")
        if not channel:
            return {"ok": False, "error": "channel_not_found"}
        if not ts:
            return {"ok": False, "error": "invalid_arguments"}
        found = [self._view(channel, m, params) for m in self._thread_messages(channel, str(ts))]
        if not found:
            return {"ok": False, "error": "thread_not_found"}
        start = int(params.get("cursor") or 0)
        limit = int(params.get("limit") or 1000)
        page = found[start : start + limit]
        more = start + limit < len(found)
        return {
            "ok": True,
            "messages": page,
            "has_more": more,
            "response_metadata": {"next_cursor": str(start + limit) if more else ""},
        }

    def _history(self, params: dict[str, Any]) -> dict[str, Any]:
        """Top-level messages of a channel, newest first, at or after `oldest` (the `limit` newest)."""
        channel = params.get("channel")
        if not channel:
            return {"ok": False, "error": "channel_not_found"}
        oldest = _ts_key(str(params.get("oldest") or "0"))
        found = [
            self._view(channel, m, params)
            for m in self._messages.get(channel, [])
            if "thread_ts" not in m or m.get("thread_ts") == m.get("ts")
            if _ts_key(m["ts"]) >= oldest
        ]
        found.sort(key=lambda m: _ts_key(m["ts"]), reverse=True)
        return {"ok": True, "messages": found[: int(params.get("limit") or 100)], "has_more": False}

    def _user_record(self, user_id: str, name: str | None = None) -> dict[str, Any]:
        is_bot = user_id == self.user_id
        name = name or (self.user if is_bot else user_id.lower())
        return {
            "id": user_id,
            "team_id": self.team_id,
            "name": name,
            "real_name": name.title(),
            "deleted": False,
            "is_bot": is_bot,
            "is_admin": False,
            "tz": "UTC",
            "tz_offset": 0,
            "profile": {"display_name": name, "real_name": name.title(), "team": self.team_id},
        }

    def _users_info(self, params: dict[str, Any]) -> dict[str, Any]:
        user_id = params.get("user")
        if not user_id:
            return {"ok": False, "error": "user_not_found"}
        return {"ok": True, "user": dict(self._users.get(user_id) or self._user_record(user_id))}

    def _connections_open(self, params: dict[str, Any]) -> dict[str, Any]:
        ticket = uuid.uuid4().hex
        self._tickets.add(ticket)
        return {"ok": True, "url": f"{self.socket_url}?ticket={ticket}&app_id={self.api_app_id}"}

    def _upload_url(self, params: dict[str, Any]) -> dict[str, Any]:
        if not params.get("filename") or not str(params.get("length", "")).isdigit():
            return {"ok": False, "error": "invalid_arguments"}
        file_id = f"F{uuid.uuid4().hex[:10].upper()}"
        self._uploads[file_id] = {"filename": params["filename"], "length": int(params["length"]), "content": None}
        return {"ok": True, "upload_url": f"{self.url}/upload/{file_id}", "file_id": file_id}

    def _complete_upload(self, params: dict[str, Any]) -> dict[str, Any]:
        files = params.get("files")
        listed = json.loads(files) if isinstance(files, str) else files
        if not isinstance(listed, list) or not listed:
            return {"ok": False, "error": "invalid_arguments"}
        if any(self._uploads.get(str(f.get("id")), {}).get("content") is None for f in listed):
            return {"ok": False, "error": "file_upload_not_completed"}
        channel = params.get("channel_id")
        thread_ts = str(params["thread_ts"]) if params.get("thread_ts") else None
        ts = self._next_ts()
        shared = []
        for f in listed:
            upload = self._uploads[str(f["id"])]
            shared.append(
                {
                    "id": str(f["id"]),
                    "name": upload["filename"],
                    "title": f.get("title") or upload["filename"],
                    "channel": channel,
                    "thread_ts": thread_ts,
                    "ts": ts,
                    "content": upload["content"].decode("utf-8", "replace"),
                }
            )
        if channel:
            message: dict[str, Any] = {
                "type": "message",
                "subtype": "file_share",
                "user": self.user_id,
                "bot_id": self.bot_id,
                "text": params.get("initial_comment") or "",
                "ts": ts,
                "files": [{"id": f["id"], "name": f["name"], "title": f["title"]} for f in shared],
            }
            if thread_ts:
                message["thread_ts"] = thread_ts
            self._messages[channel].append(message)
        self._shared.extend(shared)
        return {"ok": True, "files": [{"id": f["id"], "title": f["title"]} for f in shared]}

    # Streaming: chat.startStream / appendStream / stopStream (each runs with self._lock held).

    def _expired(self, stream: dict[str, Any]) -> bool:
        return time.monotonic() - stream["started"] > self.stream_ttl_s

    @staticmethod
    def _chunks(params: dict[str, Any]) -> list[dict[str, Any]] | str:
        """The call's chunks (its `markdown_text` as a first markdown_text chunk), or an error."""
        chunks = params.get("chunks") or []
        if isinstance(chunks, str):
            chunks = json.loads(chunks)
        if not isinstance(chunks, list) or not all(isinstance(c, dict) and c.get("type") for c in chunks):
            return "invalid_chunks"
        if params.get("markdown_text"):
            chunks = [{"type": "markdown_text", "text": str(params["markdown_text"])}, *chunks]
        for chunk in chunks:
            if chunk["type"] not in ("markdown_text", "task_update", "plan_update", "blocks"):
                return "invalid_chunks"
            if chunk["type"] == "markdown_text" and len(str(chunk.get("text", ""))) > 12_000:
                return "msg_too_long"
            if chunk["type"] == "task_update" and not (chunk.get("id") and chunk.get("title") and chunk.get("status")):
                return "invalid_chunks"
        return chunks

    def _stream_add(self, message: dict[str, Any], chunks: list[dict[str, Any]]) -> str | None:
        stream = message["stream"]
        text = "".join(str(c.get("text", "")) for c in chunks if c["type"] == "markdown_text")
        if len(stream["text"]) + len(text) > self.max_stream_text:
            return "msg_too_long"
        stream["chunks"].extend(chunks)
        stream["text"] += text
        message["text"] = stream["text"]
        return None

    def _streaming(self, params: dict[str, Any]) -> dict[str, Any] | str:
        channel, ts = params.get("channel"), params.get("ts")
        if not channel:
            return "channel_not_found"
        message = self._find(channel, ts) if ts else None
        if message is None or "stream" not in message:
            return "message_not_found"
        stream = message["stream"]
        if stream["state"] != "streaming" or self._expired(stream):
            return "message_not_in_streaming_state"
        return message

    def _start_stream(self, params: dict[str, Any]) -> dict[str, Any]:
        channel = params.get("channel")
        if not channel:
            return {"ok": False, "error": "channel_not_found"}
        in_channel = not str(channel).startswith("D")
        if in_channel and not params.get("recipient_user_id"):
            return {"ok": False, "error": "missing_recipient_user_id"}
        if in_channel and not params.get("recipient_team_id"):
            return {"ok": False, "error": "missing_recipient_team_id"}
        chunks = self._chunks(params)
        if isinstance(chunks, str):
            return {"ok": False, "error": chunks}
        stream = {
            "state": "streaming",
            "started": time.monotonic(),
            "chunks": [],
            "text": "",
            "recipient": [params.get("recipient_team_id"), params.get("recipient_user_id")],
        }
        message = self._bot_message(params, text="", stream=stream)
        ts = message["ts"]
        error = self._stream_add(message, chunks)
        if error:
            return {"ok": False, "error": error}
        self._messages[channel].append(message)
        return {"ok": True, "channel": channel, "ts": ts}

    def _append_stream(self, params: dict[str, Any]) -> dict[str, Any]:
        message = self._streaming(params)
        if isinstance(message, str):
            return {"ok": False, "error": message}
        chunks = self._chunks(params)
        if isinstance(chunks, str):
            return {"ok": False, "error": chunks}
        if not chunks:
            return {"ok": False, "error": "no_text"}
        error = self._stream_add(message, chunks)
        if error:
            return {"ok": False, "error": error}
        return {"ok": True, "channel": params["channel"], "ts": message["ts"]}

    def _stop_stream(self, params: dict[str, Any]) -> dict[str, Any]:
        message = self._streaming(params)
        if isinstance(message, str):
            return {"ok": False, "error": message}
        chunks = self._chunks(params)
        if isinstance(chunks, str):
            return {"ok": False, "error": chunks}
        error = self._stream_add(message, chunks)
        if error:
            return {"ok": False, "error": error}
        message["stream"]["state"] = "stopped"
        metadata = params.get("metadata")
        if metadata:
            message["metadata"] = json.loads(metadata) if isinstance(metadata, str) else metadata
        blocks = self._blocks(params)
        if blocks:
            message["blocks"] = blocks
        return {
            "ok": True,
            "channel": params["channel"],
            "ts": message["ts"],
            "message": self._view(params["channel"], message),
        }
