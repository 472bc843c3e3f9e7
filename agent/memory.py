"""What the model is told about a conversation: recent turns, working notes and the channel's relevant facts,
read through the storage seam."""

from __future__ import annotations

import asyncio

from agent.messages import Conversation
from agent.storage.base import Storage


async def context_text(storage: Storage, conv: Conversation, query: str, *, turns: int = 8, k: int = 5) -> str:
    """Recent turns, notes, then relevant facts (touched, so facts in use survive the prune)."""
    facts, notes, recent = await asyncio.gather(
        storage.facts.relevant(conv.channel, query, k, touch=True),
        storage.notes.of(conv),
        storage.turns.recent(conv, turns),
    )
    parts = []
    if recent:
        parts.append("Recent conversation:\n" + "\n".join(f"{t.role}: {t.text}" for t in recent))
    if notes:
        parts.append("Notes:\n" + "\n".join(f"- {k}: {v}" for k, v in notes.items()))
    if facts:
        # Last, nearest the question: small models weigh what they read last.
        parts.append("Known facts:\n" + "\n".join(f"- {f.key}: {f.value}" for f in facts))
    return "\n\n".join(parts) if parts else "(nothing remembered yet)"
