"""Which replica holds the Discord gateway.

Below Discord's sharding threshold a bot has one gateway session, and two replicas connected at once would
each hear every message. So one replica, elected through the storage (`agent.storage.leadership`), holds the
gateway; the others follow: they answer from the shared inbox and deliver over REST, which needs no gateway.
When the leader dies another replica takes the gateway over within seconds (a new session: Discord replays
nothing to it, so what was said in between is not heard). With shards, each replica runs the shards it is
given and no election is needed.
"""

from __future__ import annotations

import asyncio
import contextlib

import discord

from agent.storage.leadership import Role

# The leadership name of the gateway (one per database schema: one bot per Parley deployment).
GATEWAY = "discord-gateway"
# Closing the socket of a lost term should take a moment; a stuck close must not delay the next leader's.
CLOSE_TIMEOUT_S = 5.0


class Seat:
    """This replica's place at the gateway, as the election last reported it: for start-up (a follower need
    not wait for a gateway it will not open) and for `/readyz`."""

    def __init__(self) -> None:
        self.role: Role | None = None  # None until the first attempt
        self.following = asyncio.Event()  # set once the first attempt lost (or any later one)

    def changed(self, role: Role) -> None:
        self.role = role
        if not role.leading:
            self.following.set()

    @property
    def follows(self) -> bool:
        return self.role is not None and not self.role.leading

    def status(self) -> dict[str, object]:
        if self.role is None:
            return {"gateway": "campaigning"}
        return {"gateway": "leader" if self.role.leading else "follower", "leader": self.role.leader}


async def close_gateway(client: discord.Client) -> None:
    """Close the client's gateway socket and nothing else: REST stays logged in. Code 1000 ends the session, so
    Discord sends nothing more to it; the next leader identifies anew."""
    ws = client.ws
    if ws is None:
        return
    with contextlib.suppress(Exception):
        await asyncio.wait_for(ws.close(code=1000), timeout=CLOSE_TIMEOUT_S)
