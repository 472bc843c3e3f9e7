"""Answer a message and record it: the agent reasons, the storage seam writes the exchange in one transaction.

`parley ask` and scheduled reports answer through `answer`; the dispatcher runs the agent itself (a person may
stop the run) and records through `record`. Either way an answer is recorded the same way wherever it was asked.
"""

from __future__ import annotations

from typing import Protocol

from agent.chains import AnswerMeter
from agent.events import Progress
from agent.messages import IncomingMessage, Reply
from agent.profile import DEFAULT_PROFILE, ChannelProfile
from agent.runtime import Exchange
from agent.storage.base import Storage
from agent.storage.models import Claim


class Responder(Protocol):
    """What answers a message: the agent, or anything with its `respond`."""

    async def respond(
        self,
        message: IncomingMessage,
        *,
        profile: ChannelProfile = ...,
        progress: Progress | None = None,
        meter: AnswerMeter | None = None,
    ) -> Exchange: ...

    def stopped(self, message: IncomingMessage, text: str, meter: AnswerMeter, started_at: float) -> Exchange:
        """The exchange of an answer a person stopped, with what its model calls used (`meter`)."""
        ...


async def answer(
    responder: Responder,
    storage: Storage,
    message: IncomingMessage,
    *,
    inbox_id: int | None = None,
    profile: ChannelProfile = DEFAULT_PROFILE,
) -> Reply:
    """The reply to `message` (`parley ask`, a scheduled report), recorded with its chain, turns and (given
    `inbox_id`) the inbox row's answer. The dispatcher runs and records its answers itself (they may be stopped)."""
    exchange = await responder.respond(message, profile=profile)
    return await record(storage, message, exchange, inbox_id=inbox_id)


async def record(
    storage: Storage,
    message: IncomingMessage,
    exchange: Exchange,
    *,
    inbox_id: int | None = None,
    claim: Claim | None = None,
) -> Reply:
    """Write an exchange in one transaction. Apart from `answer` for the dispatcher, which lets a person stop the
    agent's run but never a write that may commit anyway."""
    return await storage.record_exchange(
        message.conversation, exchange.chain, exchange.reply, inbox_id=inbox_id, claim=claim
    )
