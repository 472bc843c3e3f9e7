"""Fake chat platforms for dispatcher tests.

`RecordingPlatform` records deliveries in process (unit tests of the dispatcher). `FakePlatformServer` is a
chat platform's message API on 127.0.0.1 and `HTTPPlatform` the adapter that posts to it, so a test can count
the replies a platform received from another process, even one killed with SIGKILL. Like Discord with an
enforced nonce, the server shows a message once per idempotency key: a repeated post returns the first.
"""

from __future__ import annotations

import asyncio
import threading
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
from aiohttp import web

from agent.approvals import ApprovalRequest, PromptLocation
from agent.messages import IncomingMessage, Reply
from agent.ports import DeliveryError
from tests.fakes.background import BackgroundServer


class RecordingPlatform:
    """Keeps every delivered reply by conversation. `before_deliver` may delay or fail a delivery;
    `on_approval` plays the people who see approval requests (it is called as a task, like a person later).
    Each prompt is "posted" at `PromptLocation(name, channel, "prompt-N")`; `settled` records the updates, and
    `fail_settle` makes the next ones raise (the platform refused the update)."""

    def __init__(
        self,
        name: str = "test",
        *,
        resumable: bool = True,
        before_deliver: Callable[[IncomingMessage, str], Awaitable[None]] | None = None,
        on_approval: Callable[[ApprovalRequest], Awaitable[None]] | None = None,
    ) -> None:
        self.name = name
        self.resumable = resumable
        self.before_deliver = before_deliver
        self.on_approval = on_approval
        self.delivered: list[tuple[IncomingMessage, Reply, str]] = []
        self.attempts: Counter[str] = Counter()
        self.approval_requests: list[ApprovalRequest] = []
        self.settled: list[ApprovalRequest] = []
        self.fail_settle = 0
        self._people: set[asyncio.Task[None]] = set()

    def stopped(self, where: str) -> str | None:
        """A Stop names the reply's delivery key itself here (this platform shows no streams)."""
        return where

    async def request_approval(self, request: ApprovalRequest) -> PromptLocation:
        self.approval_requests.append(request)
        if self.on_approval is not None:
            task = asyncio.create_task(self.on_approval(request))
            self._people.add(task)
            task.add_done_callback(self._people.discard)
        return PromptLocation(self.name, request.channel, f"prompt-{len(self.approval_requests)}")

    async def approval_settled(self, request: ApprovalRequest) -> None:
        if self.fail_settle:
            self.fail_settle -= 1
            raise ConnectionError("the platform refused the update")
        self.settled.append(request)

    async def people_done(self) -> None:
        """Wait for the people still acting on requests (a decision can land after the answer it unblocked)."""
        while self._people:
            await asyncio.gather(*self._people, return_exceptions=True)

    async def deliver(self, message: IncomingMessage, reply: Reply, key: str) -> None:
        self.attempts[key] += 1
        if self.before_deliver is not None:
            await self.before_deliver(message, key)
        self.delivered.append((message, reply, key))

    def texts(self) -> list[str]:
        return [reply.text for _, reply, _ in self.delivered]

    def by_conversation(self) -> dict[str, list[str]]:
        out: dict[str, list[str]] = defaultdict(list)
        for message, reply, _ in self.delivered:
            out[message.channel].append(reply.text)
        return dict(out)


class FakePlatformServer(BackgroundServer):
    """`POST /messages` with JSON {key, channel, in_reply_to, text}. Runs in its own thread; a context manager.

    `posts` holds every request; `shown` one message per key, as a user would see them.
    `fail_next` holds statuses to answer the next posts with (429 carries Retry-After: 0).
    """

    def __init__(self) -> None:
        super().__init__()
        self.posts: list[dict[str, Any]] = []
        self.shown: dict[str, dict[str, Any]] = {}
        self.fail_next: list[int] = []
        self._lock = threading.Lock()

    @property
    def url(self) -> str:
        return self.base_url

    def _app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/messages", self._post)
        return app

    async def _post(self, request: web.Request) -> web.Response:
        body = await request.json()
        with self._lock:
            self.posts.append(body)
            if self.fail_next:
                status = self.fail_next.pop(0)
                return web.json_response({"error": "injected"}, status=status, headers={"Retry-After": "0"})
            first = self.shown.setdefault(body["key"], body)
        return web.json_response({"ok": True, "id": first["key"]})

    def shown_count(self) -> int:
        with self._lock:
            return len(self.shown)


class HTTPPlatform:
    """The adapter side: posts replies to a FakePlatformServer, mapping its failures to DeliveryError.
    It cannot show approval requests: a call that needs one is refused."""

    def __init__(self, base_url: str, name: str = "test") -> None:
        self.base_url = base_url
        self.name = name
        self.resumable = True

    async def request_approval(self, request: ApprovalRequest) -> PromptLocation | None:
        raise NotImplementedError("this platform shows no approval requests")

    async def approval_settled(self, request: ApprovalRequest) -> None:
        return None

    async def deliver(self, message: IncomingMessage, reply: Reply, key: str) -> None:
        payload = {"key": key, "channel": message.channel, "in_reply_to": message.event_id, "text": reply.text}
        try:
            async with (
                aiohttp.ClientSession() as session,
                session.post(f"{self.base_url}/messages", json=payload) as response,
            ):
                if response.status == 429 or response.status >= 500:
                    retry_after = float(response.headers.get("Retry-After", "1"))
                    raise DeliveryError(f"platform answered {response.status}", retry_after=retry_after)
                if response.status >= 400:
                    raise DeliveryError(f"platform refused the post ({response.status})", transient=False)
        except aiohttp.ClientError as exc:
            raise DeliveryError(f"platform unreachable ({type(exc).__name__})") from None
