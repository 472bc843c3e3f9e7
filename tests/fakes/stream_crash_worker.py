"""A Parley process for the streaming crash test: the real storage, agent, dispatcher and Slack adapter with
streaming on, against the fake Slack at the URL given. It takes one message, streams its first tool step, and
then waits on the model until the test kills it (SIGKILL).

Usage: python -m tests.fakes.stream_crash_worker DATABASE SLACK_API_URL
"""

from __future__ import annotations

import asyncio
import sys

from adapters.slack import SlackAdapter, SlackConfig
from adapters.slack_stream import StreamLimits
from agent.engines import ScriptedEngine, scripted_model
from agent.messages import IncomingMessage
from agent.ports import Handlers
from agent.runtime import Agent, AgentOptions
from agent.storage import open_storage
from agent.tools import BUILTIN_TOOLS, ToolRegistry, ToolRunner
from bot.dispatcher import Dispatcher, DispatchOptions

FIRST_STEP = {"next_thought": "compute it", "next_tool_name": "calculator", "next_tool_args": {"expression": "6*7"}}


async def main(database: str, api_url: str) -> None:
    storage = await open_storage(path=database)
    runner = ToolRunner(ToolRegistry.of(*BUILTIN_TOOLS))
    # The first model call answers at once; the next one takes ten minutes (the test kills the process first).
    delays = iter([0.0])
    engine = ScriptedEngine([FIRST_STEP], responder={}, delay_s=lambda: next(delays, 600.0))
    agent = Agent(storage, scripted_model(engine), runner, AgentOptions(max_iters=4))
    adapter = SlackAdapter(SlackConfig("xoxb-test", "secret", api_url=api_url, stream=True))
    adapter.streams.limits = StreamLimits(append_interval_s=0.05)
    async with Dispatcher(storage, agent, [adapter], DispatchOptions(rate_limit=None)) as dispatcher:
        adapter.connect(Handlers(dispatcher.submit, dispatcher.decide, stop=dispatcher.stop_answer))
        await dispatcher.submit(
            IncomingMessage(
                platform="slack",
                workspace="T1",
                channel="C1",
                thread="1900.1",
                user="U1",
                text="what is 6*7, and the time?",
                message_id="1900.1",
                event_id="EvCrash",
                mentioned=True,
            )
        )
        await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2]))
