"""A deterministic engine for tests: answers from a script and keeps every request it received."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from typing import Any

from dspy.lm15 import Message, Request, Response, ServerError, Usage

Scripted = str | dict[str, Any] | Exception | Callable[[Request], "str | dict[str, Any]"]


def request_text(request: Request) -> str:
    """Everything the model was shown (system prompt and messages) as one string, for assertions."""
    system = request.system if isinstance(request.system, str) else "".join(p.text for p in request.system or ())
    body = "\n".join("".join(getattr(p, "text", "") or "" for p in m.parts) for m in request.messages)
    return f"{system}\n{body}"


class ScriptedEngine:
    """Each call takes the next entry: a string or dict (sent as JSON), an exception (raised) or a function.

    With the script used up, `responder` (if given) answers every further call: concurrent runs interleave
    their calls, so they are scripted by what each request says rather than by order.
    """

    def __init__(self, script: Iterable[Scripted] = (), responder: Scripted | None = None) -> None:
        self.script = list(script)
        self.responder = responder
        self.requests: list[Request] = []

    def add(self, *entries: Scripted) -> None:
        self.script.extend(entries)

    def complete(self, request: Request) -> Response:
        self.requests.append(request)
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

    def stream(self, request: Request) -> Any:
        raise NotImplementedError

    def close(self) -> None:
        pass


class AsyncScriptedEngine:
    def __init__(self, engine: ScriptedEngine) -> None:
        self.engine = engine

    async def complete(self, request: Request) -> Response:
        return self.engine.complete(request)

    def stream(self, request: Request) -> Any:
        raise NotImplementedError

    async def aclose(self) -> None:
        pass
