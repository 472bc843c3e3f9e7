"""The Slack world every Slack test runs in: the real slack-bolt and slack-sdk against a fake Slack on
127.0.0.1, signed requests to Parley's real `/slack/events` endpoint, the real dispatcher, inbox, approvals and
agent on a scripted model. Its fixtures are imported by conftest: tests ask for `world` and tune it with the
`delay`, `options` and `concurrency` fixtures."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest
from dspy.lm15 import Request

from adapters.slack import SlackAdapter, SlackConfig
from agent.approvals import ApprovalBroker, ApprovalPolicy
from agent.engines import ScriptedEngine, scripted_model
from agent.engines.scripted import echo, request_text
from agent.ports import Handlers
from agent.runtime import Agent, AgentOptions
from agent.storage import Storage
from agent.tools import BUILTIN_TOOLS, ToolRegistry, ToolRunner
from agent.tools.registry import tool
from bot.commands import ChatCommands
from bot.dispatcher import Dispatcher, DispatchOptions
from bot.http import build_http_app, serve
from tests.fakes.slack import FakeSlack, block_actions_body, event_callback_body, slack_headers

SECRET = "test-signing-secret"


def model(request: Request) -> dict[str, Any]:
    """Echoes questions; "deploy X" calls the deploy tool; "essay" answers with long Markdown."""
    text = request_text(request)
    question = text.rsplit("[[ ## question ## ]]", 1)[1].split("\n\n", 1)[0].strip()
    observed = "[[ ## tool_name_0 ## ]]\ndeploy" in text
    if "next_tool_name" in text:
        if question.startswith("deploy ") and not observed:
            return {"next_thought": "deploy", "next_tool_name": "deploy", "next_tool_args": {"service": question[7:]}}
        return {"next_thought": "done", "next_tool_name": "finish", "next_tool_args": {}}
    if observed:
        last = text.rsplit("[[ ## observation_0 ## ]]", 1)[1].split("\n\n", 1)[0].strip()
        return {"reasoning": "tool", "answer": f"tool said: {last}"}
    if question == "essay":
        paragraph = "This is **important** and [documented](https://example.com/doc). " * 20
        return {"reasoning": "long", "answer": "\n\n".join(f"Part {i}: {paragraph}" for i in range(12))}
    return echo(request)


@dataclass
class World:
    fake: FakeSlack
    adapter: SlackAdapter
    dispatcher: Dispatcher
    engine: ScriptedEngine
    storage: Storage
    deployed: list[str]
    url: str

    async def post(self, body: bytes, *, secret: str = SECRET, **header_options: Any) -> tuple[int, str]:
        headers = slack_headers(secret, body, **header_options)
        async with aiohttp.ClientSession() as session, session.post(self.url, data=body, headers=headers) as answer:
            return answer.status, await answer.text()

    async def mention(self, text: str, *, ts: str, event_id: str, thread_ts: str | None = None, **extra: Any) -> int:
        event = {"type": "app_mention", "user": "U1", "text": f"<@UBOT> {text}", "ts": ts, "channel": "C1", **extra}
        if thread_ts:
            event["thread_ts"] = thread_ts
        status, _ = await self.post(event_callback_body(event, event_id=event_id))
        return status

    def click_body(
        self, user: str, action_id: str, value: str, *, message_ts: str = "1.0", channel: str = "C1", **extra: str
    ) -> bytes:
        """The signed-to-be body of a button click (`response_url` may be overridden in `extra`)."""
        fields = {"response_url": self.fake.response_url("click"), **extra}
        action = {"action_id": action_id, "value": value}
        return block_actions_body([action], user_id=user, channel_id=channel, message_ts=message_ts, **fields)

    async def click(self, user: str, action_id: str, value: str, message_ts: str, *, channel: str = "C1") -> None:
        status, _ = await self.post(self.click_body(user, action_id, value, message_ts=message_ts, channel=channel))
        assert status == 200


@pytest.fixture
def fake() -> Iterator[FakeSlack]:
    with FakeSlack() as running:
        yield running


@pytest.fixture
def delay() -> float:
    return 0.0


@pytest.fixture
def options() -> dict[str, Any]:
    """Extra SlackConfig fields for a test."""
    return {}


@pytest.fixture
def chunk_chars() -> int | None:
    """The scripted model streams its replies in pieces of this many characters; None: it does not stream."""
    return None


@pytest.fixture
def concurrency() -> int:
    """The dispatcher's and the agent's limit of messages answered at once."""
    return 8


@pytest.fixture
async def world(
    storage: Storage,
    fake: FakeSlack,
    delay: float,
    options: dict[str, Any],
    concurrency: int,
    chunk_chars: int | None,
) -> AsyncIterator[World]:
    deployed: list[str] = []

    @tool(name="deploy", approval="approve")
    def deploy(service: str) -> str:
        """Deploy a service."""
        deployed.append(service)
        return f"deployed {service}"

    broker = ApprovalBroker(storage.approvals, ApprovalPolicy(approvers={"slack": ["UBOSS"]}, expiry_s=2))
    runner = ToolRunner(ToolRegistry.of(*BUILTIN_TOOLS, deploy), gate=broker)
    engine = ScriptedEngine(
        responder=model, delay_s=delay, streams=chunk_chars is not None, chunk_chars=chunk_chars or 8
    )
    agent = Agent(storage, scripted_model(engine), runner, AgentOptions(max_iters=3, concurrency=concurrency))
    config = SlackConfig(
        bot_token="xoxb-test",
        signing_secret=SECRET,
        api_url=fake.api_url,
        progress_after_s=0.2,
        **{"stream": False, **options},
    )
    adapter = SlackAdapter(config)
    dispatch = DispatchOptions(rate_limit=None, concurrency=concurrency)
    dispatcher = Dispatcher(storage, agent, [adapter], dispatch, broker)
    commands = ChatCommands(storage, runner.registry, dispatcher.submit, broker.policy, stop=dispatcher.stop_mine)
    adapter.connect(Handlers(dispatcher.submit, dispatcher.decide, commands, dispatcher.stop_answer))
    await adapter.start()

    async def ready() -> dict[str, object]:
        return {"database": True}

    http = await serve(build_http_app(slack=adapter, readiness=ready), "127.0.0.1", 0)
    port = http.addresses[0][1]
    async with dispatcher:
        yield World(fake, adapter, dispatcher, engine, storage, deployed, f"http://127.0.0.1:{port}/slack/events")
    await adapter.close()
    await http.cleanup()
    runner.close()


async def settled(world: World) -> None:
    """Wait until every message is answered and the background reaction calls are done."""
    await world.dispatcher.join()
    await asyncio.gather(*world.adapter._background, return_exceptions=True)
