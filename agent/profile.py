"""How the agent answers in one conversation: what its channel settings resolved to.

The bot layer resolves the stored and configured channel settings (thread, channel, workspace, global) into
one `ChannelProfile` per message; the agent only applies it, so it never reads settings or storage for it.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ChannelProfile:
    """Per-conversation overrides of the agent's defaults; the default profile changes nothing."""

    # Added to the agent's instructions (the signature's), after its own.
    instructions: str = ""
    # One of the named models (`[models.NAME]`); None: the default model. Its fallback chain still applies.
    model: str | None = None
    # The only tools the model is offered and may call; None: every enabled tool.
    tools: frozenset[str] | None = None
    # react, decompose or vote; None: the configured mode.
    mode: str | None = None


DEFAULT_PROFILE = ChannelProfile()
