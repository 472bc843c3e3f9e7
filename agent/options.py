"""The agent's options and their defaults, kept apart from the runtime so the settings can take their defaults
from here without importing DSPy: each default is written once, here, and `bot/config.py` reads it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from agent.attachments.models import Limits

# How the agent reasons: ReAct; split the question, answer each part, combine; or several agents and a majority.
ModeName = Literal["react", "decompose", "vote"]

# The embedded model (llama.cpp in this process) and the scripted one of tests and demos, by their model ids.
LOCAL_MODEL = "local"
SCRIPTED_MODEL = "scripted"


@dataclass(frozen=True)
class ModelConfig:
    """What the model factory (agent/engines) needs to know; the bot maps its settings onto this."""

    model: str = LOCAL_MODEL
    api_base: str | None = None
    api_key: str | None = None
    timeout_s: float = 60.0
    max_tokens: int = 1024
    temperature: float = 0.2
    num_retries: int = 2
    # Whether the model takes images; None asks litellm's model table (unknown models: no).
    vision: bool | None = None
    # Ask the provider to stream the reply, so the answer shows as it is written (off: it shows whole at the end).
    stream: bool = True


@dataclass(frozen=True)
class BreakerOptions:
    """A model's circuit breaker: failures in a row that open it, how long it stays open, trials that close it."""

    failure_threshold: int = 5
    reset_timeout_s: float = 30.0
    success_threshold: int = 1


# What a person gets when no model can answer (every breaker open, every model failing): `[fallback] reply`.
UNAVAILABLE_REPLY = "Sorry, I can't answer right now. Please try again in a few minutes."


@dataclass(frozen=True)
class AgentOptions:
    max_iters: int = 6
    max_message_chars: int = 8000
    context_turns: int = 8
    facts_k: int = 5
    mode: ModeName = "react"
    # The agent pool: how many conversations the one shared agent answers at once (and the dispatcher's limit).
    concurrency: int = 8
    max_subquestions: int = 4
    voters: int = 3
    vote_threshold: float = 0.5
    temperature: float = ModelConfig.temperature
    # The whole answer's deadline per model, retries and their backoff included: DSPy sleeps as long as a
    # provider's Retry-After asks, uncapped, and the per-call timeout only bounds the wait for each byte.
    answer_timeout_s: float = 120.0
    # What people share: files per message, bytes per file, characters for the model, files a reply posts.
    attachments: Limits = field(default_factory=Limits)
