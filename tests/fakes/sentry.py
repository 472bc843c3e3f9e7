"""A fake Sentry ingest server on 127.0.0.1, so the real `sentry-sdk` HTTP transport is tested end to end.

It speaks what sentry-sdk 2.x sends: `POST /api/<project>/envelope/` with `Content-Type:
application/x-sentry-envelope`, `X-Sentry-Auth: Sentry sentry_key=...` and a body compressed per
`Content-Encoding` (gzip by default, `br` when the SDK can import brotli, or none), and the legacy
`POST /api/<project>/store/` with a JSON event body. The envelope is parsed by hand here, not with the SDK's own
parser, so a bug in the SDK's serialization cannot hide behind the same bug in its reader::

    with FakeSentry() as fake:
        sentry_sdk.init(dsn=fake.dsn, default_integrations=False)
        sentry_sdk.capture_message("hello")
        (event,) = fake.wait_for_events(1)

Every accepted request is kept: `raw_bodies` holds the decompressed bytes (so a test can assert that a secret
appears nowhere in what left the process), `encodings` the `Content-Encoding` each came with, `envelopes` the
parsed `(header, items)` pairs and `events` the payloads of the "event" items. A request with the wrong key
(401) or project (404) is recorded in none of these, only as `(path, status)` in `rejected`. The handlers run
on the server's thread, so the lists are written under a `threading.Condition` that `wait_for_events` waits on.
"""

from __future__ import annotations

import gzip
import json
import threading
import time
import uuid
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from tests.fakes.background import BackgroundServer

try:
    import brotli  # type: ignore[import-not-found, unused-ignore]
except ImportError:  # the SDK then falls back to gzip, and a `br` body is answered 415
    brotli = None

PUBLIC_KEY = "public"
PROJECT_ID = "1"


@dataclass(frozen=True)
class Item:
    """One envelope item: its header line (with "type", maybe "length") and its payload bytes."""

    headers: dict[str, Any]
    payload: bytes

    @property
    def type(self) -> str:
        return str(self.headers.get("type", ""))

    def json(self) -> Any:
        return json.loads(self.payload)


Envelope = tuple[dict[str, Any], list[Item]]


class BadRequest(ValueError):
    """The body is not a well-formed envelope or event; answered 400 with the reason."""


def parse_envelope(data: bytes) -> Envelope:
    """Split an envelope into its header and items, per https://develop.sentry.dev/sdk/data-model/envelopes/.

    Lines end with `\\n`. A header line, then per item a header line and a payload: exactly `length` bytes and a
    newline when the item header gives a length, otherwise everything up to the next newline. The newline after
    the last payload is optional; blank lines between items are tolerated (Relay does too).
    """
    header_line, _, rest = data.partition(b"\n")
    header = _json_object(header_line, "envelope header")
    items: list[Item] = []
    pos = 0
    while pos < len(rest):
        end = rest.find(b"\n", pos)
        end = len(rest) if end < 0 else end
        line = rest[pos:end]
        pos = end + 1
        if not line.strip():
            continue
        item_headers = _json_object(line, "item header")
        length = item_headers.get("length")
        if length is not None:
            if not isinstance(length, int) or length < 0 or pos + length > len(rest):
                raise BadRequest(f"item length {length!r} does not fit the {len(rest) - pos} bytes left")
            payload = rest[pos : pos + length]
            pos += length
            if pos < len(rest):
                if rest[pos : pos + 1] != b"\n":
                    raise BadRequest(f"no newline after the {length}-byte payload of a {item_headers.get('type')}")
                pos += 1
        else:
            end = rest.find(b"\n", pos)
            end = len(rest) if end < 0 else end
            payload = rest[pos:end]
            pos = end + 1
        items.append(Item(item_headers, payload))
    return header, items


def _json_object(line: bytes, what: str) -> dict[str, Any]:
    try:
        value = json.loads(line)
    except ValueError as error:
        raise BadRequest(f"{what} is not JSON: {line[:200]!r}") from error
    if not isinstance(value, dict):
        raise BadRequest(f"{what} is not a JSON object: {line[:200]!r}")
    return value


class _Unsupported(Exception):
    """A `Content-Encoding` the fake cannot undo (`br` without the brotli module); answered 415."""


def decompress(body: bytes, encoding: str) -> bytes:
    """Undo `Content-Encoding` the way Relay does for the encodings the SDK uses; BadRequest for others."""
    encoding = encoding.strip().lower()
    try:
        if encoding in ("", "identity"):
            return body
        if encoding == "gzip":
            return gzip.decompress(body)
        if encoding == "deflate":
            return zlib.decompress(body)
        if encoding == "br" and brotli is not None:
            return bytes(brotli.decompress(body))
    except Exception as error:  # gzip raises OSError or EOFError, zlib its own error, brotli brotli.error
        raise BadRequest(f"body is not valid {encoding}: {error}") from error
    raise _Unsupported(encoding)


