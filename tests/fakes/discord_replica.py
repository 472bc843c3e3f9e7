"""A Parley replica with Discord, as `parley run` puts it together: storage, the echo agent, the dispatcher and
the Discord adapter with the storage's leadership, pointed at a fake Discord. Tests run several in one process
(`replica`), or one as a process of its own to kill it:

    python -m tests.fakes.discord_replica DATABASE_URL API_URL GATEWAY_URL TOKEN
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

from adapters.discord import DiscordAdapter, DiscordConfig
from agent.engines import ScriptedEngine, scripted_model
from agent.engines.scripted import echo
from agent.ports import Handlers
from agent.runtime import Agent, AgentOptions
from agent.storage import Storage, open_storage
from agent.tools import BUILTIN_TOOLS, ToolRegistry, ToolRunner
from bot.dispatcher import Dispatcher, DispatchOptions


@dataclass
class Replica:
    storage: Storage
    adapter: DiscordAdapter
    dispatcher: Dispatcher


@asynccontextmanager
async def replica(
    database: str, api_url: str, gateway_url: str, token: str, *, identity: str | None = None
) -> AsyncIterator[Replica]:
    """A started replica (a follower returns from start at once, a leader once its gateway is ready)."""
    storage = await open_storage(url=database)
    if identity is not None:
        storage.leadership.identity = identity
    runner = ToolRunner(ToolRegistry.of(*BUILTIN_TOOLS))
    config = DiscordConfig(token=token, api_url=api_url, gateway_url=gateway_url, ready_timeout_s=0.05, stream=False)
    adapter = DiscordAdapter(config, leadership=storage.leadership)
    try:
        agent = Agent(storage, scripted_model(ScriptedEngine(responder=echo)), runner, AgentOptions())
        await adapter.login()  # as `parley run` does: replies left by a gone process need REST first
        async with Dispatcher(storage, agent, [adapter], DispatchOptions(rate_limit=None)) as dispatcher:
            adapter.connect(Handlers(dispatcher.submit, dispatcher.decide))
            await adapter.start()
            try:
                yield Replica(storage, adapter, dispatcher)
            finally:
                await adapter.close()  # before the dispatcher stops, as `parley run` does
    finally:
        await adapter.close()  # also when logging in or starting failed; closing twice is harmless
        runner.close()
        await storage.close()


async def main(database: str, api_url: str, gateway_url: str, token: str) -> None:
    async with replica(database, api_url, gateway_url, token):
        await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:5]))
