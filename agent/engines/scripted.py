"""A deterministic engine for tests: answers from a script and keeps every request it received."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from typing import Any, TypeAlias

from dspy.lm15 import (
    ImagePart,
    InvalidRequestError,
    Message,
    Request,
    Response,
    ServerError,
    StreamDeltaEvent,
    StreamEndEvent,
    StreamStartEvent,
    TextDelta,
    Usage,
)

StreamEvent: TypeAlias = StreamStartEvent | StreamDeltaEvent | StreamEndEvent
Scripted = str | dict[str, Any] | Exception | Callable[[Request], "str | dict[str, Any]"]


def request_text(request: Request) -> str:
    """Everything the model was shown (system prompt and messages) as one string, for assertions."""
    system = request.system if isinstance(request.system, str) else "".join(p.text for p in request.system or ())
    body = "\n".join("".join(getattr(p, "text", "") or "" for p in m.parts) for m in request.messages)
    return f"{system}\n{body}"


def request_images(request: Request) -> list[ImagePart]:
    """The images the model was shown, in order."""
    return [p for m in request.messages for p in m.parts if isinstance(p, ImagePart)]


def echo(request: Request) -> dict[str, Any]:
    """A responder that finishes at once and answers with the question, so each reply names its message."""
    text = request_text(request)
    if "next_tool_name" in text:
        return {"next_thought": "answer", "next_tool_name": "finish", "next_tool_args": {}}
    question = text.rsplit("[[ ## question ## ]]", 1)[1].split("\n\n", 1)[0].strip()
    return {"reasoning": "echo", "answer": f"re: {question}"}


class ScriptedEngine:
    """Each call takes the next entry: a string or dict (sent as JSON), an exception (raised) or a function.

    With the script used up, `responder` (if given) answers every further call: concurrent runs interleave
    their calls, so they are scripted by what each request says rather than by order.
    """

    def __init__(
        self,
        script: Iterable[Scripted] = (),
        responder: Scripted | None = None,
        *,
        delay_s: float | Callable[[], float] = 0.0,
        compact_prompts: bool = False,
        vision: bool = False,
        streams: bool = False,
        chunk_chars: int = 8,
        chunk_delay_s: float = 0.0,
    ) -> None:
        self.script = list(script)
        # Writes its replies `chunk_chars` characters every `chunk_delay_s` seconds, whether it streams them (when
        # asked to: `streams`) or hands them over whole at the end.
        self.streams = streams
        self.chunk_chars = max(chunk_chars, 1)
        self.chunk_delay_s = chunk_delay_s
        # Takes images. A text-only one refuses a request with an image, as a provider would.
        self.vision = vision
        # Stand in for the embedded engine: the adapter sends the compact prompts of `agent.compact`.
        self.compact_prompts = compact_prompts
        self.responder = responder
        # Seconds each call takes (or a function giving them): a provider's latency, for ordering tests and benchmarks.
        self.delay_s = delay_s
        self.requests: list[Request] = []

    def delay(self) -> float:
        return self.delay_s() if callable(self.delay_s) else self.delay_s

    def add(self, *entries: Scripted) -> None:
        self.script.extend(entries)

    def complete(self, request: Request) -> Response:
        if delay := self.delay():
            time.sleep(delay)
        response = self.answer(request)
        time.sleep(self.writing_s(response))
        return response

    def writing_s(self, response: Response) -> float:
        """How long writing the whole reply takes at the engine's pace."""
        return self.chunk_delay_s * -(-len(response.text or "") // self.chunk_chars)

    def answer(self, request: Request) -> Response:
        """The next scripted response, without the delay."""
        self.requests.append(request)
        if not self.vision and request_images(request):
            raise InvalidRequestError("this model does not take images", provider="scripted")
        if self.script:
            entry = self.script.pop(0)
        elif self.responder is not None:
            entry = self.responder
        else:
            raise ServerError("scripted engine has no more responses", provider="scripted")
        if isinstance(entry, Exception):
            raise entry
        if callable(entry):
            entry = entry(request)
        text = entry if isinstance(entry, str) else json.dumps(entry)
        return Response(
            id=None,
            model="scripted",
            message=Message.assistant(text),
            finish_reason="stop",
            usage=Usage(input_tokens=len(request_text(request)) // 4, output_tokens=len(text) // 4),
        )

    def stream(self, request: Request) -> Iterator[StreamEvent]:
        if delay := self.delay():
            time.sleep(delay)
        started, sent = time.monotonic(), 0
        for event in self.events(self.answer(request)):
            if isinstance(event, StreamDeltaEvent):
                sent += 1
                time.sleep(self.until(started, sent))
            yield event

    def until(self, started: float, chunks: int) -> float:
        """The wait before the `chunks`-th chunk goes out, kept to the pace from `started`: sleeps that overrun
        do not add up, so streaming a reply takes as long as writing it whole."""
        return max(0.0, started + chunks * self.chunk_delay_s - time.monotonic())

    def events(self, response: Response) -> Iterator[StreamEvent]:
        """A response as a provider streams it: its text in pieces of `chunk_chars`, the usage at the end."""
        text, size = response.text or "", self.chunk_chars
        yield StreamStartEvent(model=response.model)
        for i in range(0, len(text), size):
            yield StreamDeltaEvent(delta=TextDelta(text=text[i : i + size], part_index=0))
        yield StreamEndEvent(finish_reason="stop", usage=response.usage)

    def close(self) -> None:
        pass


class AsyncScriptedEngine:
    def __init__(self, engine: ScriptedEngine) -> None:
        self.engine = engine

    async def complete(self, request: Request) -> Response:
        if delay := self.engine.delay():
            await asyncio.sleep(delay)
        response = self.engine.answer(request)
        if writing := self.engine.writing_s(response):
            await asyncio.sleep(writing)
        return response

    async def stream(self, request: Request) -> AsyncIterator[StreamEvent]:
        if delay := self.engine.delay():
            await asyncio.sleep(delay)
        started, sent = time.monotonic(), 0
        for event in self.engine.events(self.engine.answer(request)):
            if isinstance(event, StreamDeltaEvent):
                sent += 1
                await asyncio.sleep(self.engine.until(started, sent))
            yield event

    async def aclose(self) -> None:
        pass
