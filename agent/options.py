"""The agent's options and their defaults, kept apart from the runtime so the settings can take their defaults
from here without importing DSPy: each default is written once, here, and `bot/config.py` reads it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from agent.attachments.models import Limits

# How the agent reasons: ReAct; split the question, answer each part, combine; or several agents and a majority.
ModeName = Literal["react", "decompose", "vote"]

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
    temperature: float = 0.2
    # The whole answer's deadline per model, retries and their backoff included: DSPy sleeps as long as a
    # provider's Retry-After asks, uncapped, and the per-call timeout only bounds the wait for each byte.
    answer_timeout_s: float = 120.0
    # What people share: files per message, bytes per file, characters for the model, files a reply posts.
    attachments: Limits = field(default_factory=Limits)
