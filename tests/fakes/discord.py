"""A fake Discord on 127.0.0.1 that the real discord.py 2.7 client talks to: REST API and gateway websocket.

It runs in its own thread and event loop; use it as a context manager::

    with FakeDiscord() as fake, fake.patch_discord_py():   # or set the two class attributes yourself
        client = discord.Client(intents=..., guild_ready_timeout=0.05)
        task = asyncio.create_task(client.start(fake.token))
        await fake.wait_for_ready_clients(1)
        fake.message_create("hello", mentions_bot=True)
        await fake.wait_for_messages("4000", 1)
        await client.close(); await task

Pointing discord.py at it (both are class attributes, so restore them afterwards; `patch_discord_py()` does):

- `discord.http.Route.BASE = fake.api_url` ("http://127.0.0.1:PORT/api/v10"); webhook and interaction routes use
  the same `Route`, so follow-ups and interaction callbacks come here too;
- `discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(fake.gateway_url)` (must be a `yarl.URL`: discord.py
  calls `.with_query(v=10, encoding="json", compress="zlib-stream")` on it). A plain `Client` never asks
  `GET /gateway`; after READY it resumes at `resume_gateway_url`, which points here as well.

discord.py always asks for `compress=zlib-stream` (or zstd-stream when a zstd module is importable) but decodes TEXT
frames as plain JSON (gateway.py `received_message` only decompresses `bytes`), so this fake ignores the query and
sends every frame as uncompressed TEXT JSON.

REST (under `/api/v<N>`): JSON answers carry `Content-Type: application/json` exactly (discord.py compares the header
with `==`, so aiohttp's default `; charset=utf-8` would make it treat every answer as text). Requests need
`Authorization: Bot <token>` (401 otherwise), except interaction callbacks and webhook follow-ups. Unknown routes get
`404 {"message": "404: Not Found", "code": 0}`; an unknown channel `404 Unknown Channel (10003)`; content over 2000
characters `400 Invalid Form Body (50035)`; an empty message `400 (50006)`. Routes: `GET /users/@me`,
`GET /oauth2/applications/@me`, `GET /gateway`, `GET /gateway/bot`, `GET /channels/{id}`,
`POST /channels/{id}/messages` (with `enforce_nonce` a repeated nonce in the channel returns the earlier message),
`GET|PATCH|DELETE /channels/{id}/messages/{mid}` (files sent as multipart become the message's `attachments`; the
request's body keeps their content in `_uploads`, filename -> text), `POST /channels/{id}/typing` (204),
`PUT|DELETE /channels/{id}/messages/{mid}/reactions/{emoji}/@me` (204), `POST /users/@me/channels` (open a DM),
`GET|PUT /applications/{app}/commands` and `GET|PUT /applications/{app}/guilds/{guild}/commands` (bulk overwrite;
ids are stable per name), `POST /interactions/{id}/{token}/callback` (discord.py sends `?with_response=1` and needs
the `{"interaction": ..., "resource": ...}` JSON back; without the query it is 204), `POST /webhooks/{app}/{token}`
(follow-up; 404 Unknown Webhook before the interaction was acknowledged), `GET|PATCH|DELETE
/webhooks/{app}/{token}/messages/{@original|id}`. A second callback for one interaction is `400 (40060)
Interaction has already been acknowledged`; an unknown interaction `404 Unknown interaction (10062)`.

Faults, consumed one per request (the request is still recorded)::

    fake.fail_next("POST /channels/{id}/messages", 429, 500, Fault.slow(1.0))

The key is `"METHOD /template"` (placeholder names do not matter) or a concrete `"METHOD /channels/4000/messages"`
(checked first). An int 429 is `Fault.rate_limited()`: HTTP 429 with `{"message": "You are being rate limited.",
"retry_after": 0.05, "global": false}` and the headers discord.py reads (`Retry-After`, `X-RateLimit-*` and `Via`:
without `Via` discord.py takes a 429 for a Cloudflare ban and raises `HTTPException`). Another int is that status
with Discord's error JSON. discord.py retries 500/502/504/524 after `1 + 2*tries` s (so each costs a second), and
gives up after 5 tries.

Gateway (`gateway_url`, also `resume_gateway_url`): HELLO (op 10, `heartbeat_interval_ms`), heartbeats answered
with op 11, IDENTIFY checked (bad token: close 4004; privileged intents while `intents_allowed` is False: close 4014
"Disallowed intent(s).") and answered with READY (s=1) then GUILD_CREATE (s=2); RESUME of a live session replays
the dispatches after the client's `seq` and then sends RESUMED; RESUME of an unknown or dead session gets op 9 (false).
`send_dispatch(event, data)` pushes op 0 with the session's next `s` to the live connection; when none is live the
event is kept and delivered on RESUME (replay) or, if the session is replaced by a new IDENTIFY, after the new READY
and GUILD_CREATE (a testing convenience, so nothing sent between a reconnect and its READY is lost). Builders:
`message_create`, `dm_message_create`, `interaction_create_command`, `interaction_create_component`; control:
`send_reconnect()` (op 7), `send_invalid_session(resumable)` (op 9), `close_all(code)`; `gateway_down = True` makes
new gateway connections fail (HTTP 503) until it is set back. Builders take `send=False` to return the payload
without pushing it (an interaction is still registered, so its callbacks work): a test can mutate it first.

The `send_*`/builder calls block the calling thread briefly (they only write to sockets); the `wait_for*` helpers
are coroutines that poll, so the client (running on the test's loop) keeps running while a test waits.

Threads: `thread_parents[thread id] = parent channel id` makes a thread of the guild (type 11, with `parent_id`):
`channel()` and `GET /channels/{id}` describe it, the bot can post in it, `message_create(channel_id=thread)` and
`interaction_create_command(channel_id=thread)` come from it, and GUILD_CREATE lists the threads known when the
session starts (a thread added later is unknown to discord.py until it asks `GET /channels/{id}`).

Files people share: `add_attachment(filename, content, content_type)` stores a file and returns Discord's attachment
object for a message's `attachments`. Its URL is signed as Discord's CDN signs them (`ex`, `is`, `hm`: an HMAC of the
path and expiry); `GET /attachments/<id>/<filename>` serves it only when the signature holds and has not expired
(404 "This content is no longer available." otherwise, as the CDN answers). `redirect_to=URL` answers 302 there
instead. `downloads` records each download as (attachment id, whether the signature held).

Records (appended on the server thread under a lock; properties return snapshots): `requests` (each stamped with
when it arrived, `time.monotonic()`), `messages(ch)`,
`edits`, `typing_in(ch)`, `reactions`, `interaction_callbacks`, `followups`, `original_edits`, `command_syncs`,
`identifies`, `resumes`, `identify_payloads`, `heartbeats`, `received` (other client frames), `sent` (dispatches),
`connections`, `connection_log`, `disconnects` ((connection number, close code: the one this fake sent when
it closed, else the client's)).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import re
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, NamedTuple

from aiohttp import WSMsgType, web

from tests.fakes.background import BackgroundServer

JSON = "application/json"
DISCORD_EPOCH_MS = 1_420_070_400_000
MAX_CONTENT = 2000

# Intents (discord.flags.Intents): the privileged ones need a switch in the developer portal.
INTENT_GUILD_MEMBERS = 1 << 1
INTENT_GUILD_PRESENCES = 1 << 8
INTENT_MESSAGE_CONTENT = 1 << 15
PRIVILEGED_INTENTS = INTENT_GUILD_MEMBERS | INTENT_GUILD_PRESENCES | INTENT_MESSAGE_CONTENT

# Gateway opcodes and close codes.
OP_DISPATCH, OP_HEARTBEAT, OP_IDENTIFY, OP_PRESENCE, OP_RESUME = 0, 1, 2, 3, 6
OP_RECONNECT, OP_REQUEST_MEMBERS, OP_INVALID_SESSION, OP_HELLO, OP_HEARTBEAT_ACK = 7, 8, 9, 10, 11
CLOSE_AUTHENTICATION_FAILED = 4004
CLOSE_INVALID_INTENTS = 4013
CLOSE_DISALLOWED_INTENTS = 4014

# Interaction types and callback types.
INTERACTION_PING, INTERACTION_COMMAND, INTERACTION_COMPONENT = 1, 2, 3
CALLBACK_CHANNEL_MESSAGE, CALLBACK_DEFERRED_MESSAGE = 4, 5
CALLBACK_DEFERRED_UPDATE, CALLBACK_UPDATE_MESSAGE = 6, 7
_CALLBACK_TYPES = {1, 4, 5, 6, 7, 8, 9, 10, 12}

FLAG_EPHEMERAL = 1 << 6
FLAG_LOADING = 1 << 7


# --------------------------------------------------------------------------------------------------------------
# Records and faults


class Request(NamedTuple):
    """One REST request: method, path (after `/api/vN`), query, JSON body (None when empty), headers, answer."""

    method: str
    path: str
    query: dict[str, str]
    json: Any
    headers: dict[str, str]
    status: int = 0
    response: Any = None
    # When the request arrived (time.monotonic()): how often a message was edited.
    at: float = 0.0

    @property
    def authorization(self) -> str | None:
        return self.headers.get("Authorization")


class Callback(NamedTuple):
    """An interaction response (`POST /interactions/{id}/{token}/callback`)."""

    interaction_id: str
    token: str
    type: int
    data: dict[str, Any] | None
    headers: dict[str, str]


class Followup(NamedTuple):
    """A follow-up message (`POST /webhooks/{app}/{token}`) and the message object answered."""

    application_id: str
    token: str
    interaction_id: str | None
    json: dict[str, Any]
    message: dict[str, Any]
    headers: dict[str, str]


class Edit(NamedTuple):
    """An edit of a message (`PATCH /channels/{ch}/messages/{id}` or of an interaction's original or follow-up)."""

    channel_id: str
    message_id: str
    json: dict[str, Any]


class CommandSync(NamedTuple):
    """A bulk overwrite of application commands: `guild_id` None for global commands."""

    guild_id: str | None
    commands: list[dict[str, Any]]


@dataclass(frozen=True)
class Fault:
    """How one REST request goes wrong: wait `delay_s`, then answer `status` with `body` and `headers`, or (with
    `answer=True`) answer normally after the wait."""

    status: int = 500
    body: dict[str, Any] | None = None
    headers: Mapping[str, str] = field(default_factory=dict)
    delay_s: float = 0.0
    answer: bool = False

    @classmethod
    def rate_limited(cls, retry_after: float = 0.05, *, is_global: bool = False, scope: str = "user") -> Fault:
        """A 429 as Discord sends it. discord.py sleeps `retry_after` from the JSON body and retries (http.py
        `HTTPClient.request`), but only when a `Via` header is present and the body is JSON."""
        headers = {
            "Retry-After": str(max(1, int(retry_after + 0.999))),
            "X-RateLimit-Limit": "5",
            "X-RateLimit-Remaining": "0",
            "X-RateLimit-Reset": f"{time.time() + retry_after:.3f}",
            "X-RateLimit-Reset-After": f"{retry_after:.3f}",
            "X-RateLimit-Bucket": "fakebucket",
            "X-RateLimit-Scope": "global" if is_global else scope,
            "Via": "1.1 google",
        }
        if is_global:
            headers["X-RateLimit-Global"] = "true"
        body = {"message": "You are being rate limited.", "retry_after": retry_after, "global": is_global}
        return cls(status=429, body=body, headers=headers)

    @classmethod
    def server_error(cls, status: int = 500) -> Fault:
        return cls(status=status, body={"message": f"{status}: Internal Server Error", "code": 0})

    @classmethod
    def error(cls, status: int, message: str, code: int = 0) -> Fault:
        """Any Discord error, e.g. `Fault.error(403, "Missing Permissions", 50013)`."""
        return cls(status=status, body={"message": message, "code": code})

    @classmethod
    def slow(cls, delay_s: float) -> Fault:
        return cls(status=200, delay_s=delay_s, answer=True)


FaultLike = int | Fault


def _as_fault(fault: FaultLike) -> Fault:
    if isinstance(fault, Fault):
        return fault
    if fault == 429:
        return Fault.rate_limited()
    if fault >= 500:
        return Fault.server_error(fault)
    return Fault.error(fault, f"{fault}: Error")


_PLACEHOLDER = re.compile(r"\{[^}]*\}")


def _route_key(key: str) -> str:
    """`"POST /channels/{channel_id}/messages"` -> `"POST /channels/{}/messages"`."""
    method, _, path = key.strip().partition(" ")
    return method.upper() + " " + _PLACEHOLDER.sub("{}", path.strip())


def _now_iso() -> str:
    return datetime.now(UTC).isoformat()


@dataclass
class _Event:
    seq: int
    frame: dict[str, Any]
    delivered: bool = False


@dataclass
class _Session:
    id: str
    intents: int
    shard: list[int] | None
    seq: int = 0
    dead: bool = False
    log: list[_Event] = field(default_factory=list)


@dataclass
class _Conn:
    number: int
    ws: web.WebSocketResponse
    path: str
    query: dict[str, str]
    session: _Session | None = None
    ready: bool = False
    closed_with: int | None = None  # the close code this fake sent, if it closed the socket
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


@dataclass
class _Interaction:
    id: str
    token: str
    payload: dict[str, Any]
    callback_type: int | None = None
    original: dict[str, Any] | None = None
    followups: dict[str, dict[str, Any]] = field(default_factory=dict)


class _HTTPError(Exception):
    def __init__(self, status: int, message: str, code: int = 0, **extra: Any) -> None:
        super().__init__(message)
        self.status = status
        self.body = {"message": message, "code": code, **extra}


_Handler = Callable[[dict[str, str], Any, dict[str, str]], Any]


# --------------------------------------------------------------------------------------------------------------
# The fake


class FakeDiscord(BackgroundServer):
    """Discord's REST API and gateway on 127.0.0.1, in its own thread and event loop."""

    thread_name = "fake-discord"

    def __init__(
        self,
        *,
        token: str = "fake-bot-token",
        application_id: str = "1000",
        bot_user_id: str = "2000",
        guild_id: str = "3000",
        channel_ids: Sequence[str] = ("4000",),
        dm_channel_id: str = "5000",
        intents_allowed: bool = True,
        bot_name: str = "parley",
        guild_name: str = "Fake Guild",
        heartbeat_interval_ms: int = 41_250,
        wait_s: float = 5.0,
    ) -> None:
        super().__init__()
        # Role ids per member (user id): they appear in GUILD_CREATE and in members' `roles`.
        self.member_roles: dict[str, list[str]] = {}
        # Thread id -> the id of the channel it belongs to: threads of the guild.
        self.thread_parents: dict[str, str] = {}
        self.token = token
        self.application_id = str(application_id)
        self.bot_user_id = str(bot_user_id)
        self.guild_id = str(guild_id)
        self.channel_ids = tuple(str(c) for c in channel_ids)
        self.dm_channel_id = str(dm_channel_id)
        self.intents_allowed = intents_allowed
        # While True the gateway (and its resume URL) answers 503 instead of a websocket: Discord unreachable.
        self.gateway_down = False
        self.bot_name = bot_name
        self.guild_name = guild_name
        self.heartbeat_interval_ms = heartbeat_interval_ms
        self.wait_s = wait_s

        self._lock = threading.Lock()
        self._requests: list[Request] = []
        self._faults: defaultdict[str, list[Fault]] = defaultdict(list)
        self._messages: defaultdict[str, list[dict[str, Any]]] = defaultdict(list)
        self._by_id: dict[str, dict[str, Any]] = {}  # every message we know of (the bot's and pushed ones)
        self._nonces: dict[tuple[str, str], dict[str, Any]] = {}
        # attachment id -> (content, content type, redirect URL or None); the CDN's signing key.
        self._cdn: dict[str, tuple[bytes, str, str | None]] = {}
        self._cdn_key = uuid.uuid4().bytes
        self.downloads: list[tuple[str, bool]] = []
        self._edits: list[Edit] = []
        self._typing: defaultdict[str, int] = defaultdict(int)
        self._reactions: list[tuple[str, str, str, str]] = []  # (method, channel, message, emoji)
        self._dm_channels: dict[str, str] = {}  # recipient user id -> DM channel id
        self._commands: dict[str | None, list[dict[str, Any]]] = {}
        self._command_ids: dict[tuple[str | None, str, int], str] = {}
        self._command_syncs: list[CommandSync] = []
        self._interactions: dict[str, _Interaction] = {}
        self._by_token: dict[str, str] = {}
        self._callbacks: list[Callback] = []
        self._followups: list[Followup] = []
        self._original_edits: list[tuple[str, dict[str, Any]]] = []
        self._last_snowflake = 0
        self._request_headers: dict[str, str] = {}

        self._sessions: dict[str, _Session] = {}
        self._current: _Session | None = None
        self._pending: list[tuple[str, Any]] = []  # dispatched before any session existed
        self._conns: list[_Conn] = []
        self._sent: list[dict[str, Any]] = []
        self._received: list[Any] = []
        self._identify_payloads: list[dict[str, Any]] = []
        self._disconnects: list[tuple[int, int | None]] = []
        self._connection_log: list[tuple[int, str, dict[str, str]]] = []
        self.identifies = 0
        self.resumes = 0
        self.ready_count = 0
        self.heartbeats = 0
        self.connections = 0

        self._routes: list[tuple[str, re.Pattern[str], str, _Handler]] = []
        self._add_routes()

    # -- lifecycle ---------------------------------------------------------------------------------------------

    @property
    def url(self) -> str:
        return self.base_url

    @property
    def api_url(self) -> str:
        """The REST base: set it as `discord.http.Route.BASE` (no trailing slash)."""
        return f"{self.url}/api/v10"

    @property
    def gateway_url(self) -> str:
        """The gateway: set `discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(fake.gateway_url)`."""
        return f"ws://127.0.0.1:{self.port}/gateway"

    @property
    def resume_gateway_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/resume"

    @contextlib.contextmanager
    def patch_discord_py(self) -> Iterator[None]:
        """Point discord.py's class attributes (`Route.BASE`, `DiscordWebSocket.DEFAULT_GATEWAY`) here; restore them."""
        import discord.gateway
        import discord.http
        import yarl

        old_base, old_gateway = discord.http.Route.BASE, discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY
        discord.http.Route.BASE = self.api_url
        discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(self.gateway_url)
        try:
            yield
        finally:
            discord.http.Route.BASE = old_base
            discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = old_gateway

    def _app(self) -> web.Application:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_get("/gateway", self._gateway)
        app.router.add_get("/resume", self._gateway)
        app.router.add_route("*", r"/api/v{version:\d+}/{tail:.*}", self._rest)
        app.router.add_get("/attachments/{attachment_id}/{filename}", self._cdn_download)
        app.router.add_route("*", "/{tail:.*}", self._not_found)
        return app

    def _cdn_signature(self, path: str, expires: str) -> str:
        return hmac.new(self._cdn_key, f"{path}?{expires}".encode(), hashlib.sha256).hexdigest()

    def add_attachment(
        self,
        filename: str,
        content: bytes,
        content_type: str | None = "text/plain",
        *,
        redirect_to: str | None = None,
        size: int | None = None,
        expires_in: int = 86_400,
    ) -> dict[str, Any]:
        """Store a shared file; Discord's attachment object (with a signed URL) for a message's `attachments`."""
        with self._lock:
            attachment_id = self._snowflake()
            self._cdn[attachment_id] = (content, content_type or "application/octet-stream", redirect_to)
        path = f"/attachments/{attachment_id}/{filename}"
        expires = format(int(time.time()) + expires_in, "x")
        query = f"ex={expires}&is={format(int(time.time()), 'x')}&hm={self._cdn_signature(path, expires)}&"
        url = f"{self.url}{path}?{query}"
        found: dict[str, Any] = {
            "id": attachment_id,
            "filename": filename,
            "size": len(content) if size is None else size,
            "url": url,
            "proxy_url": url,
        }
        if content_type is not None:
            found["content_type"] = content_type
        return found

    async def _cdn_download(self, request: web.Request) -> web.StreamResponse:
        attachment_id = request.match_info["attachment_id"]
        expires = request.query.get("ex", "")
        signed = hmac.compare_digest(request.query.get("hm", ""), self._cdn_signature(request.path, expires))
        fresh = bool(re.fullmatch(r"[0-9a-f]{1,12}", expires)) and int(expires, 16) > time.time()
        with self._lock:
            self.downloads.append((attachment_id, signed and fresh))
            stored = self._cdn.get(attachment_id)
        if stored is None or not (signed and fresh):
            return web.Response(status=404, text="This content is no longer available.")
        content, content_type, redirect_to = stored
        if redirect_to is not None:
            raise web.HTTPFound(redirect_to)
        return web.Response(body=content, content_type=content_type)

    async def _before_stop(self) -> None:
        with self._lock:
            conns = list(self._conns)
        closes = [asyncio.ensure_future(c.ws.close(code=1001, message=b"fake shutdown")) for c in conns]
        if closes:
            _, late = await asyncio.wait(closes, timeout=1.0)
            for task in late:
                task.cancel()

    # -- configuration -----------------------------------------------------------------------------------------

    def fail_next(self, route_key: str, *faults: FaultLike) -> None:
        """The next requests of `route_key` ("POST /channels/{id}/messages", or a concrete path) fail, in order."""
        method, _, path = route_key.strip().partition(" ")
        key = _route_key(route_key) if "{" in path else f"{method.upper()} {path.strip()}"
        with self._lock:
            self._faults[key].extend(_as_fault(f) for f in faults)

    # -- records -----------------------------------------------------------------------------------------------

    @property
    def requests(self) -> list[Request]:
        with self._lock:
            return list(self._requests)

    def requests_to(self, route_key: str) -> list[Request]:
        """Requests matching "METHOD /template" (placeholders match one path segment) or a concrete "METHOD /path"."""
        method, _, path = route_key.strip().partition(" ")
        pattern = re.compile("^" + re.sub(r"\\\{[^}]*\\\}", "[^/]+", re.escape(path.strip())) + "$")
        return [r for r in self.requests if r.method == method.upper() and pattern.match(r.path)]

    def messages(self, channel_id: str) -> list[dict[str, Any]]:
        """Messages the bot created in `channel_id` through `POST /channels/{id}/messages`, in order (as edited)."""
        with self._lock:
            return [dict(m) for m in self._messages.get(str(channel_id), [])]

    def message(self, message_id: str) -> dict[str, Any] | None:
        with self._lock:
            found = self._by_id.get(str(message_id))
            return dict(found) if found else None

    def typing_in(self, channel_id: str) -> int:
        with self._lock:
            return self._typing.get(str(channel_id), 0)

    @property
    def edits(self) -> list[Edit]:
        with self._lock:
            return list(self._edits)

    @property
    def reactions(self) -> list[tuple[str, str, str, str]]:
        """(method "PUT"/"DELETE", channel id, message id, emoji) of the bot's own reactions."""
        with self._lock:
            return list(self._reactions)

    @property
    def interaction_callbacks(self) -> list[Callback]:
        with self._lock:
            return list(self._callbacks)

    @property
    def followups(self) -> list[Followup]:
        with self._lock:
            return list(self._followups)

    @property
    def original_edits(self) -> list[tuple[str, dict[str, Any]]]:
        """(interaction id, JSON body) of each `PATCH /webhooks/{app}/{token}/messages/@original`."""
        with self._lock:
            return list(self._original_edits)

    @property
    def command_syncs(self) -> list[CommandSync]:
        with self._lock:
            return list(self._command_syncs)

    def commands(self, guild_id: str | None = None) -> list[dict[str, Any]]:
        with self._lock:
            return [dict(c) for c in self._commands.get(guild_id, [])]

    @property
    def identify_payloads(self) -> list[dict[str, Any]]:
        with self._lock:
            return list(self._identify_payloads)

    @property
    def sent(self) -> list[dict[str, Any]]:
        """Dispatch frames (op 0) as sent on a socket, including READY, GUILD_CREATE, RESUMED and replays."""
        with self._lock:
            return list(self._sent)

    @property
    def received(self) -> list[Any]:
        """Client frames other than heartbeats, IDENTIFY and RESUME (presence updates, member requests...)."""
        with self._lock:
            return list(self._received)

    @property
    def disconnects(self) -> list[tuple[int, int | None]]:
        with self._lock:
            return list(self._disconnects)

    @property
    def connection_log(self) -> list[tuple[int, str, dict[str, str]]]:
        """(number, path, query) of every gateway connection: path "/gateway" or "/resume" (resume_gateway_url);
        discord.py's query is `v=10&encoding=json&compress=zlib-stream`."""
        with self._lock:
            return list(self._connection_log)

    @property
    def open_connections(self) -> int:
        with self._lock:
            return sum(1 for c in self._conns if not c.ws.closed)

    @property
    def session_id(self) -> str | None:
        with self._lock:
            return self._current.id if self._current else None

    async def wait_for(
        self, predicate: Callable[[], Any], timeout_s: float | None = None, what: str = "condition"
    ) -> Any:
        """Poll `predicate` (on the caller's thread) until it returns something truthy; return that."""
        timeout_s = self.wait_s if timeout_s is None else timeout_s
        deadline = time.monotonic() + timeout_s
        while True:
            value = predicate()
            if value:
                return value
            if time.monotonic() >= deadline:
                raise TimeoutError(f"FakeDiscord: no {what} within {timeout_s} s")
            await asyncio.sleep(0.005)

    async def wait_for_ready_clients(self, n: int = 1, timeout_s: float | None = None) -> None:
        """Until READY has been sent `n` times in all (each IDENTIFY that succeeds gets one)."""
        await self.wait_for(lambda: self.ready_count >= n, timeout_s, f"{n} READY")

    async def wait_for_identifies(self, n: int, timeout_s: float | None = None) -> None:
        await self.wait_for(lambda: self.identifies >= n, timeout_s, f"{n} IDENTIFY")

    async def wait_for_resumes(self, n: int, timeout_s: float | None = None) -> None:
        """Until `n` RESUMEs have been accepted (RESUMED sent)."""
        await self.wait_for(lambda: self.resumes >= n, timeout_s, f"{n} RESUME")

    async def wait_for_messages(self, channel_id: str, n: int = 1, timeout_s: float | None = None) -> list[Any]:
        return await self.wait_for(
            lambda: (lambda m: m if len(m) >= n else None)(self.messages(channel_id)),
            timeout_s,
            f"{n} message(s) in {channel_id}",
        )

    async def wait_for_requests(self, route_key: str, n: int = 1, timeout_s: float | None = None) -> list[Request]:
        return await self.wait_for(
            lambda: (lambda r: r if len(r) >= n else None)(self.requests_to(route_key)),
            timeout_s,
            f"{n} request(s) to {route_key}",
        )

    async def wait_for_typing(self, channel_id: str, n: int = 1, timeout_s: float | None = None) -> None:
        await self.wait_for(lambda: self.typing_in(channel_id) >= n, timeout_s, f"typing in {channel_id}")

    async def wait_for_callbacks(self, n: int = 1, timeout_s: float | None = None) -> list[Callback]:
        return await self.wait_for(
            lambda: (lambda c: c if len(c) >= n else None)(self.interaction_callbacks),
            timeout_s,
            f"{n} interaction callback(s)",
        )

    async def wait_for_followups(self, n: int = 1, timeout_s: float | None = None) -> list[Followup]:
        return await self.wait_for(
            lambda: (lambda f: f if len(f) >= n else None)(self.followups), timeout_s, f"{n} follow-up(s)"
        )

    async def wait_for_command_syncs(self, n: int = 1, timeout_s: float | None = None) -> list[CommandSync]:
        return await self.wait_for(
            lambda: (lambda s: s if len(s) >= n else None)(self.command_syncs), timeout_s, f"{n} command sync(s)"
        )

    async def wait_for_disconnects(self, n: int = 1, timeout_s: float | None = None) -> list[tuple[int, int | None]]:
        return await self.wait_for(
            lambda: (lambda d: d if len(d) >= n else None)(self.disconnects), timeout_s, f"{n} disconnect(s)"
        )

    # -- object builders ---------------------------------------------------------------------------------------

    def snowflake(self) -> str:
        """A new unique snowflake (its timestamp is now), as a string."""
        with self._lock:
            return self._snowflake()

    def _snowflake(self) -> str:
        value = (int(time.time() * 1000) - DISCORD_EPOCH_MS) << 22
        value = max(value, self._last_snowflake + 1)
        self._last_snowflake = value
        return str(value)

    def bot_user(self) -> dict[str, Any]:
        return {
            "id": self.bot_user_id,
            "username": self.bot_name,
            "discriminator": "0",
            "global_name": None,
            "avatar": None,
            "bot": True,
            "system": False,
            "public_flags": 0,
            "flags": 0,
        }

    def user(self, user_id: str, name: str | None = None, *, bot: bool = False) -> dict[str, Any]:
        if str(user_id) == self.bot_user_id:
            return self.bot_user()
        name = name or f"user{user_id}"
        return {
            "id": str(user_id),
            "username": name,
            "discriminator": "0",
            "global_name": name.title(),
            "avatar": None,
            "bot": bot,
            "public_flags": 0,
        }

    def member(self, user_id: str, *, with_user: bool = True, permissions: str | None = None) -> dict[str, Any]:
        member: dict[str, Any] = {
            "roles": list(self.member_roles.get(user_id, [])),
            "joined_at": "2024-01-01T00:00:00+00:00",
            "premium_since": None,
            "deaf": False,
            "mute": False,
            "flags": 0,
            "pending": False,
            "nick": None,
            "avatar": None,
            "communication_disabled_until": None,
        }
        if with_user:
            member["user"] = self.user(user_id)
        if permissions is not None:
            member["permissions"] = permissions
        return member

    def channel(self, channel_id: str) -> dict[str, Any]:
        channel_id = str(channel_id)
        if channel_id in self.thread_parents:
            return {
                "id": channel_id,
                "type": 11,
                "guild_id": self.guild_id,
                "parent_id": self.thread_parents[channel_id],
                "owner_id": "6000",
                "name": f"thread-{channel_id}",
                "last_message_id": None,
                "rate_limit_per_user": 0,
                "message_count": 0,
                "member_count": 1,
                "flags": 0,
                "thread_metadata": {
                    "archived": False,
                    "auto_archive_duration": 1440,
                    "archive_timestamp": _now_iso(),
                    "locked": False,
                },
            }
        if channel_id in self.channel_ids:
            position = self.channel_ids.index(channel_id)
            return {
                "id": channel_id,
                "type": 0,
                "guild_id": self.guild_id,
                "name": "general" if position == 0 else f"channel-{position}",
                "position": position,
                "permission_overwrites": [],
                "nsfw": False,
                "topic": None,
                "parent_id": None,
                "last_message_id": None,
                "rate_limit_per_user": 0,
                "flags": 0,
            }
        recipient = next((u for u, c in self._dm_channels.items() if c == channel_id), "6000")
        return {
            "id": channel_id,
            "type": 1,
            "last_message_id": None,
            "flags": 0,
            "recipients": [self.user(recipient)],
        }

    def guild(self) -> dict[str, Any]:
        """The GUILD_CREATE payload: the guild, its text channels, @everyone and two members (the bot, user 6000)."""
        return {
            "id": self.guild_id,
            "name": self.guild_name,
            "icon": None,
            "splash": None,
            "discovery_splash": None,
            "owner_id": "6000",
            "afk_channel_id": None,
            "afk_timeout": 300,
            "verification_level": 0,
            "default_message_notifications": 0,
            "explicit_content_filter": 0,
            "mfa_level": 0,
            "nsfw_level": 0,
            "premium_tier": 0,
            "premium_subscription_count": 0,
            "preferred_locale": "en-US",
            "features": [],
            "system_channel_id": self.channel_ids[0] if self.channel_ids else None,
            "system_channel_flags": 0,
            "rules_channel_id": None,
            "public_updates_channel_id": None,
            "application_id": None,
            "description": None,
            "vanity_url_code": None,
            "unavailable": False,
            "large": False,
            "member_count": 2,
            "joined_at": "2024-01-01T00:00:00+00:00",
            "lazy": True,
            "roles": [
                {
                    "id": self.guild_id,
                    "name": "@everyone",
                    "permissions": "2248473465835073",
                    "position": 0,
                    "color": 0,
                    "colors": {"primary_color": 0, "secondary_color": None, "tertiary_color": None},
                    "hoist": False,
                    "managed": False,
                    "mentionable": False,
                    "icon": None,
                    "unicode_emoji": None,
                    "flags": 0,
                },
                *(
                    {
                        "id": role_id,
                        "name": f"role {role_id}",
                        "permissions": "0",
                        "position": 1,
                        "color": 0,
                        "hoist": False,
                        "managed": False,
                        "mentionable": False,
                        "flags": 0,
                    }
                    for role_id in sorted({r for roles in self.member_roles.values() for r in roles})
                ),
            ],
            "emojis": [],
            "stickers": [],
            "channels": [{k: v for k, v in self.channel(c).items() if k != "guild_id"} for c in self.channel_ids],
            "threads": [self.channel(t) for t in self.thread_parents],
            "members": [self.member(self.bot_user_id), self.member("6000")],
            "presences": [],
            "voice_states": [],
            "stage_instances": [],
            "guild_scheduled_events": [],
            "soundboard_sounds": [],
        }

    def _message(
        self,
        channel_id: str,
        *,
        content: str,
        author: dict[str, Any],
        message_id: str | None = None,
        guild_id: str | None = None,
        **fields: Any,
    ) -> dict[str, Any]:
        message: dict[str, Any] = {
            "id": message_id or self._snowflake(),
            "type": 0,
            "channel_id": str(channel_id),
            "author": author,
            "content": content,
            "timestamp": _now_iso(),
            "edited_timestamp": None,
            "tts": False,
            "mention_everyone": False,
            "mentions": [],
            "mention_roles": [],
            "attachments": [],
            "embeds": [],
            "components": [],
            "pinned": False,
            "flags": 0,
        }
        if guild_id is not None:
            message["guild_id"] = str(guild_id)
        message.update(fields)
        return message

    def _dm_channel_for(self, user_id: str) -> str:
        user_id = str(user_id)
        channel = self._dm_channels.get(user_id)
        if channel is None:
            channel = self.dm_channel_id if self.dm_channel_id not in self._dm_channels.values() else self._snowflake()
            self._dm_channels[user_id] = channel
        return channel

    # -- gateway: pushing events -------------------------------------------------------------------------------

    def send_dispatch(self, event: str, data: Any) -> int | None:
        """Push a dispatch (op 0, `t` = `event`) to the current session; its sequence number (None when no session
        exists yet: it is delivered after the first READY). `data` is sent as given, even when it is not an object
        (a malformed event)."""
        return self._run(self._dispatch(event, dict(data) if isinstance(data, Mapping) else data))

    def message_create(
        self,
        content: str,
        *,
        channel_id: str | None = None,
        author_id: str = "6000",
        guild_id: str | None = None,
        message_id: str | None = None,
        mentions_bot: bool = False,
        author_bot: bool = False,
        reply_to: str | None = None,
        send: bool = True,
        **fields: Any,
    ) -> dict[str, Any]:
        """Push a MESSAGE_CREATE in a guild text channel (the first one by default); returns the payload.
        With `mentions_bot`, `<@bot_id>` is put in front of the content (unless already there) and the bot is in
        `mentions`. `reply_to` makes it a reply (message_reference, and referenced_message when known)."""
        channel_id = str(channel_id or self.channel_ids[0])
        guild_id = str(guild_id or self.guild_id)
        with self._lock:
            data = self._message(
                channel_id,
                content=content,
                author=self.user(author_id, bot=author_bot),
                message_id=message_id,
                guild_id=guild_id,
                member=self.member(author_id, with_user=False),
                **fields,
            )
            if mentions_bot:
                tag = f"<@{self.bot_user_id}>"
                if tag not in content and f"<@!{self.bot_user_id}>" not in content:
                    data["content"] = f"{tag} {content}"
                data["mentions"] = [{**self.bot_user(), "member": self.member(self.bot_user_id, with_user=False)}]
            if reply_to is not None:
                data["type"] = 19
                data["message_reference"] = {
                    "type": 0,
                    "message_id": str(reply_to),
                    "channel_id": channel_id,
                    "guild_id": guild_id,
                }
                if str(reply_to) in self._by_id:
                    data["referenced_message"] = dict(self._by_id[str(reply_to)])
            self._by_id[data["id"]] = data
        if send:
            self.send_dispatch("MESSAGE_CREATE", data)
        return data

    def dm_message_create(
        self,
        content: str,
        *,
        author_id: str = "6000",
        channel_id: str | None = None,
        message_id: str | None = None,
        **fields: Any,
    ) -> dict[str, Any]:
        """Push a MESSAGE_CREATE in the DM channel of `author_id` (`dm_channel_id` for the first DM user); no
        guild_id, no member."""
        with self._lock:
            channel_id = str(channel_id or self._dm_channel_for(author_id))
            data = self._message(
                channel_id, content=content, author=self.user(author_id), message_id=message_id, **fields
            )
            self._by_id[data["id"]] = data
        self.send_dispatch("MESSAGE_CREATE", data)
        return data

    def _interaction_base(
        self, type_: int, *, user_id: str, channel_id: str | None, guild_id: str | None, dm: bool
    ) -> dict[str, Any]:
        interaction_id = self._snowflake()
        token = f"itoken-{uuid.uuid4().hex}"
        payload: dict[str, Any] = {
            "id": interaction_id,
            "application_id": self.application_id,
            "type": type_,
            "token": token,
            "version": 1,
            "locale": "en-US",
            "entitlements": [],
            "attachment_size_limit": 10 * 1024 * 1024,
            "app_permissions": "2248473465835073",
        }
        if dm:
            channel_id = str(channel_id or self._dm_channel_for(user_id))
            payload.update(
                channel_id=channel_id,
                channel=self.channel(channel_id),
                user=self.user(user_id),
                context=1,
                authorizing_integration_owners={"0": self.guild_id},
            )
        else:
            channel_id = str(channel_id or self.channel_ids[0])
            guild_id = str(guild_id or self.guild_id)
            payload.update(
                guild_id=guild_id,
                guild={"id": guild_id, "locale": "en-US", "features": []},
                guild_locale="en-US",
                channel_id=channel_id,
                channel=self.channel(channel_id),
                member=self.member(user_id, permissions="2248473465835073"),
                context=0,
                authorizing_integration_owners={"0": guild_id},
            )
        self._interactions[interaction_id] = _Interaction(interaction_id, token, payload)
        self._by_token[token] = interaction_id
        return payload

    def interaction_create_command(
        self,
        name: str,
        options: Mapping[str, Any] | Sequence[Mapping[str, Any]] | None = None,
        *,
        user_id: str = "6000",
        channel_id: str | None = None,
        guild_id: str | None = None,
        dm: bool = False,
        send: bool = True,
    ) -> dict[str, Any]:
        """Push an INTERACTION_CREATE for slash command `name` (type 2, data type 1). `options` is a list of
        Discord option objects, or a mapping name -> value (str 3, bool 5, int 4, float 10). `data.id` and
        `data.guild_id` come from the synced commands (a guild command when one of that name was synced for the
        guild). Returns the payload (its `id` and `token` identify the interaction)."""
        if options is None:
            option_list: list[dict[str, Any]] = []
        elif isinstance(options, Mapping):
            option_list = [{"name": k, "type": _option_type(v), "value": v} for k, v in options.items()]
        else:
            option_list = [dict(o) for o in options]
        with self._lock:
            payload = self._interaction_base(
                INTERACTION_COMMAND, user_id=user_id, channel_id=channel_id, guild_id=guild_id, dm=dm
            )
            scope = None if dm else payload["guild_id"]
            data: dict[str, Any] = {"name": name, "type": 1, "options": option_list}
            if scope is not None and (scope, name, 1) in self._command_ids:
                data.update(id=self._command_ids[(scope, name, 1)], guild_id=scope)
            else:
                data["id"] = self._command_ids.get((None, name, 1)) or self._snowflake()
            payload["data"] = data
        if send:
            self.send_dispatch("INTERACTION_CREATE", payload)
        return payload

    def interaction_create_component(
        self,
        custom_id: str,
        *,
        user_id: str = "6000",
        message_id: str | None = None,
        channel_id: str | None = None,
        guild_id: str | None = None,
        component_type: int = 2,
        values: Sequence[str] | None = None,
        dm: bool = False,
    ) -> dict[str, Any]:
        """Push an INTERACTION_CREATE for a click on a component (type 3; a button unless `component_type` says
        otherwise, with `values` for selects). The `message` is the bot's stored message `message_id` when known,
        else a bot message carrying one button with `custom_id`. Returns the payload."""
        with self._lock:
            payload = self._interaction_base(
                INTERACTION_COMPONENT, user_id=user_id, channel_id=channel_id, guild_id=guild_id, dm=dm
            )
            data: dict[str, Any] = {"custom_id": custom_id, "component_type": component_type}
            if values is not None:
                data["values"] = list(values)
            payload["data"] = data
            message = self._by_id.get(str(message_id)) if message_id else None
            if message is None:
                button = {"type": 2, "id": 2, "style": 1, "label": custom_id, "custom_id": custom_id}
                message = self._message(
                    payload["channel_id"],
                    content="",
                    author=self.bot_user(),
                    message_id=str(message_id) if message_id else None,
                    components=[{"type": 1, "id": 1, "components": [button]}],
                )
                self._by_id[message["id"]] = message
            payload["message"] = dict(message)
        self.send_dispatch("INTERACTION_CREATE", payload)
        return payload

    def send_reconnect(self) -> None:
        """Send op 7 RECONNECT on the live connection(s); discord.py closes (4000) and RESUMEs."""
        self._run(self._send_op_to_current({"op": OP_RECONNECT, "d": None, "s": None, "t": None}))

    def send_invalid_session(self, resumable: bool) -> None:
        """Send op 9. Resumable: discord.py reconnects and RESUMEs. Not resumable: the session dies; discord.py
        closes (1000) and IDENTIFYs again (after `before_identify_hook`, 5 s by default), and `on_ready` fires again."""

        async def go() -> None:
            if not resumable:
                with self._lock:
                    if self._current is not None:
                        self._current.dead = True
            await self._send_op_to_current({"op": OP_INVALID_SESSION, "d": bool(resumable), "s": None, "t": None})

        self._run(go())

    def close_all(self, code: int = 4000, reason: str = "fake close") -> int:
        """Close every gateway socket with `code`; how many. discord.py resumes after codes it can handle and
        raises for 4004/4010-4014 (4014: `PrivilegedIntentsRequired`). 4007/4009 also kill the session."""

        async def go() -> int:
            with self._lock:
                conns = [c for c in self._conns if not c.ws.closed]
                for c in conns:
                    c.ready = False
                    c.closed_with = code
                if code in (4007, 4009) and self._current is not None:
                    self._current.dead = True
            for c in conns:
                task = asyncio.ensure_future(c.ws.close(code=code, message=reason.encode()))
                task.add_done_callback(lambda _t: None)
            await asyncio.sleep(0)
            return len(conns)

        return int(self._run(go()))

    async def _send_op_to_current(self, frame: dict[str, Any]) -> None:
        with self._lock:
            conns = [c for c in self._conns if c.ready and not c.ws.closed]
            for c in conns:
                c.ready = False  # nothing more goes to a connection that was told to go away
        for c in conns:
            async with c.lock:
                with contextlib.suppress(ConnectionError, RuntimeError):
                    await c.ws.send_str(json.dumps(frame))

    async def _dispatch(self, event: str, data: Any) -> int | None:
        with self._lock:
            session = self._current
            if session is None:
                self._pending.append((event, data))
                return None
            entry = self._log_event(session, event, data)
            target = next((c for c in reversed(self._conns) if c.session is session and c.ready), None)
            if target is not None:
                entry.delivered = True
        if target is not None:
            await self._send_frames(target, [entry.frame])
        return entry.seq

    def _log_event(self, session: _Session, event: str, data: Any) -> _Event:
        session.seq += 1
        entry = _Event(session.seq, {"op": OP_DISPATCH, "t": event, "s": session.seq, "d": data})
        session.log.append(entry)
        return entry

    async def _send_frames(self, conn: _Conn, frames: list[dict[str, Any]], *, locked: bool = False) -> None:
        if not locked:
            async with conn.lock:
                await self._send_frames(conn, frames, locked=True)
            return
        for frame in frames:
            if conn.ws.closed:
                return
            try:
                await conn.ws.send_str(json.dumps(frame))
            except (ConnectionError, RuntimeError):
                return
            if frame.get("op") == OP_DISPATCH:
                with self._lock:
                    self._sent.append(frame)

    # -- gateway: the websocket --------------------------------------------------------------------------------

    async def _gateway(self, request: web.Request) -> web.StreamResponse:
        if self.gateway_down:
            return web.Response(status=503, text="gateway unavailable")
        ws = web.WebSocketResponse(timeout=1.0, autoping=True, max_msg_size=0)
        await ws.prepare(request)
        with self._lock:
            self.connections += 1
            conn = _Conn(self.connections, ws, request.path, dict(request.query))
            self._conns.append(conn)
            self._connection_log.append((conn.number, conn.path, conn.query))
        hello = {
            "op": OP_HELLO,
            "d": {"heartbeat_interval": self.heartbeat_interval_ms, "_trace": ['["fake-gateway",{"micros":1}]']},
            "s": None,
            "t": None,
        }
        try:
            await ws.send_str(json.dumps(hello))
            async for msg in ws:
                if msg.type == WSMsgType.TEXT:
                    await self._on_frame(conn, msg.data)
                elif msg.type == WSMsgType.BINARY:
                    await self._on_frame(conn, msg.data.decode("utf-8", "replace"))
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            with self._lock:
                conn.ready = False
                self._conns = [c for c in self._conns if c is not conn]
                self._disconnects.append((conn.number, conn.closed_with or ws.close_code))
        return ws

    async def _close(self, conn: _Conn, code: int, reason: str) -> None:
        with self._lock:
            conn.ready = False
            conn.closed_with = code
        await conn.ws.close(code=code, message=reason.encode())

    async def _on_frame(self, conn: _Conn, text: str) -> None:
        try:
            frame = json.loads(text)
        except ValueError:
            await self._close(conn, 4002, "Error while decoding payload.")
            return
        op = frame.get("op") if isinstance(frame, dict) else None
        if op == OP_HEARTBEAT:
            with self._lock:
                self.heartbeats += 1
            async with conn.lock:
                await conn.ws.send_str(json.dumps({"op": OP_HEARTBEAT_ACK, "d": None, "s": None, "t": None}))
        elif op == OP_IDENTIFY:
            await self._identify(conn, frame.get("d") or {})
        elif op == OP_RESUME:
            await self._resume(conn, frame.get("d") or {})
        else:
            with self._lock:
                self._received.append(frame)
            if op == OP_REQUEST_MEMBERS:
                await self._members_chunk(conn, frame.get("d") or {})

    async def _identify(self, conn: _Conn, d: dict[str, Any]) -> None:
        with self._lock:
            self._identify_payloads.append(d)
        if d.get("token") != self.token:
            await self._close(conn, CLOSE_AUTHENTICATION_FAILED, "Authentication failed.")
            return
        intents = d.get("intents")
        if not isinstance(intents, int):
            await self._close(conn, CLOSE_INVALID_INTENTS, "Invalid intent(s).")
            return
        if not self.intents_allowed and intents & PRIVILEGED_INTENTS:
            await self._close(conn, CLOSE_DISALLOWED_INTENTS, "Disallowed intent(s).")
            return
        async with conn.lock:
            with self._lock:
                self.identifies += 1
                old = self._current
                session = _Session(uuid.uuid4().hex, intents, d.get("shard"))
                self._sessions[session.id] = session
                self._current = session
                conn.session = session
                carried = [(e.frame["t"], e.frame["d"]) for e in old.log if not e.delivered] if old else []
                if old is not None:
                    for e in old.log:
                        e.delivered = True
                carried = self._pending + carried
                self._pending = []
                ready = self._log_ready(session)
                guild = self._log_event(session, "GUILD_CREATE", self.guild())
                session.log.remove(guild)  # READY/GUILD_CREATE are per connection: never replayed
                backlog = [self._log_event(session, t, data) for t, data in carried]
                for e in backlog:
                    e.delivered = True
                conn.ready = True
                self.ready_count += 1
            await self._send_frames(conn, [ready, guild.frame, *(e.frame for e in backlog)], locked=True)

    def _log_ready(self, session: _Session) -> dict[str, Any]:
        session.seq += 1
        data = {
            "v": 10,
            "user": {**self.bot_user(), "verified": True, "mfa_enabled": False, "email": None},
            "guilds": [{"id": self.guild_id, "unavailable": True}],
            "session_id": session.id,
            "session_type": "normal",
            "resume_gateway_url": self.resume_gateway_url,
            "application": {"id": self.application_id, "flags": (1 << 19) if self.intents_allowed else 0},
            "private_channels": [],
            "relationships": [],
            "presences": [],
            "guild_join_requests": [],
            "user_settings": {},
            "geo_ordered_rtc_regions": [],
            "_trace": ['["fake-gateway",{"micros":1}]'],
        }
        if session.shard is not None:
            data["shard"] = session.shard
        return {"op": OP_DISPATCH, "t": "READY", "s": session.seq, "d": data}

    async def _resume(self, conn: _Conn, d: dict[str, Any]) -> None:
        if d.get("token") != self.token:
            await self._close(conn, CLOSE_AUTHENTICATION_FAILED, "Authentication failed.")
            return
        async with conn.lock:
            with self._lock:
                session = self._sessions.get(str(d.get("session_id")))
                if session is None or session.dead:
                    frames: list[dict[str, Any]] = [{"op": OP_INVALID_SESSION, "d": False, "s": None, "t": None}]
                else:
                    self.resumes += 1
                    self._current = session
                    conn.session = session
                    after = d.get("seq") or 0
                    replay = [e for e in session.log if e.seq > after]
                    for e in replay:
                        e.delivered = True
                    session.seq += 1
                    resumed = {"op": OP_DISPATCH, "t": "RESUMED", "s": session.seq, "d": {"_trace": ["fake"]}}
                    frames = [*(e.frame for e in replay), resumed]
                    conn.ready = True
            await self._send_frames(conn, frames, locked=True)

    async def _members_chunk(self, conn: _Conn, d: dict[str, Any]) -> None:
        with self._lock:
            session = conn.session
            if session is None:
                return
            members = self.guild()["members"]
            data = {
                "guild_id": str(d.get("guild_id", self.guild_id)),
                "members": members,
                "chunk_index": 0,
                "chunk_count": 1,
                "not_found": [],
            }
            if d.get("nonce"):
                data["nonce"] = d["nonce"]
            entry = self._log_event(session, "GUILD_MEMBERS_CHUNK", data)
            entry.delivered = True
        await self._send_frames(conn, [entry.frame])

    # -- REST --------------------------------------------------------------------------------------------------

    async def _not_found(self, request: web.Request) -> web.StreamResponse:
        return _json_response({"message": "404: Not Found", "code": 0}, 404)

    async def _rest(self, request: web.Request) -> web.StreamResponse:
        method = request.method.upper()
        arrived = time.monotonic()
        path = "/" + request.match_info["tail"]
        query = dict(request.query)
        headers = dict(request.headers)
        body: Any = None
        if request.content_type.startswith("multipart/"):
            form = await request.post()
            payload = form.get("payload_json")
            body = json.loads(payload) if isinstance(payload, str) else {}
            body["_files"] = [k for k in form if k != "payload_json"]
            # filename -> content (as UTF-8), so a test can read what was attached.
            body["_uploads"] = {
                f.filename: f.file.read().decode("utf-8", "replace")
                for f in form.values()
                if isinstance(f, web.FileField)
            }
        elif request.can_read_body:
            raw = await request.read()
            if raw:
                try:
                    body = json.loads(raw)
                except ValueError:
                    body = {"_raw": raw.decode("utf-8", "replace")}

        matched = self._match(method, path)
        template = matched[0] if matched else path
        with self._lock:
            fault = None
            for key in (f"{method} {path}", _route_key(f"{method} {template}")):
                if self._faults.get(key):
                    fault = self._faults[key].pop(0)
                    break
        if fault is not None and fault.delay_s:
            await asyncio.sleep(fault.delay_s)

        extra_headers: dict[str, str] = {}
        if fault is not None and not fault.answer:
            status, answer = fault.status, fault.body
            extra_headers.update(fault.headers)
        elif matched is None:
            status, answer = 404, {"message": "404: Not Found", "code": 0}
        else:
            _, handler, params, public = matched
            if not public and headers.get("Authorization") != f"Bot {self.token}":
                status, answer = 401, {"message": "401: Unauthorized", "code": 0}
            else:
                try:
                    with self._lock:
                        self._request_headers = headers
                        result = handler(params, body, query)
                    status, answer = (204, None) if result is None else (200, result)
                    if isinstance(result, tuple):
                        status, answer = result
                except _HTTPError as exc:
                    status, answer = exc.status, exc.body
                if status < 300:
                    extra_headers.update(_ratelimit_headers())
        with self._lock:
            self._requests.append(Request(method, path, query, body, headers, status, answer, arrived))
        if answer is None:
            return web.Response(status=status, headers=extra_headers)
        return _json_response(answer, status, extra_headers)

    def _match(self, method: str, path: str) -> tuple[str, _Handler, dict[str, str], bool] | None:
        for route_method, pattern, template, handler in self._routes:
            if route_method != method:
                continue
            m = pattern.match(path)
            if m:
                public = template.startswith(("/interactions/", "/webhooks/"))
                return template, handler, m.groupdict(), public
        return None

    def _add_routes(self) -> None:
        def add(method: str, template: str, handler: _Handler) -> None:
            regex = "^" + re.sub(r"\\\{(\w+)\\\}", r"(?P<\1>[^/]+)", re.escape(template)) + "$"
            self._routes.append((method, re.compile(regex), template, handler))

        add("GET", "/users/@me", lambda p, b, q: self.bot_user())
        add("GET", "/oauth2/applications/@me", lambda p, b, q: self._application())
        add("GET", "/applications/@me", lambda p, b, q: self._application())
        add("GET", "/gateway", lambda p, b, q: {"url": self.gateway_url})
        add("GET", "/gateway/bot", self._gateway_bot)
        add("POST", "/users/@me/channels", self._open_dm)
        add("GET", "/channels/{channel_id}", self._get_channel)
        add("POST", "/channels/{channel_id}/messages", self._create_message)
        add("GET", "/channels/{channel_id}/messages/{message_id}", self._get_message)
        add("PATCH", "/channels/{channel_id}/messages/{message_id}", self._edit_message)
        add("DELETE", "/channels/{channel_id}/messages/{message_id}", self._delete_message)
        add("POST", "/channels/{channel_id}/typing", self._typing_route)
        add("PUT", "/channels/{channel_id}/messages/{message_id}/reactions/{emoji}/@me", self._reaction("PUT"))
        add("DELETE", "/channels/{channel_id}/messages/{message_id}/reactions/{emoji}/@me", self._reaction("DELETE"))
        add("GET", "/applications/{application_id}/commands", self._get_commands)
        add("PUT", "/applications/{application_id}/commands", self._put_commands)
        add("GET", "/applications/{application_id}/guilds/{guild_id}/commands", self._get_commands)
        add("PUT", "/applications/{application_id}/guilds/{guild_id}/commands", self._put_commands)
        add("POST", "/interactions/{interaction_id}/{token}/callback", self._callback)
        add("POST", "/webhooks/{application_id}/{token}", self._followup)
        add("GET", "/webhooks/{application_id}/{token}/messages/{message_id}", self._webhook_message("GET"))
        add("PATCH", "/webhooks/{application_id}/{token}/messages/{message_id}", self._webhook_message("PATCH"))
        add("DELETE", "/webhooks/{application_id}/{token}/messages/{message_id}", self._webhook_message("DELETE"))

    def _application(self) -> dict[str, Any]:
        return {
            "id": self.application_id,
            "name": self.bot_name,
            "icon": None,
            "description": "",
            "summary": "",
            "type": None,
            "bot_public": False,
            "bot_require_code_grant": False,
            "verify_key": "0" * 64,
            "flags": (1 << 19) if self.intents_allowed else 0,
            "owner": self.user("6000"),
            "team": None,
            "bot": self.bot_user(),
            "tags": [],
            "redirect_uris": [],
            "interactions_endpoint_url": None,
            "approximate_guild_count": 1,
        }

    def _gateway_bot(self, p: dict[str, str], b: Any, q: dict[str, str]) -> dict[str, Any]:
        return {
            "url": self.gateway_url,
            "shards": 1,
            "session_start_limit": {"total": 1000, "remaining": 999, "reset_after": 86_400_000, "max_concurrency": 1},
        }

    def _known_channel(self, channel_id: str) -> str:
        known = (*self.channel_ids, *self.thread_parents, *self._dm_channels.values())
        if channel_id in known:
            return channel_id
        if channel_id == self.dm_channel_id:
            self._dm_channels.setdefault("6000", channel_id)
            return channel_id
        raise _HTTPError(404, "Unknown Channel", 10003)

    def _get_channel(self, p: dict[str, str], b: Any, q: dict[str, str]) -> dict[str, Any]:
        return self.channel(self._known_channel(p["channel_id"]))

    def _open_dm(self, p: dict[str, str], b: Any, q: dict[str, str]) -> dict[str, Any]:
        recipient = str((b or {}).get("recipient_id", ""))
        if not recipient:
            raise _HTTPError(400, "Invalid Form Body", 50035)
        return self.channel(self._dm_channel_for(recipient))

    def _check_content(self, body: dict[str, Any], *, require_something: bool = True) -> None:
        content = body.get("content")
        if content is not None and len(str(content)) > MAX_CONTENT:
            raise _HTTPError(
                400,
                "Invalid Form Body",
                50035,
                errors={
                    "content": {
                        "_errors": [{"code": "BASE_TYPE_MAX_LENGTH", "message": "Must be 2000 or fewer in length."}]
                    }
                },
            )
        if require_something and not (
            content or body.get("embeds") or body.get("components") or body.get("_files") or body.get("sticker_ids")
        ):
            raise _HTTPError(400, "Cannot send an empty message", 50006)

    def _outgoing(self, channel_id: str, body: dict[str, Any], **fields: Any) -> dict[str, Any]:
        """A message object for something the bot sends (keeps what Discord echoes back)."""
        message = self._message(
            channel_id,
            content=str(body.get("content") or ""),
            author=self.bot_user(),
            embeds=list(body.get("embeds") or []),
            components=_with_component_ids(body.get("components") or []),
            tts=bool(body.get("tts", False)),
            flags=int(body.get("flags") or 0),
            **fields,
        )
        if body.get("nonce") is not None:
            message["nonce"] = body["nonce"]
        for filename, content in (body.get("_uploads") or {}).items():
            url = f"{self.url}/attachments/{channel_id}/{filename}"
            size = len(content.encode())
            attachment = {"id": self._snowflake(), "filename": filename, "size": size, "url": url, "proxy_url": url}
            message["attachments"].append(attachment)
        ref = body.get("message_reference")
        if ref:
            message["type"] = 19
            ref = {k: str(v) if k.endswith("_id") and v is not None else v for k, v in ref.items()}
            message["message_reference"] = {"type": 0, "channel_id": channel_id, **ref}
            referenced = self._by_id.get(str(ref.get("message_id")))
            if referenced is not None:
                message["referenced_message"] = dict(referenced)
        return message

    def _create_message(self, p: dict[str, str], b: Any, q: dict[str, str]) -> dict[str, Any]:
        channel_id = self._known_channel(p["channel_id"])
        body = b if isinstance(b, dict) else {}
        self._check_content(body)
        nonce = body.get("nonce")
        if nonce is not None and body.get("enforce_nonce") and (channel_id, str(nonce)) in self._nonces:
            return dict(self._nonces[(channel_id, str(nonce))])
        message = self._outgoing(channel_id, body)
        if channel_id in self.channel_ids or channel_id in self.thread_parents:
            message["guild_id"] = self.guild_id
        self._messages[channel_id].append(message)
        self._by_id[message["id"]] = message
        if nonce is not None:
            self._nonces[(channel_id, str(nonce))] = message
        return dict(message)

    def _find_bot_message(self, channel_id: str, message_id: str) -> dict[str, Any]:
        for message in self._messages.get(channel_id, []):
            if message["id"] == message_id:
                return message
        raise _HTTPError(404, "Unknown Message", 10008)

    def _get_message(self, p: dict[str, str], b: Any, q: dict[str, str]) -> dict[str, Any]:
        channel_id = self._known_channel(p["channel_id"])
        found = self._by_id.get(p["message_id"])
        if found is None or found["channel_id"] != channel_id:
            raise _HTTPError(404, "Unknown Message", 10008)
        return dict(found)

    def _edit_message(self, p: dict[str, str], b: Any, q: dict[str, str]) -> dict[str, Any]:
        channel_id = self._known_channel(p["channel_id"])
        message = self._find_bot_message(channel_id, p["message_id"])
        body = b if isinstance(b, dict) else {}
        self._check_content(body, require_something=False)
        _apply_edit(message, body)
        self._edits.append(Edit(channel_id, message["id"], body))
        return dict(message)

    def _delete_message(self, p: dict[str, str], b: Any, q: dict[str, str]) -> None:
        channel_id = self._known_channel(p["channel_id"])
        message = self._find_bot_message(channel_id, p["message_id"])
        self._messages[channel_id].remove(message)
        self._by_id.pop(message["id"], None)
        return None

    def _typing_route(self, p: dict[str, str], b: Any, q: dict[str, str]) -> None:
        self._typing[self._known_channel(p["channel_id"])] += 1
        return None

    def _reaction(self, method: str) -> _Handler:
        def handler(p: dict[str, str], b: Any, q: dict[str, str]) -> None:
            channel_id = self._known_channel(p["channel_id"])
            if p["message_id"] not in self._by_id:
                raise _HTTPError(404, "Unknown Message", 10008)
            self._reactions.append((method, channel_id, p["message_id"], p["emoji"]))
            return None

        return handler

    def _check_app(self, application_id: str) -> None:
        if application_id != self.application_id:
            raise _HTTPError(403, "Missing Access", 50001)

    def _get_commands(self, p: dict[str, str], b: Any, q: dict[str, str]) -> list[dict[str, Any]]:
        self._check_app(p["application_id"])
        return [dict(c) for c in self._commands.get(p.get("guild_id"), [])]

    def _put_commands(self, p: dict[str, str], b: Any, q: dict[str, str]) -> list[dict[str, Any]]:
        self._check_app(p["application_id"])
        guild_id = p.get("guild_id")
        if not isinstance(b, list):
            raise _HTTPError(400, "Invalid Form Body", 50035)
        commands = []
        for given in b:
            type_ = int(given.get("type", 1))
            key = (guild_id, str(given.get("name")), type_)
            command_id = self._command_ids.get(key) or self._snowflake()
            self._command_ids[key] = command_id
            command = {
                "id": command_id,
                "application_id": self.application_id,
                "version": self._snowflake(),
                "type": type_,
                "name": given.get("name"),
                "description": given.get("description", ""),
                "options": given.get("options", []),
                "default_member_permissions": given.get("default_member_permissions"),
                "dm_permission": given.get("dm_permission", True),
                "nsfw": given.get("nsfw", False),
                "contexts": given.get("contexts"),
                "integration_types": given.get("integration_types", [0]),
            }
            if guild_id is not None:
                command["guild_id"] = guild_id
            commands.append(command)
        self._commands[guild_id] = commands
        self._command_syncs.append(CommandSync(guild_id, [dict(c) for c in b]))
        return [dict(c) for c in commands]

    def _callback(self, p: dict[str, str], b: Any, q: dict[str, str]) -> Any:
        interaction = self._interactions.get(p["interaction_id"])
        if interaction is None or interaction.token != p["token"]:
            raise _HTTPError(404, "Unknown interaction", 10062)
        body = b if isinstance(b, dict) else {}
        type_ = body.get("type")
        if type_ not in _CALLBACK_TYPES:
            raise _HTTPError(400, "Invalid Form Body", 50035)
        itype = interaction.payload["type"]
        if type_ in (CALLBACK_DEFERRED_UPDATE, CALLBACK_UPDATE_MESSAGE) and itype == INTERACTION_COMMAND:
            raise _HTTPError(400, "Interaction callback type not valid for this interaction", 50035)
        if interaction.callback_type is not None:
            raise _HTTPError(400, "Interaction has already been acknowledged.", 40060)
        data = body.get("data")
        interaction.callback_type = type_
        self._callbacks.append(Callback(interaction.id, interaction.token, type_, data, self._request_headers))
        channel_id = interaction.payload["channel_id"]
        resource_message: dict[str, Any] | None = None
        if type_ == CALLBACK_CHANNEL_MESSAGE:
            self._check_content(data or {})
            resource_message = self._outgoing(
                channel_id, data or {}, webhook_id=self.application_id, application_id=self.application_id
            )
        elif type_ == CALLBACK_DEFERRED_MESSAGE:
            flags = int((data or {}).get("flags") or 0)
            resource_message = self._outgoing(
                channel_id,
                {"flags": flags | FLAG_LOADING},
                webhook_id=self.application_id,
                application_id=self.application_id,
            )
        elif type_ in (CALLBACK_UPDATE_MESSAGE, CALLBACK_DEFERRED_UPDATE):
            source = interaction.payload.get("message")
            if source is not None:
                resource_message = self._by_id.get(source["id"], source)
                if type_ == CALLBACK_UPDATE_MESSAGE:
                    _apply_edit(resource_message, data or {})
                    self._edits.append(Edit(channel_id, resource_message["id"], dict(data or {})))
        if resource_message is not None:
            interaction.original = resource_message
            self._by_id.setdefault(resource_message["id"], resource_message)
        if "with_response" not in q or q.get("with_response") in ("0", "false"):
            return None
        flags = int((resource_message or {}).get("flags") or 0)
        answer: dict[str, Any] = {
            "interaction": {
                "id": interaction.id,
                "type": itype,
                "response_message_loading": type_ == CALLBACK_DEFERRED_MESSAGE,
                "response_message_ephemeral": bool(flags & FLAG_EPHEMERAL),
            }
        }
        if resource_message is not None:
            answer["interaction"]["response_message_id"] = resource_message["id"]
        if resource_message is not None and type_ in (4, 5, 7):
            answer["resource"] = {"type": type_, "message": dict(resource_message)}
        elif type_ != 1:
            answer["resource"] = {"type": type_}
        return answer

    def _interaction_for_token(self, application_id: str, token: str) -> _Interaction:
        interaction_id = self._by_token.get(token)
        if application_id != self.application_id or interaction_id is None:
            raise _HTTPError(404, "Unknown Webhook", 10015)
        interaction = self._interactions[interaction_id]
        if interaction.callback_type is None:
            raise _HTTPError(404, "Unknown Webhook", 10015)
        return interaction

    def _followup(self, p: dict[str, str], b: Any, q: dict[str, str]) -> Any:
        interaction = self._interaction_for_token(p["application_id"], p["token"])
        body = b if isinstance(b, dict) else {}
        self._check_content(body)
        channel_id = interaction.payload["channel_id"]
        message = self._outgoing(channel_id, body, webhook_id=self.application_id, application_id=self.application_id)
        interaction.followups[message["id"]] = message
        self._by_id[message["id"]] = message
        self._followups.append(
            Followup(p["application_id"], p["token"], interaction.id, body, dict(message), self._request_headers)
        )
        if q.get("wait") in ("1", "true", "True"):
            return dict(message)
        return None

    def _webhook_message(self, method: str) -> _Handler:
        def handler(p: dict[str, str], b: Any, q: dict[str, str]) -> Any:
            interaction = self._interaction_for_token(p["application_id"], p["token"])
            message_id = p["message_id"]
            original = message_id == "@original"
            message = interaction.original if original else interaction.followups.get(message_id)
            if message is None:
                raise _HTTPError(404, "Unknown Message", 10008)
            if method == "GET":
                return dict(message)
            if method == "DELETE":
                interaction.followups.pop(message["id"], None)
                if message is interaction.original:
                    interaction.original = None
                return None
            body = b if isinstance(b, dict) else {}
            self._check_content(body, require_something=False)
            _apply_edit(message, body)
            message["flags"] = int(message.get("flags") or 0) & ~FLAG_LOADING
            if message_id == "@original":
                self._original_edits.append((interaction.id, body))
            self._edits.append(Edit(message["channel_id"], message["id"], body))
            return dict(message)

        return handler


# --------------------------------------------------------------------------------------------------------------
# Helpers


def _json_response(body: Any, status: int = 200, headers: Mapping[str, str] | None = None) -> web.Response:
    # Not web.json_response: its "application/json; charset=utf-8" makes discord.py treat the body as text.
    all_headers = {"Content-Type": JSON, **(headers or {})}
    return web.Response(body=json.dumps(body).encode(), status=status, headers=all_headers)


def _ratelimit_headers() -> dict[str, str]:
    return {
        "X-RateLimit-Limit": "50",
        "X-RateLimit-Remaining": "49",
        "X-RateLimit-Reset": f"{time.time() + 1:.3f}",
        "X-RateLimit-Reset-After": "1.000",
        "X-RateLimit-Bucket": "fakebucket",
    }


def _option_type(value: Any) -> int:
    if isinstance(value, bool):
        return 5
    if isinstance(value, int):
        return 4
    if isinstance(value, float):
        return 10
    return 3


def _with_component_ids(components: list[Any]) -> list[Any]:
    """Discord numbers components (`id`) when the sender did not."""
    counter = 0

    def walk(items: list[Any]) -> list[Any]:
        nonlocal counter
        out = []
        for item in items:
            if isinstance(item, dict):
                item = dict(item)
                counter += 1
                item.setdefault("id", counter)
                if isinstance(item.get("components"), list):
                    item["components"] = walk(item["components"])
            out.append(item)
        return out

    return walk(list(components))


def _apply_edit(message: dict[str, Any], body: Mapping[str, Any]) -> None:
    for key in ("content", "embeds", "flags", "allowed_mentions"):
        if key in body and body[key] is not None:
            message[key] = body[key]
    if "components" in body and body["components"] is not None:
        message["components"] = _with_component_ids(body["components"])
    message["edited_timestamp"] = _now_iso()
