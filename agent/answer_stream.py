"""The answer's text as the model writes it: provider tokens turned into `AnswerText` events.

DSPy streams a model call when `send_stream` is set in its context: each chunk of the provider's reply is handed
to `send_stream.send`. Only the call that writes the reply streams (ReAct's extract step, decompose's synthesis),
and only with a model that streams (`ModelHandle.streams`). The reply is a JSON object (the JSON adapter), so the
`answer` field's text is read from the partial JSON with jiter, escapes decoded, as it grows. DSPy's own
`StreamListener` is not used: for JSON adapters it hands out the field's raw JSON tokens (quotes and escapes
included) and it knows adapters by class name, so our `CachedJSONAdapter` is not one of them.

What is shown is always a prefix of the field's value as the reply will have it (cleaned like any model output,
trailing whitespace held back; jiter leaves out an escape cut in half): the platform's stream then only has to
add what the final reply has beyond it. Each call starts afresh (`streaming_answer`), so a call that broke off
mid-way leaves nothing behind; a later call (the next model of the fallback chain) shows more only where its text
goes on from what is shown.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

import dspy
import jiter

from agent.events import AnswerText, Progress, emit
from agent.messages import clean_text


class AnswerTokens:
    """DSPy's `send_stream` for the calls that write one answer: emits the `field`'s new text to `progress`."""

    def __init__(self, progress: Progress, field: str = "answer") -> None:
        self.progress = progress
        self.field = field
        self.shown = ""  # what went to `progress` so far
        self._raw = ""  # the current call's content so far
        self._call_ended = False

    def new_call(self) -> None:
        """A model call that writes the answer begins: what an earlier one left unfinished is dropped."""
        self._raw, self._call_ended = "", False

    async def send(self, chunk: Any) -> None:
        """One chunk of a streamed completion (DSPy's `EngineChunk` or litellm's, both OpenAI-shaped)."""
        try:
            choice = chunk.choices[0]
        except (AttributeError, IndexError, TypeError):
            return  # a usage-only chunk, or something else that carries no text
        if self._call_ended:  # a new call (a retry within the same one): its content starts afresh
            self.new_call()
        text = getattr(choice.delta, "content", None)
        if text:
            self._raw += text
            self._advance()
        if getattr(choice, "finish_reason", None):
            self._call_ended = True

    def _advance(self) -> None:
        value = self._value()
        if value is None:
            return
        ready = clean_text(value).strip()
        if len(ready) > len(self.shown) and ready.startswith(self.shown):
            piece, self.shown = ready[len(self.shown) :], ready
            emit(self.progress, AnswerText(piece))

    def _value(self) -> str | None:
        """The field's text in the content so far, or None while it has not begun (or the content is no JSON)."""
        try:
            parsed = jiter.from_json(self._raw.encode(), partial_mode="trailing-strings")
        except ValueError:
            return None  # cut inside an escape, or not JSON at all: the reply shows it whole at the end
        value = parsed.get(self.field) if isinstance(parsed, dict) else None
        return value if isinstance(value, str) else None

    def rest(self, answer: str) -> str:
        """What of the final `answer` has not been shown; nothing when the shown text is not its beginning (the
        platform's stream then replaces what it shows with the reply at the end)."""
        return answer[len(self.shown) :] if answer.startswith(self.shown) else ""


# The answer of the run under way streams into this; None: the model does not stream, or nobody watches.
_tokens: ContextVar[AnswerTokens | None] = ContextVar("parley_answer_tokens", default=None)


@contextmanager
def answer_tokens(tokens: AnswerTokens | None) -> Iterator[None]:
    """Around one model's run of an answer: the call that writes the reply streams into `tokens`."""
    reset = _tokens.set(tokens)
    try:
        yield
    finally:
        _tokens.reset(reset)


@contextmanager
def streaming_answer() -> Iterator[None]:
    """Around the model call whose output is the reply: it streams, when the run streams its answer."""
    tokens = _tokens.get()
    if tokens is None:
        yield
        return
    tokens.new_call()
    with dspy.context(send_stream=tokens):
        yield
