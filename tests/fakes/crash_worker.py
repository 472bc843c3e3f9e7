"""A Parley process for the crash test: the real storage, agent and dispatcher, answering a fixed set of
messages and posting replies to a FakePlatformServer. The test kills it with SIGKILL and runs it again.

Usage: python -m tests.fakes.crash_worker DATABASE PLATFORM_URL CONVERSATIONS MESSAGES
(DATABASE: a SQLite file path, or a postgresql:// URL)
"""

from __future__ import annotations

import asyncio
import random
import sys

from agent.engines import ScriptedEngine, scripted_model
from agent.engines.scripted import echo
from agent.messages import IncomingMessage
from agent.runtime import Agent, AgentOptions
from agent.storage import open_storage
from agent.tools import BUILTIN_TOOLS, ToolRegistry, ToolRunner
from bot.dispatcher import Dispatcher, DispatchOptions
from tests.fakes.platform import HTTPPlatform


async def main(database: str, platform_url: str, conversations: int, messages: int) -> None:
    postgres = database.startswith("postgresql://")
    storage = await open_storage(url=database if postgres else None, path=database)
    runner = ToolRunner(ToolRegistry.of(*BUILTIN_TOOLS))
    try:
        engine = ScriptedEngine(responder=echo, delay_s=lambda: random.uniform(0.01, 0.05))
        agent = Agent(storage, scripted_model(engine), runner, AgentOptions(concurrency=4))
        platform = HTTPPlatform(platform_url)
        # A short claim: on PostgreSQL the killed process's claims lapse in 2 s and this one takes them over.
        options = DispatchOptions(concurrency=4, rate_limit=None, claim_ttl_s=2.0, poll_s=0.2)
        async with Dispatcher(storage, agent, [platform], options) as dispatcher:
            for m in range(messages):
                for c in range(conversations):
                    await dispatcher.submit(
                        IncomingMessage(
                            platform="test", channel=f"c{c}", user=f"u{c}", text=f"c{c} m{m}", event_id=f"c{c}-m{m}"
                        )
                    )
            # Until nothing is left: a conversation the killed process held is answered once its claim lapses.
            for _ in range(600):
                if not await storage.inbox.unfinished(["test"]):
                    break
                await asyncio.sleep(0.1)
    finally:
        runner.close()
        await storage.close()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])))
