"""The agent runtime: one message in, one reply out, through a DSPy ReAct agent with per-channel memory."""

from __future__ import annotations

import functools
import logging
import re
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import dspy

from agent.constraints import constrain
from agent.engines import ModelHandle
from agent.memory import ChainRecord, Memory
from agent.messages import IncomingMessage, Reply, Step
from agent.react import RobustReAct
from agent.tools.context import ToolContext, tool_context

log = logging.getLogger("parley.agent")

# "remember that the standup is at 9:30", "remember: deploys freeze on Fridays"
REMEMBER = re.compile(r"^\s*(?:please\s+)?remember(?:\s+that)?\s*[:,]?\s+(?P<fact>.+?)\s*[.!]?\s*$", re.I | re.S)
FACT_VERB = re.compile(r"\s+(?:is|are|was|will be|=)\s+", re.I)
LEADING_ARTICLE = re.compile(r"^(?:the|our|my|a|an|this|that)\s+", re.I)


class Answer(dspy.Signature):  # type: ignore[misc]
    """You are Parley, a helpful assistant in a team chat. Answer the question briefly and correctly.
    Use the context: it holds facts remembered in this channel and the recent conversation."""

    context: str = dspy.InputField(desc="facts remembered in this channel and the recent conversation")
    question: str = dspy.InputField()
    answer: str = dspy.OutputField(desc="the reply to post in the chat")


@dataclass(frozen=True)
class AgentOptions:
    max_iters: int = 6
    max_message_chars: int = 8000
    context_turns: int = 8
    facts_k: int = 5


def fact_from_statement(statement: str) -> tuple[str, str]:
    """Split "the standup is at 9:30" into a key ("standup") and the statement as the value."""
    subject = FACT_VERB.split(statement, maxsplit=1)[0]
    key = LEADING_ARTICLE.sub("", subject.strip()).strip() or statement
    if key == statement or len(key) > 60:
        key = " ".join(statement.split()[:5])
    return key.lower(), statement


def _tool_wrapper(tool: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[str]]:
    """Turn a tool's exception into a short observation instead of a traceback the model would see."""

    @functools.wraps(tool)
    async def call(*args: Any, **kwargs: Any) -> str:
        try:
            return str(await tool(*args, **kwargs))
        except Exception as exc:
            log.info("tool %s failed: %s", tool.__name__, exc)
            return f"Error: {exc}"

    return call


def steps_from_trajectory(trajectory: dict[str, Any]) -> tuple[Step, ...]:
    steps = []
    i = 0
    while f"tool_name_{i}" in trajectory:
        args = trajectory.get(f"tool_args_{i}") or {}
        steps.append(
            Step(
                thought=str(trajectory.get(f"thought_{i}", "")),
                tool=str(trajectory[f"tool_name_{i}"]),
                args=dict(args) if isinstance(args, dict) else {"value": args},
                observation=str(trajectory.get(f"observation_{i}", "")),
            )
        )
        i += 1
    return tuple(steps)


class Agent:
    """Answers messages. Holds one ReAct program; the conversation reaches tools through a context var."""

    def __init__(
        self,
        memory: Memory,
        model: ModelHandle,
        tools: Sequence[Callable[..., Awaitable[Any]]],
        options: AgentOptions = AgentOptions(),
    ) -> None:
        self.memory = memory
        self.model = model
        self.options = options
        self.react = RobustReAct(Answer, tools=[_tool_wrapper(t) for t in tools], max_iters=options.max_iters)
        if model.constrained:
            constrain(self.react)

    @property
    def tool_names(self) -> list[str]:
        return [name for name in self.react.tools if name != "finish"]

    async def respond(self, message: IncomingMessage) -> Reply:
        """Answer one message. Never raises for bad input or a failing model: the reply says what happened."""
        text = message.text.strip()
        if not text:
            return Reply("Your message is empty. Ask me something, for example: what is 12*7?", status="rejected")
        if len(text) > self.options.max_message_chars:
            return Reply(
                f"Your message is {len(text):,} characters long; the limit is "
                f"{self.options.max_message_chars:,}. Please shorten it or split it up.",
                status="rejected",
            )
        conv = message.conversation
        started = time.time()
        remember = REMEMBER.match(text)
        try:
            if remember:
                answer, steps = await self._remember(message, remember.group("fact"))
            else:
                answer, steps = await self._run_react(message, text)
        except Exception as exc:
            error_id = uuid.uuid4().hex[:12]
            log.exception("answering failed (error id %s): %s", error_id, type(exc).__name__)
            reply_text = (
                "Sorry, something went wrong on my side and I couldn't answer that "
                f"(error id {error_id}). Please try again."
            )
            chain = ChainRecord(
                question=text,
                answer="",
                status="error",
                model=self.model.name,
                started_at=started,
                duration_ms=(time.time() - started) * 1000,
                user_id=message.user,
                error_id=error_id,
            )
            chain_id = await self.memory.record_exchange(conv, chain, reply_text=reply_text)
            return Reply(reply_text, chain_id=chain_id, error_id=error_id, status="error")
        answer = answer.strip() or "I don't have an answer to that."
        chain = ChainRecord(
            question=text,
            answer=answer,
            status="answered",
            model=self.model.name,
            started_at=started,
            duration_ms=(time.time() - started) * 1000,
            steps=steps,
            user_id=message.user,
        )
        chain_id = await self.memory.record_exchange(conv, chain, reply_text=answer)
        return Reply(answer, steps=steps, chain_id=chain_id)

    async def _remember(self, message: IncomingMessage, statement: str) -> tuple[str, tuple[Step, ...]]:
        """An explicit "remember that ..." is stored as a fact by rule, whatever the model would have done."""
        key, value = fact_from_statement(statement)
        await self.memory.add_fact(message.conversation.channel, key, value)
        observation = f"Remembered {key}: {value}"
        step = Step("The user asked me to remember this.", "remember_fact", {"key": key, "value": value}, observation)
        return f"Got it, I'll remember that {value}.", (step,)

    async def _run_react(self, message: IncomingMessage, text: str) -> tuple[str, tuple[Step, ...]]:
        conv = message.conversation
        context = await self.memory.context_text(conv, text, turns=self.options.context_turns, k=self.options.facts_k)
        with (
            tool_context(ToolContext(self.memory, conv, message.user)),
            dspy.context(lm=self.model.lm, adapter=dspy.JSONAdapter()),
        ):
            prediction = await self.react.acall(context=context, question=text)
        return str(prediction.answer), steps_from_trajectory(prediction.trajectory)
