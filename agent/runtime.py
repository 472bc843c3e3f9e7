"""The agent runtime: one message in, one reply out, through a DSPy ReAct agent with per-channel memory."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from types import MappingProxyType

import dspy
from structlog.contextvars import bound_contextvars

from agent.adapter import CachedJSONAdapter
from agent.answer_stream import AnswerTokens, answer_tokens
from agent.attachments.models import AttachmentRecord, Outbox
from agent.attachments.reader import Readings, read_attachments
from agent.chains import AnswerMeter, metering
from agent.constraints import constrain, constrain_output
from agent.engines import ModelHandle
from agent.events import AnswerText, Progress, emit
from agent.memory import context_text
from agent.messages import APOLOGY, IncomingMessage, Reply, Step, clean_text, new_error_id
from agent.modes import DecomposeMode, Mode, Outcome, ReactMode, VoteMode
from agent.options import UNAVAILABLE_REPLY
from agent.options import AgentOptions as AgentOptions  # where callers have always found it
from agent.parking import Lease, held
from agent.pricing import metered_cost
from agent.profile import DEFAULT_PROFILE, ChannelProfile
from agent.react import RobustReAct
from agent.resilience import CircuitBreaker, CircuitOpen, answer_deadline, caused_by_input
from agent.storage.base import Storage
from agent.storage.models import ChainRecord
from agent.tools.context import ToolContext, tool_context
from agent.tools.runner import RunStopped, ToolRunner

log = logging.getLogger("parley.agent")

# Told about each answered message and its reasoning chain.
ChainObserver = Callable[[IncomingMessage, ChainRecord], None]

# "remember that the standup is at 9:30", "remember: deploys freeze on Fridays"
REMEMBER = re.compile(r"^\s*(?:please\s+)?remember(?:\s+that)?\s*[:,]?\s+(?P<fact>.+?)\s*[.!]?\s*$", re.I | re.S)
# The tool the "remember that ..." rule stands in for: the rule applies only where the model could call it.
REMEMBER_TOOL = "remember_fact"
FACT_VERB = re.compile(r"\s+(?:is|are|was|will be|=)\s+", re.I)
LEADING_ARTICLE = re.compile(r"^(?:the|our|my|a|an|this|that)\s+", re.I)


class Answer(dspy.Signature):  # type: ignore[misc]
    """You are Parley, a helpful assistant in a team chat. Answer the question briefly and correctly.
    Use the context: it holds facts remembered in this channel and the recent conversation."""

    context: str = dspy.InputField(desc="facts remembered in this channel and the recent conversation")
    question: str = dspy.InputField()
    answer: str = dspy.OutputField(desc="the reply to post in the chat")


class AnswerSeeing(Answer):
    """You are Parley, a helpful assistant in a team chat. Answer the question briefly and correctly.
    Use the context: it holds facts remembered in this channel and the recent conversation, and the files
    shared with the question; the images among them are given to you as images."""

    images: list[dspy.Image] = dspy.InputField(desc="the images shared with the question, in the order listed")


# The question of a message that shares files and says nothing.
ONLY_FILES = "Please look at the shared files and tell me what they contain."


@dataclass(frozen=True)
class Resilience:
    """What the agent falls back on: a second model, each model's breaker, and the text of last resort."""

    fallback: ModelHandle | None = None
    breaker: CircuitBreaker | None = None
    fallback_breaker: CircuitBreaker | None = None
    fallback_reply: str = UNAVAILABLE_REPLY
    # The breakers of the named models (`Agent(models=...)`), by name; a name without one gets its own.
    breakers: Mapping[str, CircuitBreaker] = field(default_factory=dict)


def fact_from_statement(statement: str) -> tuple[str, str]:
    """Split "the standup is at 9:30" into a key ("standup") and the statement as the value."""
    subject = FACT_VERB.split(statement, maxsplit=1)[0]
    key = LEADING_ARTICLE.sub("", subject.strip()).strip() or statement
    if key == statement or len(key) > 60:
        key = " ".join(statement.split()[:5])
    return key.lower(), statement


FALLBACK_REPLY = "fallback_reply"


@dataclass(frozen=True)
class Exchange:
    """A reply and the reasoning chain that produced it, for the caller to record (`Storage.record_exchange`).
    No chain for a message refused outright (empty, too long): there was no reasoning to keep."""

    reply: Reply
    chain: ChainRecord | None = None


