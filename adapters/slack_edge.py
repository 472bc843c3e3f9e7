"""Slack's edge: every request body is checked here before slack-bolt or a handler sees it.

Order matters: the signature is verified on the raw bytes first (nothing is parsed for an unsigned sender),
then the body is decoded, parsed, its strings cleaned (`clean_text`) and its shape validated against the
fields Bolt and Parley read. Bolt then gets a canonical JSON body, never the sender's bytes: Bolt decodes and
parses before it verifies and reads fields by their expected types, so raw input made it raise (HTTP 500).

Models are tolerant of extra fields (Slack adds fields over time) and strict about the types of the fields
used. A verified body that fails here is Slack's or a forger's mistake: it gets a 400 and a quiet warning.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Annotated, Any
from urllib.parse import parse_qsl

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError
from yarl import URL

from adapters.edge import problems
from agent.messages import clean_text

# How old a signed request may be before it counts as a replay (Slack's documented window).
MAX_AGE_S = 300
# Slack's payloads nest a few levels (blocks in a message in an event); far deeper is a forgery, and deep
# enough nesting makes any recursive reader raise RecursionError.
MAX_DEPTH = 32
# Every body Slack sends has one of these: events and interaction payloads a `type`, slash commands a
# `command`, the certificate check `ssl_check`.
SLACK_KEYS = frozenset({"type", "command", "ssl_check"})


class Ignored(Exception):
    """A well-formed request of a kind Parley has no use for (a shortcut, a view, an event it did not ask
    for): acknowledged with a 200 so Slack does not resend it, and not passed to Bolt."""


class BadRequest(Exception):
    """A body Parley will not take: `status` is the HTTP answer, the message says why in a few words."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


# Shapes --------------------------------------------------------------------------------------------------


class _Shape(BaseModel):
    model_config = ConfigDict(extra="allow", frozen=True)


class IdRef(_Shape):
    """`team`, `enterprise`, `user` or `channel` given as an object (as in interaction payloads)."""

    id: str | None = None
    team_id: str | None = None
    enterprise_id: str | None = None


Ref = str | IdRef


class Authorization(_Shape):
    enterprise_id: str | None = None
    team_id: str | None = None
    user_id: str | None = None
    is_bot: bool | None = None
    is_enterprise_install: bool | None = None


class View(_Shape):
    app_installed_team_id: str | None = None
    team_id: str | None = None
    callback_id: str | None = None
    type: str | None = None


class Node(_Shape):
    """The fields Bolt's context builder and matchers read, wherever they appear (the body, its event, the
    event's message or item): ids as strings (or id objects), containers as objects."""

    type: str | None = None
    subtype: str | None = None
    user: Ref | None = None
    user_id: str | None = None
    user_team: str | None = None
    team: Ref | None = None
    team_id: str | None = None
    enterprise: Ref | None = None
    enterprise_id: str | None = None
    channel: Ref | None = None
    channel_id: str | None = None
    channel_type: str | None = None
    thread_ts: str | None = None
    ts: str | None = None
    text: str | None = None
    bot_id: str | None = None
    authorizations: list[Authorization] | None = None
    is_enterprise_install: bool | str | None = None
    is_ext_shared_channel: bool | None = None
    event: Node | None = None
    message: Node | None = None
    previous_message: Node | None = None
    item: Node | None = None
    assistant_thread: Node | None = None
    view: View | None = None
    function_execution_id: str | None = None
    bot_access_token: str | None = None
    callback_id: str | None = None


class Action(_Shape):
    action_id: str
    block_id: str | None = None
    value: str | None = None


class ResponseUrl(_Shape):
    response_url: str | None = None


class Body(Node):
    """A whole request body: what every kind shares."""

    event_id: str | None = None
    trigger_id: str | None = None
    response_url: str | None = None
    response_urls: list[ResponseUrl] | None = None


class EventNode(Node):
    type: str


class EventEnvelope(Body):
    """`event_callback`: Bolt matches listeners on `event.type` and reads the event as an object."""

    event: EventNode


class ActionsPayload(Body):
    """`block_actions`: Bolt takes the first action without looking, so there must be one."""

    actions: list[Action] = Field(min_length=1)


class CommandBody(Body):
    command: str


class Verification(Body):
    """`url_verification`: Bolt echoes the challenge."""

    challenge: str


# The kinds of request Parley handles; Bolt sees no other (each kind's model names what Bolt relies on).
KINDS: dict[str, type[Body]] = {
    "event_callback": EventEnvelope,
    "block_actions": ActionsPayload,
    "url_verification": Verification,
}


# What our handlers read ------------------------------------------------------------------------------------


def _web_url(value: str) -> str:
    """An http(s) URL with a host, or "" (a reply then goes to the channel instead of a broken URL)."""
    try:
        url = URL(value)
    except ValueError:
        return ""
    return value if url.scheme in ("http", "https") and url.host else ""


# Where Slack says to send a command's or a click's answer; "" when it did not give a usable one.
ResponseUrlField = Annotated[str, AfterValidator(_web_url)]


# Slack puts at most 10 files on a message; more is not Slack's.
MAX_FILES = 10


class SlackFile(_Shape):
    """A file object on a message (`files[]`): what the adapter turns into an Attachment. `url_private` needs the
    bot token (files:read); a file Slack did not share in full (`file_access: check_file_info`, a `tombstone`)
    has none, and is named in the reply as not readable."""

    id: str = ""
    name: str | None = None
    title: str | None = None
    mimetype: str | None = None
    size: int | None = Field(None, ge=0)
    mode: str | None = None
    url_private: str | None = None
    url_private_download: str | None = None
    file_access: str | None = None