def sentry_key(request: web.Request) -> str | None:
    """The public key from `X-Sentry-Auth: Sentry sentry_key=..., ...`, or the `sentry_key` query parameter
    (what browser SDKs send instead of the header)."""
    auth = request.headers.get("X-Sentry-Auth", "")
    scheme, _, params = auth.strip().partition(" ")
    if scheme.lower() == "sentry":
        for pair in params.split(","):
            name, _, value = pair.strip().partition("=")
            if name == "sentry_key":
                return value.strip()
    return request.query.get("sentry_key")


class FakeSentry(BackgroundServer):
    """Runs in its own thread and event loop; use as a context manager. `dsn` is what to give `sentry_sdk.init`."""

    thread_name = "fake-sentry"

    def __init__(self) -> None:
        super().__init__()
        self.raw_bodies: list[bytes] = []
        self.encodings: list[str] = []
        self.envelopes: list[Envelope] = []
        self.events: list[dict[str, Any]] = []
        self.rejected: list[tuple[str, int]] = []
        # Guards the lists above: the handlers write them on the server's thread, tests read them on theirs.
        self._arrived = threading.Condition()

    @property
    def dsn(self) -> str:
        return f"http://{PUBLIC_KEY}@127.0.0.1:{self.port}/{PROJECT_ID}"

    def wait_for_events(self, n: int, timeout: float = 5.0) -> list[dict[str, Any]]:
        """Block the calling (test) thread until at least `n` events arrived; return them all. On timeout an
        AssertionError says what did arrive, so a failure shows the dropped or mangled event."""
        deadline = time.monotonic() + timeout
        with self._arrived:
            while len(self.events) < n:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(
                        f"expected {n} Sentry event(s) within {timeout}s, got {len(self.events)}: {self.events!r}; "
                        f"envelopes: {self.envelopes!r}; rejected: {self.rejected!r}"
                    )
                self._arrived.wait(left)
            return list(self.events)

    def _app(self) -> web.Application:
        # The fake undoes Content-Encoding itself: aiohttp's own decoding would hide which encodings the SDK used,
        # depend on aiohttp's optional decoders, and fail a bad body before the handler could answer 400.
        # Relay takes envelopes far bigger than aiohttp's default 1 MiB.
        app = web.Application(client_max_size=50 * 1024**2, handler_args={"auto_decompress": False})
        app.router.add_post("/api/{project_id}/envelope/", self._envelope)
        app.router.add_post("/api/{project_id}/store/", self._store)
        return app

    async def _envelope(self, request: web.Request) -> web.Response:
        return await self._ingest(request, parse_envelope)

    async def _store(self, request: web.Request) -> web.Response:
        return await self._ingest(request, _store_as_envelope)

    async def _ingest(self, request: web.Request, parse: Callable[[bytes], Envelope]) -> web.Response:
        refused = self._refusal(request)
        if refused is not None:
            with self._arrived:
                self.rejected.append((request.path, refused.status))
            return refused
        encoding = request.headers.get("Content-Encoding", "")
        try:
            data = decompress(await request.read(), encoding)
            envelope: Envelope = parse(data)
            header, items = envelope
            events = [_event(item) for item in items if item.type == "event"]
        except _Unsupported:
            return _error(415, f"unsupported Content-Encoding {encoding!r}")
        except BadRequest as error:
            return _error(400, str(error))
        event_id = header.get("event_id") or next((e.get("event_id") for e in events if e.get("event_id")), None)
        with self._arrived:
            self.raw_bodies.append(data)
            self.encodings.append(encoding)
            self.envelopes.append(envelope)
            self.events.extend(events)
            self._arrived.notify_all()
        return web.json_response({"id": event_id or uuid.uuid4().hex})

    def _refusal(self, request: web.Request) -> web.Response | None:
        """What Relay answers a request for another project (404) or without our public key (401), else None."""
        if request.match_info["project_id"] != PROJECT_ID:
            return _error(404, f"unknown project {request.match_info['project_id']!r}")
        key = sentry_key(request)
        if key != PUBLIC_KEY:
            return _error(401, f"invalid sentry_key {key!r}" if key else "missing authorization information")
        return None


def _store_as_envelope(data: bytes) -> Envelope:
    """The legacy store endpoint takes one bare JSON event; keep it in the same shape as an envelope."""
    event = _json_object(data, "store body")
    return {"event_id": event.get("event_id")}, [Item({"type": "event", "length": len(data)}, data)]


def _event(item: Item) -> dict[str, Any]:
    try:
        event = item.json()
    except ValueError as error:
        raise BadRequest(f"event payload is not JSON: {item.payload[:200]!r}") from error
    if not isinstance(event, dict):
        raise BadRequest(f"event payload is not a JSON object: {item.payload[:200]!r}")
    return event


def _error(status: int, detail: str) -> web.Response:
    return web.json_response({"detail": detail}, status=status)