class NoModelAnswered(Exception):
    """Every model of the fallback chain failed or was skipped by its open breaker."""

    def __init__(self, error_id: str) -> None:
        super().__init__(error_id)
        self.error_id = error_id


def not_the_providers(exc: BaseException) -> bool:
    """Failures the breaker must not count: the request's own content, or a gate that ended the answer."""
    return isinstance(exc, RunStopped) or caused_by_input(exc)


class InputRefused(Exception):
    """The last model tried refused this message's content (see `caused_by_input`): the person is told to
    rephrase; the provider is fine, so no breaker moved and the fallback reply would mislead."""

    def __init__(self, error_id: str) -> None:
        super().__init__(error_id)
        self.error_id = error_id


INPUT_REFUSED = (
    "Sorry, the model could not take that message as written (error id {error_id}). "
    "Please rephrase it, or leave out unusual characters or very long pasted text."
)


# No named models: the default model (and its fallback) answers every channel.
NO_MODELS: Mapping[str, ModelHandle] = MappingProxyType({})
# Distinct channel profiles whose built agents are kept; more are rebuilt when they come back (a few ms).
MODULE_CACHE = 16
# What a built agent depends on: allowed tools, added instructions, mode, images shown, steps constrained.
ModuleKey = tuple[frozenset[str] | None, str, str, bool, bool]


