"""A fake OpenAI-compatible chat completions server on 127.0.0.1, so the real `dspy.LM` HTTP path is tested.

It plays a competent model for the ReAct prompts DSPy sends: arithmetic goes to the calculator, a question
answered by a "Known facts" line is answered from it. Every request body is kept for assertions.
"""

from __future__ import annotations

import asyncio
import json
import re
import threading
import time
from collections.abc import Callable
from typing import Any

from aiohttp import web

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


class FakeOpenAI:
    """Runs in its own thread and event loop; use as a context manager. `url` is the API base."""

    def __init__(self, brain: Brain = react_brain) -> None:
        self.brain = brain
        self.requests: list[dict[str, Any]] = []
        self.fail_next: list[int] = []
        # While set, every request fails with this status: an outage.
        self.down: int | None = None
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._runner: web.AppRunner | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def __enter__(self) -> FakeOpenAI:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(10)
        return self

    def __exit__(self, *exc: object) -> None:
        asyncio.run_coroutine_threadsafe(self._stop(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    async def _start(self) -> None:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._chat)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    async def _stop(self) -> None:
        if self._runner:
            await self._runner.cleanup()

    async def _chat(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.requests.append(body)
        if self.fail_next or self.down:
            status = self.fail_next.pop(0) if self.fail_next else self.down
            return web.json_response({"error": {"message": "fake failure", "type": "server_error"}}, status=status)
        system = "\n".join(m["content"] for m in body["messages"] if m["role"] == "system")
        user = "\n".join(m["content"] for m in body["messages"] if m["role"] == "user")
        content = json.dumps(self.brain(system, user))
        return web.json_response(
            {
                "id": f"chatcmpl-{len(self.requests)}",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": body.get("model", "fake"),
                "choices": [
                    {"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}
                ],
                "usage": {"prompt_tokens": 10, "completion_tokens": 10, "total_tokens": 20},
            }
        )

    def prompts(self) -> list[str]:
        """Every request's messages as one string each."""
        return ["\n".join(str(m.get("content")) for m in r["messages"]) for r in self.requests]