class MessageEvent(_Shape):
    """An `app_mention` or `message` event, as the adapter turns it into an IncomingMessage."""

    type: str
    subtype: str | None = None
    user: str | None = None
    bot_id: str | None = None
    text: str = ""
    ts: str = ""
    thread_ts: str | None = None
    channel: str = ""
    channel_type: str | None = None
    team: str | None = None
    message: MessageEvent | None = None
    files: list[SlackFile] = Field(default_factory=list, max_length=MAX_FILES)


class SlashCommand(_Shape):
    command: str = ""
    text: str = ""
    team_id: str = ""
    channel_id: str = ""
    user_id: str = ""
    trigger_id: str = ""
    response_url: ResponseUrlField = ""


class ActionBody(_Shape):
    """A `block_actions` payload: who clicked, where (the workspace and channel), and the clicked action."""

    user: IdRef = IdRef()
    # None in an org-wide app's payloads; the user's team names the workspace then.
    team: IdRef | None = None
    channel: IdRef = IdRef()

    @property
    def workspace(self) -> str:
        return (self.team.id if self.team is not None else None) or self.user.team_id or ""

    actions: list[Action] = Field(min_length=1)
    response_url: ResponseUrlField = ""


# Verifying and parsing --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Verifier:
    """Slack's request signature: `v0=` + HMAC-SHA256(secret, `v0:{timestamp}:{raw body}`), within MAX_AGE_S."""

    secret: str
    clock: Callable[[], float] = time.time

    def verify(self, body: bytes, headers: Mapping[str, str]) -> None:
        """Return if the request is Slack's; raise BadRequest(401) if unsigned, forged or stale."""
        timestamp = headers.get("X-Slack-Request-Timestamp", "")
        signature = headers.get("X-Slack-Signature", "")
        if not (timestamp.isascii() and timestamp.isdigit() and len(timestamp) <= 12):
            raise BadRequest(401, "missing or malformed timestamp")
        if abs(self.clock() - int(timestamp)) > MAX_AGE_S:
            raise BadRequest(401, "stale timestamp")
        mac = hmac.new(self.secret.encode(), b"v0:" + timestamp.encode() + b":" + body, hashlib.sha256)
        if not hmac.compare_digest(f"v0={mac.hexdigest()}".encode(), signature.encode("utf-8", "replace")):
            raise BadRequest(401, "bad signature")


def parse_body(raw: bytes, content_type: str) -> dict[str, Any]:
    """The body as Slack meant it: JSON (events), a form (slash commands) or a form whose `payload` field is
    JSON (interactions). Raises BadRequest(400) for anything else."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise BadRequest(400, "body is not UTF-8") from None
    stripped = text.lstrip()
    try:
        if content_type == "application/json" or stripped.startswith("{"):
            parsed: Any = json.loads(text)
        else:
            form = dict(parse_qsl(text, keep_blank_values=True, max_num_fields=200))
            parsed = json.loads(form["payload"]) if "payload" in form else form
    except (ValueError, RecursionError):
        raise BadRequest(400, "body is not JSON or a form") from None
    if not isinstance(parsed, dict):
        raise BadRequest(400, "body is not an object")
    if not SLACK_KEYS & parsed.keys():
        raise BadRequest(400, "body is none of Slack's requests")
    return parsed


def clean(value: Any, depth: int = 0) -> Any:
    """The value with every string (keys too) cleaned; BadRequest when nested deeper than MAX_DEPTH."""
    if depth > MAX_DEPTH:
        raise BadRequest(400, "body is nested too deeply")
    if isinstance(value, str):
        return clean_text(value)
    if isinstance(value, dict):
        return {clean_text(str(k)): clean(v, depth + 1) for k, v in value.items()}
    if isinstance(value, list):
        return [clean(v, depth + 1) for v in value]
    return value


def canonical(body: Any) -> dict[str, Any]:
    """A parsed body cleaned and shape-checked: what Bolt and the handlers may rely on. Raises Ignored for a
    kind of request Parley does not handle, BadRequest for a body of the wrong shape."""
    cleaned = clean(body)
    if not isinstance(cleaned, dict):
        raise BadRequest(400, "body is not an object")
    if "command" in cleaned:
        model: type[Body] = CommandBody
    elif "ssl_check" in cleaned:
        model = Body
    else:
        name = cleaned.get("type")
        if not isinstance(name, str):
            raise BadRequest(400, "the request has no type")
        kind = KINDS.get(name)
        if kind is None:
            raise Ignored(name[:40])
        model = kind
    try:
        model.model_validate(cleaned)
    except ValidationError as exc:
        raise BadRequest(400, f"unexpected shape ({problems(exc)})") from None
    return cleaned


def event_id_of(body: Mapping[str, Any]) -> str:
    """The request's id for logs and error reports: the event id, a command's trigger id, or nothing."""
    for key in ("event_id", "trigger_id"):
        value = body.get(key)
        if isinstance(value, str) and value:
            return value[:64]
    return ""


__all__ = (
    "ActionBody",
    "BadRequest",
    "Ignored",
    "MessageEvent",
    "SlackFile",
    "SlashCommand",
    "Verifier",
    "canonical",
    "event_id_of",
    "parse_body",
)