class Agent:
    """Answers messages. One shared instance serves every conversation: per-request state lives in
    `dspy.context` and the tool context, both context variables."""

    def __init__(
        self,
        storage: Storage,
        model: ModelHandle,
        runner: ToolRunner,
        options: AgentOptions = AgentOptions(),
        resilience: Resilience | None = None,
        observers: Sequence[ChainObserver] = (),
        models: Mapping[str, ModelHandle] = NO_MODELS,
    ) -> None:
        self.storage = storage
        # Told about every chain (metrics count model calls and tokens from it).
        self.observers = list(observers)
        self.model = model
        self.runner = runner
        self.options = options
        self.resilience = resilience or Resilience()
        # The fallback chain: each model behind its own breaker, then the fallback reply.
        self.paths = [(model, self.resilience.breaker or CircuitBreaker(model.name))]
        if self.resilience.fallback is not None:
            fallback = self.resilience.fallback
            self.paths.append((fallback, self.resilience.fallback_breaker or CircuitBreaker(fallback.name)))
        # The named models a channel may choose: each is its own chain, the model then the fallback model.
        self.named_paths: dict[str, list[tuple[ModelHandle, CircuitBreaker]]] = {}
        for name, handle in models.items():
            self.named_paths[name] = self._chain_of(name, handle)
        self.react: RobustReAct
        self.mode: Mode
        # Built agents per (tools, instructions, mode, shown images, constrained), the least recently used
        # dropped past MODULE_CACHE: each channel's profile gets its own, built once.
        self._modules: OrderedDict[ModuleKey, Mode] = OrderedDict()
        self._tools_revision = -1
        self._sync_tools()
        self._slots = asyncio.Semaphore(options.concurrency)

    def _chain_of(self, name: str, handle: ModelHandle) -> list[tuple[ModelHandle, CircuitBreaker]]:
        """A named model's fallback chain; a model that is the default or the fallback keeps its breaker."""
        rest = [(h, b) for h, b in self.paths[1:] if h is not handle]
        if handle is self.model:
            return [self.paths[0], *rest]
        for other in self.named_paths.values():
            if other[0][0] is handle:  # two names for one model share its breaker
                return [other[0], *rest]
        if self.resilience.fallback is handle:
            return self.paths[1:]
        breaker = self.resilience.breakers.get(name) or CircuitBreaker(f"model:{name}")
        return [(handle, breaker), *rest]

    @property
    def all_paths(self) -> list[tuple[ModelHandle, CircuitBreaker]]:
        """Every model with its breaker once: the default, the fallback and the named models."""
        seen: dict[int, tuple[ModelHandle, CircuitBreaker]] = {}
        for path in [self.paths, *self.named_paths.values()]:
            for handle, breaker in path:
                seen.setdefault(id(breaker), (handle, breaker))
        return list(seen.values())

    def _paths(self, profile: ChannelProfile) -> list[tuple[ModelHandle, CircuitBreaker]]:
        """The fallback chain a profile answers on: its named model's, else the default's."""
        if profile.model is None:
            return self.paths
        chain = self.named_paths.get(profile.model)
        if chain is None:
            log.warning("no model named %r; answering on the default model", profile.model)
            return self.paths
        return chain

    def _sync_tools(self) -> None:
        """Build the ReAct agent and its mode from the registry's enabled tools, again whenever the registry
        changed since (an MCP server connected, or changed its tool list). A run under way keeps the agent it
        started with; the next message sees the new tools."""
        registry = self.runner.registry
        if registry.revision == self._tools_revision:
            return
        self._tools_revision = registry.revision
        self._modules.clear()
        self.react, self.mode = self._build(
            None, "", self.options.mode, seeing=False, constrained=self.model.constrained
        )

    def _module(self, profile: ChannelProfile, *, seeing: bool, constrained: bool) -> Mode:
        """The mode (over its ReAct agent) for a profile: built once per distinct profile, while the tools last.

        Shown images, it is never constrained: the embedded model takes none."""
        self._sync_tools()
        mode = profile.mode or self.options.mode
        key: ModuleKey = (profile.tools, profile.instructions.strip(), mode, seeing, constrained and not seeing)
        if key == (None, "", self.options.mode, False, self.model.constrained):
            return self.mode
        built = self._modules.get(key)
        if built is None:
            built = self._modules[key] = self._build(*key[:3], seeing=key[3], constrained=key[4])[1]
            while len(self._modules) > MODULE_CACHE:
                self._modules.popitem(last=False)
        else:
            self._modules.move_to_end(key)
        return built

    def _build(
        self, tools: frozenset[str] | None, instructions: str, mode: str, *, seeing: bool, constrained: bool
    ) -> tuple[RobustReAct, Mode]:
        """A ReAct agent offered only `tools` (None: every enabled one), its signature's instructions the base
        ones and then `instructions`, in `mode`; with the step and output schemas when `constrained`."""
        signature = AnswerSeeing if seeing else Answer
        if instructions:
            signature = signature.with_instructions(f"{signature.instructions}\n\n{instructions}")
        specs = [s for s in self.runner.registry.enabled() if tools is None or s.name in tools]
        react = RobustReAct(signature, specs, self.runner, max_iters=self.options.max_iters)
        built = self._mode(mode, react)
        if constrained:
            constrain(react)
            if isinstance(built, DecomposeMode):
                constrain_output(built.split)
                constrain_output(built.synthesise)
        return react, built

    def _mode(self, mode: str, react: RobustReAct) -> Mode:
        options = self.options
        if mode == "decompose":
            return DecomposeMode(react, options.max_subquestions)
        if mode == "vote":
            return VoteMode(react, options.voters, options.vote_threshold, options.temperature)
        if mode != "react":
            raise ValueError(f"unknown agent mode {mode!r}; use react, decompose or vote")
        return ReactMode(react)

    @property
    def tool_names(self) -> list[str]:
        self._sync_tools()
        return [name for name in self.react.tools if name != "finish"]

    async def respond(
        self,
        message: IncomingMessage,
        *,
        profile: ChannelProfile = DEFAULT_PROFILE,
        progress: Progress | None = None,
        meter: AnswerMeter | None = None,
    ) -> Exchange:
        """Answer one message. Never raises for bad input or a failing model: the reply says what happened.

        `profile` is what the conversation's channel settings resolved to; `progress` is told what the agent does
        as it does it (agent/events.py), for platforms that show it; `meter` counts every model call as it is made
        (what a cancelled run cost is known from it). An answer cut short carries in its chain what it cost.

        Nothing of the exchange is written here: the caller records the returned chain with the reply, in one
        transaction with its own state (the dispatcher's inbox row). Cancellation (shutdown) propagates, so the
        message can be answered afresh later.
        """
        self._sync_tools()
        # Adapters clean text at their edge; a message built elsewhere (a test, a job) gets the same guarantee.
        text = clean_text(message.text).strip()
        if not text and message.attachments:
            text = ONLY_FILES
        rejection = self._reject(text)
        if rejection is not None:
            return Exchange(rejection)
        started = time.time()
        run_id = uuid.uuid4().hex
        # A message that shares files is always reasoned about: the files are what it is about. Where the channel
        # may not remember (its allowlist leaves the tool out, or the tool is off), the model answers instead.
        remember = None if message.attachments or not self._may_remember(profile) else REMEMBER.match(text)
        outbox = Outbox(self.options.attachments.max_out_bytes)
        paths = self._paths(profile)
        chain = ChainRecord(
            question=text,
            answer="",
            status="answered",
            model=paths[0][0].name,
            started_at=started,
            duration_ms=0.0,
            user_id=message.user,
            run_id=run_id,
            mode="rule" if remember else profile.mode or self.options.mode,
            platform=message.platform,
        )
        readings = Readings()
        # The answer's text as the model writes it, for whoever watches the answer.
        tokens = AnswerTokens(progress) if progress is not None else None
        meter = meter or AnswerMeter()
        try:
            async with held(Lease(self._slots)):
                with metering(meter):
                    if remember:
                        outcome, answered_by = await self._remember(message, remember.group("fact")), "rule"
                        vision = False
                    else:
                        readings = await read_attachments(message.attachments, self.options.attachments)
                        outcome, answered_by, vision = await self._reason(
                            message,
                            text,
                            run_id,
                            readings,
                            outbox,
                            progress,
                            profile=profile,
                            paths=paths,
                            tokens=tokens,
                        )
        except RunStopped as stopped:
            chain = replace(chain, status="limited", duration_ms=(time.time() - started) * 1000)
            return self._done(message, chain, Reply(stopped.reply, status="limited"), meter)
        except InputRefused as refused:
            chain = replace(
                chain, status="rejected", error_id=refused.error_id, duration_ms=(time.time() - started) * 1000
            )
            reply = Reply(INPUT_REFUSED.format(error_id=refused.error_id), error_id=refused.error_id, status="rejected")
            return self._done(message, chain, reply, meter)
        except NoModelAnswered as failed:
            reply_text = f"{self.resilience.fallback_reply} (error id {failed.error_id})"
            chain = replace(
                chain,
                status="fallback",
                model=FALLBACK_REPLY,
                error_id=failed.error_id,
                duration_ms=(time.time() - started) * 1000,
            )
            return self._done(message, chain, Reply(reply_text, error_id=failed.error_id, status="fallback"), meter)
        except Exception as exc:
            error_id = new_error_id()
            with bound_contextvars(error_id=error_id):
                log.exception("answering failed (error id %s): %s", error_id, type(exc).__name__)
            reply_text = APOLOGY.format(error_id=error_id)
            chain = replace(chain, status="error", error_id=error_id, duration_ms=(time.time() - started) * 1000)
            return self._done(message, chain, Reply(reply_text, error_id=error_id, status="error"), meter)
        # Model output is outside input too: half an emoji in it must not fail the recording of the reply.
        status, answer = "answered", clean_text(outcome.answer)
        if not answer:
            status = "unanswered"
            answer = (
                "I couldn't work out an answer to that within my step limit. "
                "Try asking more simply, or split the question into smaller ones."
            )
        # Every file not used, or used in part, is named: an answer must not pretend to have read it.
        notes = readings.notes(vision)
        if notes:
            answer = f"{answer}\n\n" + "\n".join(notes)
        files = outbox.files if status == "answered" else ()
        # Shown before it is recorded: what the model's stream did not show yet (all of it from a model that does
        # not stream); a reply that is not what was streamed (the loop guard's, a file note) replaces it at the end.
        rest = tokens.rest(answer) if tokens is not None else answer
        if rest:
            emit(progress, AnswerText(rest))
        chain = replace(
            chain,
            answer=answer,
            status=status,
            model=answered_by,
            duration_ms=(time.time() - started) * 1000,
            steps=outcome.steps,
            attachments=readings.records(vision) + tuple(_posted(f.name, f.media_type, f.content) for f in files),
        )
        return self._done(message, chain, Reply(answer, steps=outcome.steps, status=status, files=files), meter)

    def _reject(self, text: str) -> Reply | None:
        """A reply for a message the agent will not take, or None."""
        if not text:
            return Reply("Your message is empty. Ask me something, for example: what is 12*7?", status="rejected")
        if len(text) > self.options.max_message_chars:
            return Reply(
                f"Your message is {len(text):,} characters long; the limit is "
                f"{self.options.max_message_chars:,}. Please shorten it or split it up.",
                status="rejected",
            )
        return None

    def _done(self, message: IncomingMessage, chain: ChainRecord, reply: Reply, meter: AnswerMeter) -> Exchange:
        """Tell the observers about the chain, which carries every model call the answer made (`meter`), whether
        it was answered, fell back, failed or was stopped; the exchange goes back to the caller to record."""
        spent = meter.usage
        if spent.calls:
            chain = replace(
                chain,
                model_calls=spent.calls,
                input_tokens=spent.input_tokens,
                output_tokens=spent.output_tokens,
                cost=metered_cost(meter),
            )
        for observe in self.observers:
            try:
                observe(message, chain)
            except Exception:
                log.exception("a chain observer failed")
        return Exchange(reply, chain)

    def stopped(self, message: IncomingMessage, text: str, meter: AnswerMeter, started_at: float) -> Exchange:
        """The exchange of an answer a person stopped: the reply saying so (`text`), and a chain that carries what
        the model calls made until then cost (`meter`), so they count against the budgets and in the metrics like
        any other."""
        chain = ChainRecord(
            question=clean_text(message.text).strip(),
            answer=text,
            status="stopped",
            model=meter.model,
            started_at=started_at,
            duration_ms=(time.time() - started_at) * 1000,
            user_id=message.user,
            platform=message.platform,
        )
        return self._done(message, chain, Reply(text, status="stopped"), meter)

    def _may_remember(self, profile: ChannelProfile) -> bool:
        """Whether the model could call `remember_fact` under this profile: the rule does nothing it could not."""
        if profile.tools is not None and REMEMBER_TOOL not in profile.tools:
            return False
        spec = self.runner.registry.get(REMEMBER_TOOL)
        return spec is not None and spec.enabled

    async def _remember(self, message: IncomingMessage, statement: str) -> Outcome:
        """An explicit "remember that ..." is stored as a fact by rule, whatever the model would have done."""
        key, value = fact_from_statement(statement)
        await self.storage.facts.add(message.conversation.channel, key, value)
        observation = f"Remembered {key}: {value}"
        step = Step("The user asked me to remember this.", REMEMBER_TOOL, {"key": key, "value": value}, observation)
        answer = f"Got it, I'll remember that {value}."
        return Outcome(answer, (step, Step("", "", {}, answer, kind="conclusion")))

    async def _reason(
        self,
        message: IncomingMessage,
        text: str,
        run_id: str,
        readings: Readings,
        outbox: Outbox,
        progress: Progress | None,
        *,
        profile: ChannelProfile,
        paths: Sequence[tuple[ModelHandle, CircuitBreaker]],
        tokens: AnswerTokens | None,
    ) -> tuple[Outcome, str, bool]:
        """Try each model of the fallback chain (`paths`, the profile's) under its breaker; returns the outcome,
        who answered and whether it was shown the images (what the reply says about them depends on it).

        The agent is the profile's: offered only its allowed tools, with its instructions, in its mode; the tool
        context carries the allowlist, so a call of any other tool is refused as one that does not exist."""
        conv = message.conversation
        memory = await context_text(self.storage, conv, text, turns=self.options.context_turns, k=self.options.facts_k)
        error_id = new_error_id()
        refused_input = False
        tools = ToolContext(
            self.storage,
            conv,
            message.user,
            run_id,
            message.platform,
            files=outbox,
            progress=progress,
            allowed=profile.tools,
        )
        # Constrained steps follow the chain's first model (the embedded one needs them), as the default's do.
        constrained = paths[0][0].constrained
        with tool_context(tools):
            for handle, breaker in paths:
                # What a model is given of the files depends on it: images are shown to one that takes them.
                images = readings.images(handle.vision)
                parts = (message.context, readings.context(handle.vision), memory)
                context = "\n\n".join(part for part in parts if part)
                mode = self._module(profile, seeing=bool(images), constrained=constrained)
                inputs = {"images": [dspy.Image(data) for data, _ in images]} if images else None
                try:
                    async with (
                        breaker.guard(neutral=not_the_providers),
                        answer_deadline(self.options.answer_timeout_s),
                    ):
                        with (
                            dspy.context(lm=handle.lm, adapter=CachedJSONAdapter()),
                            answer_tokens(tokens if handle.streams else None),
                        ):
                            return await mode.answer(context, text, inputs), handle.name, handle.vision
                except CircuitOpen as exc:
                    log.info("skipping %s: %s", handle.name, exc)
                except RunStopped:
                    raise
                except Exception as exc:
                    refused_input = caused_by_input(exc)
                    log.warning("model %s failed (error id %s): %s: %s", handle.name, error_id, type(exc).__name__, exc)
        if refused_input:
            raise InputRefused(error_id)
        with bound_contextvars(error_id=error_id):
            log.error("no model could answer (error id %s); sending the fallback reply", error_id)
        raise NoModelAnswered(error_id)


def _posted(name: str, media_type: str, content: bytes) -> AttachmentRecord:
    """The chain's record of a file posted with the reply."""
    digest = hashlib.sha256(content).hexdigest()
    return AttachmentRecord(name, media_type, len(content), digest, "posted", direction="out")
