"""A fake OpenAI-compatible chat completions server on 127.0.0.1, so the real `dspy.LM` HTTP path is tested.

It plays a competent model for the ReAct prompts DSPy sends: arithmetic goes to the calculator, a question
answered by a "Known facts" line is answered from it. Every request body is kept for assertions.

Failures, for the resilience tests and benchmarks::

    with FakeOpenAI() as fake:
        fake.fail_next = [500, Fault.rate_limited(retry_after=0)]  # the next two requests fail, in order
        fake.down = Fault.dropped()  # every later request fails this way (an outage) until set to None
        fake.latency_s = 0.2  # every request waits this long first (a slow provider)

`fail_next` takes items that are an HTTP status (answered with OpenAI's error JSON) or a `Fault`; `down`
takes one of either, or None; `fail_next` is used up first. The faults:

- `Fault.error(status, retry_after=None)`: an error status with OpenAI's error JSON (what a bare int means);
- `Fault.rate_limited(retry_after=1)`: 429 with a `Retry-After` header (seconds) and OpenAI's error JSON;
- `Fault.slow(delay_s)`: wait `delay_s`, then answer normally (so a client timeout shorter than it fires);
- `Fault.dropped()`: close the TCP connection without sending any HTTP response;
- `Fault.not_json()`: status 200 with a body that is not JSON (a proxy's HTML page);
- `Fault.no_choices()`: status 200 with a completion JSON that lacks `choices`.

`requests` holds every request body received, failed or not, and `served` what each one got (the `Fault`, or
None for a normal answer), in the same order. A handler whose client hung up is cancelled.

A request with `"stream": true` is answered as OpenAI streams: server-sent events, one `chat.completion.chunk`
per `chunk_chars` characters of the content, `chunk_delay_s` apart, the usage in a last chunk when
`stream_options.include_usage` asks for it, then `data: [DONE]`. `Fault.cut(after)` sends that many chunks and
then drops the connection: a provider failing mid-answer.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from tests.fakes.background import BackgroundServer

Brain = Callable[[str, str], dict[str, Any]]


def react_brain(system: str, user: str) -> dict[str, Any]:
    """Decide a ReAct step or the final answer from the prompt text, like a well-behaved model."""
    question = _field(user, "question")
    observations = re.findall(r"\[\[ ## observation_\d+ ## \]\]\n(.*?)(?=\n\n\[\[|\n\nRespond with|\Z)", user, re.S)
    if "next_tool_name" in system:
        arithmetic = re.search(r"[\d.]+\s*[-+*/]\s*[\d.]+", question)
        if arithmetic and not observations:
            return {
                "next_thought": "This needs arithmetic.",
                "next_tool_name": "calculator",
                "next_tool_args": {"expression": arithmetic.group(0)},
            }
        return {"next_thought": "I can answer now.", "next_tool_name": "finish", "next_tool_args": {}}
    facts = re.findall(r"^- [^:\n]+: (.+)$", _field(user, "context"), re.M)
    useful = [o for o in observations if o.strip() != "Completed."]
    if useful:
        answer = useful[-1].strip()
    elif facts:
        answer = facts[0].strip()
    else:
        answer = "I don't know."
    return {"reasoning": "From the context.", "answer": answer}


def _field(text: str, name: str) -> str:
    match = re.search(rf"\[\[ ## {name} ## \]\]\n(.*?)(?=\n\n\[\[ ## |\n\nRespond with|\Z)", text, re.S)
    return match.group(1).strip() if match else ""


# What every answer reports it used.
USAGE = {"prompt_tokens": 10, "completion_tokens": 10, "total_tokens": 20}

_ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 404: "not_found_error"}


@dataclass(frozen=True)
class Fault:
    """How one request goes wrong. Build it with the class methods; the fields say what the server does:
    wait `delay_s`; then drop the connection (`drop`), or answer normally (`answer`), or send `status` with
    `body` (OpenAI's error JSON for the status when None) and `headers`."""

    status: int = 500
    body: str | None = None
    content_type: str = "application/json"
    headers: Mapping[str, str] = field(default_factory=dict)
    delay_s: float = 0.0
    drop: bool = False
    answer: bool = False
    # A streamed answer: drop the connection after this many content chunks.
    cut_after: int | None = None

    @classmethod
    def error(cls, status: int = 500, message: str = "fake failure", *, retry_after: float | None = None) -> Fault:
        """`status` with OpenAI's error JSON; with `retry_after`, a `Retry-After` header too."""
        headers = {} if retry_after is None else {"Retry-After": f"{retry_after:g}"}
        return cls(status=status, body=_error_json(status, message), headers=headers)

    @classmethod
    def rate_limited(cls, retry_after: float = 1) -> Fault:
        message = "Rate limit reached for requests. Please try again later."
        body = _error_json(429, message, type_="requests", code="rate_limit_exceeded")
        return cls(status=429, body=body, headers={"Retry-After": f"{retry_after:g}"})

    @classmethod
    def slow(cls, delay_s: float) -> Fault:
        return cls(status=200, delay_s=delay_s, answer=True)

    @classmethod
    def dropped(cls) -> Fault:
        return cls(status=0, drop=True)

    @classmethod
    def cut(cls, after: int = 2) -> Fault:
        """A streamed answer that stops after `after` content chunks, the connection dropped."""
        return cls(status=200, answer=True, cut_after=after)

    @classmethod
    def not_json(cls, body: str = "<html><body><h1>502 Bad Gateway</h1></body></html>") -> Fault:
        return cls(status=200, body=body, content_type="text/html")

    @classmethod
    def no_choices(cls) -> Fault:
        body = {"id": "chatcmpl-broken", "object": "chat.completion", "created": 0, "model": "fake"}
        return cls(status=200, body=json.dumps(body))


def _error_json(status: int, message: str, *, type_: str | None = None, code: str | None = None) -> str:
    error = {"message": message, "type": type_ or _ERROR_TYPES.get(status, "server_error"), "param": None}
    return json.dumps({"error": {**error, "code": code}})


def as_fault(failure: int | Fault) -> Fault:
    return failure if isinstance(failure, Fault) else Fault.error(failure)


class FakeOpenAI(BackgroundServer):
    """Runs in its own thread and event loop; use as a context manager. `url` is the API base."""

    def __init__(self, brain: Brain = react_brain, *, latency_s: float = 0.0) -> None:
        super().__init__()
        self.brain = brain
        self.requests: list[dict[str, Any]] = []
        self.served: list[Fault | None] = []
        # The next requests fail, one item each, in order.
        self.fail_next: list[int | Fault] = []
        # While set, every request fails this way: an outage.
        self.down: int | Fault | None = None
        # Every request waits this long before anything else happens: a slow provider.
        self.latency_s = latency_s
        # A streamed answer: how many characters of the content each chunk carries, and the pause between them.
        self.chunk_chars = 8
        self.chunk_delay_s = 0.0

    @property
    def url(self) -> str:
        return f"{self.base_url}/v1"

    def _app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._chat)
        return app

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        self.requests.append(body)
        failure = self.fail_next.pop(0) if self.fail_next else self.down
        fault = None if failure is None else as_fault(failure)
        self.served.append(fault)
        if self.latency_s:
            await asyncio.sleep(self.latency_s)
        if fault is not None:
            await asyncio.sleep(fault.delay_s)
            if fault.drop:
                assert request.transport is not None
                request.transport.close()
                # Nothing may be sent: aiohttp takes cancellation as a client gone and writes no response.
                raise asyncio.CancelledError
            if not fault.answer:
                return web.Response(
                    text=fault.body if fault.body is not None else _error_json(fault.status, "fake failure"),
                    status=fault.status,
                    content_type=fault.content_type,
                    headers=fault.headers,
                )
        if body.get("stream"):
            return await self._stream(request, body, None if fault is None else fault.cut_after)
        return self._answer(body)

    def _content(self, body: dict[str, Any]) -> str:
        system = "\n".join(m["content"] for m in body["messages"] if m["role"] == "system")
        user = "\n".join(m["content"] for m in body["messages"] if m["role"] == "user")
        return json.dumps(self.brain(system, user))

    def _answer(self, body: dict[str, Any]) -> web.Response:
        return web.json_response(
            {
                "id": f"chatcmpl-{len(self.requests)}",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": body.get("model", "fake"),
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": self._content(body)},
                        "finish_reason": "stop",
                    }
                ],
                "usage": USAGE,
            }
        )

    async def _stream(self, request: web.Request, body: dict[str, Any], cut_after: int | None) -> web.StreamResponse:
        content = self._content(body)
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await response.prepare(request)
        base = {
            "id": f"chatcmpl-{len(self.requests)}",
            "object": "chat.completion.chunk",
            "created": int(time.time()),
            "model": body.get("model", "fake"),
        }

        async def send(choices: list[dict[str, Any]], **extra: Any) -> None:
            await response.write(f"data: {json.dumps({**base, 'choices': choices, **extra})}\n\n".encode())

        await send([{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}])
        pieces = [content[i : i + self.chunk_chars] for i in range(0, len(content), self.chunk_chars)]
        for sent, piece in enumerate(pieces):
            if cut_after is not None and sent == cut_after:
                assert request.transport is not None
                request.transport.close()
                return response
            if self.chunk_delay_s:
                await asyncio.sleep(self.chunk_delay_s)
            await send([{"index": 0, "delta": {"content": piece}, "finish_reason": None}])
        await send([{"index": 0, "delta": {}, "finish_reason": "stop"}])
        if (body.get("stream_options") or {}).get("include_usage"):
            await send([], usage=USAGE)
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        return response

    def prompts(self) -> list[str]:
        """Every request's messages as one string each."""
        return ["\n".join(str(m.get("content")) for m in r["messages"]) for r in self.requests]

    def failed(self) -> int:
        """How many requests were served a fault (slow answers included)."""
        return sum(1 for fault in self.served if fault is not None)
