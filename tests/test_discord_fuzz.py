"""Bad input from the Discord gateway never deafens the bot (issue 21).

Malformed dispatches, fuzzed with hypothesis from valid MESSAGE_CREATE, INTERACTION_CREATE and GUILD_CREATE
payloads, go through the fake Discord gateway to the real discord.py client behind the adapter, with the real
dispatcher and agent on a scripted model. After each one a normal mention, on the same connection, is answered,
nothing logged a traceback, and readiness says connected. A lost connection, or a connection task that ends, is
reported not ready until the connection is back.
"""

from __future__ import annotations

import asyncio
import copy
import gc
import itertools
import json
import logging
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from functools import reduce
from operator import getitem
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import aiohttp
import discord
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from adapters.discord import DiscordAdapter, DiscordConfig
from adapters.discord_edge import DiscordMessage, GuardedParser
from agent.engines import ScriptedEngine, scripted_model
from agent.engines.scripted import echo
from bot.app import App, build_app
from bot.commands import chat_handlers
from bot.config import Settings
from bot.dispatcher import Dispatcher, DispatchOptions
from bot.http import build_http_app, serve
from bot.service import readiness
from tests.fakes.discord import FakeDiscord

CHANNEL = "4000"


@dataclass(repr=False)  # hypothesis prints the arguments of a failing example
class World:
    fake: FakeDiscord
    adapter: DiscordAdapter
    parley: App
    asked: Iterator[int] = field(default_factory=itertools.count)

    def answered(self, text: str) -> bool:
        return any(m["content"] == text for m in self.fake.messages(CHANNEL))

    async def mention_is_answered(self) -> None:
        n = next(self.asked)
        self.fake.message_create(f"ping {n}", mentions_bot=True)
        await self.fake.wait_for(lambda: self.answered(f"re: ping {n}"), what=f"the answer to ping {n}")

    async def connected(self, expected: bool, timeout_s: float = 5.0) -> None:
        """Until `is_connected()` (what /readyz reports) says `expected`."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while await self.adapter.is_connected() != expected:
            if loop.time() > deadline:
                pytest.fail(f"is_connected() did not become {expected} within {timeout_s} s")
            await asyncio.sleep(0.005)


@pytest.fixture
async def parley(tmp_path: Path) -> AsyncIterator[App]:
    settings = Settings(db={"path": tmp_path / "parley.db"}, scheduler={"enabled": False})
    async with build_app(settings, model=scripted_model(ScriptedEngine(responder=echo))) as app:
        yield app


@pytest.fixture
def fake() -> Iterator[FakeDiscord]:
    with FakeDiscord(channel_ids=(CHANNEL,)) as running:
        yield running


@pytest.fixture
async def world(parley: App, fake: FakeDiscord) -> AsyncIterator[World]:
    config = DiscordConfig(
        token=fake.token,
        api_url=fake.api_url,
        gateway_url=fake.gateway_url,
        ready_timeout_s=0.05,
        reconnect_delay_s=0.2,
        stream=False,
    )
    adapter = DiscordAdapter(config)
    options = DispatchOptions(rate_limit=None)
    async with Dispatcher(parley.storage, parley.agent, [adapter], options, parley.approvals) as dispatcher:
        adapter.connect(chat_handlers(parley, dispatcher))
        await adapter.start()
        try:
            yield World(fake, adapter, parley)
        finally:
            await adapter.close()


def tracebacks(caplog: pytest.LogCaptureFixture) -> list[str]:
    """What was logged with a traceback: an exception nobody handled (a task's, an event handler's, ours).
    A task's exception is only logged when the task is collected, hence the collection first."""
    gc.collect()
    return [f"{r.name}: {r.getMessage()}" for r in caplog.records if r.exc_info]


def warnings_about(caplog: pytest.LogCaptureFixture, text: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.levelno == logging.WARNING and text in r.getMessage()]


# The pieces of bad input: every JSON type, ids out of range, and text that breaks encoders. No lone surrogate:
# discord.py's decoder (orjson) refuses the whole frame before any parser, which ends the connection task (see
# the restart test).
ODD_TEXT = st.sampled_from(
    ["", " ", "a\x00b", "\x07\x1b[31m", "line\r\nend", "<@2000>", "18446744073709551616", "-1", "0", "x" * 300]
)
SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**64 - 1),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=12),
    ODD_TEXT,
)
VALUES = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=6,
)


def paths(doc: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every place in a JSON document, outermost first."""
    items = doc.items() if isinstance(doc, dict) else enumerate(doc) if isinstance(doc, list) else ()
    found: list[tuple[Any, ...]] = []
    for key, value in items:
        found.append((*prefix, key))
        found.extend(paths(value, (*prefix, key)))
    return found


@st.composite
def mutated(draw: st.DrawFn, base: dict[str, Any]) -> Any:
    """`base` with one to three fields deleted or replaced by any JSON value; now and then not an object at all."""
    doc: Any = copy.deepcopy(base)
    for _ in range(draw(st.integers(1, 3))):
        spots = paths(doc)
        if not spots or draw(st.integers(0, 24)) == 0:
            return draw(VALUES)
        path = draw(st.sampled_from(spots))
        parent = reduce(getitem, path[:-1], doc)
        if isinstance(parent, dict) and draw(st.booleans()):
            del parent[path[-1]]
        else:
            parent[path[-1]] = draw(VALUES)
    return doc


def valid_payload(fake: FakeDiscord, event: str) -> dict[str, Any]:
    if event == "MESSAGE_CREATE":
        return fake.message_create("fuzz", mentions_bot=True, send=False)
    if event == "INTERACTION_CREATE":
        return fake.interaction_create_command("ask", {"question": "fuzz"}, send=False)
    return fake.guild()


# Fixed examples (derandomized, no example database) and few enough that the suite stays fast.
FUZZ = settings(
    max_examples=25,
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@pytest.mark.parametrize("event", ["MESSAGE_CREATE", "INTERACTION_CREATE", "GUILD_CREATE"])
@FUZZ
@given(data=st.data())
async def test_a_malformed_dispatch_is_followed_by_an_answered_mention_on_the_same_connection(
    world: World, caplog: pytest.LogCaptureFixture, event: str, data: st.DataObject
) -> None:
    payload = data.draw(mutated(valid_payload(world.fake, event)), label=event)
    world.fake.send_dispatch(event, payload)
    await world.mention_is_answered()
    assert await world.adapter.is_connected()
    assert (world.fake.connections, world.fake.identifies) == (1, 1)
    assert tracebacks(caplog) == []


async def test_events_discord_py_cannot_parse_are_dropped_with_one_warning(
    world: World, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    without_author = world.fake.message_create("no author", mentions_bot=True, send=False)
    del without_author["author"]
    attachments_as_text = world.fake.message_create("odd attachments", mentions_bot=True, send=False)
    attachments_as_text["attachments"] = "report.pdf"
    for payload in (without_author, attachments_as_text, without_author):
        world.fake.send_dispatch("MESSAGE_CREATE", payload)
    await world.mention_is_answered()
    [warning] = warnings_about(caplog, "MESSAGE_CREATE")  # one line a minute for each kind of event
    assert "could not parse" in warning.getMessage() and not warning.exc_info
    assert world.fake.connections == 1 and await world.adapter.is_connected()
    assert tracebacks(caplog) == []


async def test_discord_py_parses_with_the_table_we_guard(world: World) -> None:
    """Pins what `guard_parsers` relies on: the websocket dispatches through the state's `parsers` dict."""
    parsers = world.adapter.client._connection.parsers
    assert world.adapter.client.ws._discord_parsers is parsers
    assert {"MESSAGE_CREATE", "INTERACTION_CREATE", "GUILD_CREATE", "READY"} <= set(parsers)
    assert all(isinstance(parse, GuardedParser) for parse in parsers.values())


async def test_text_is_repaired_before_the_agent_sees_it(world: World, caplog: pytest.LogCaptureFixture) -> None:
    world.fake.message_create("a nul\x00, a bell\x07, an escape\x1b[31m and\r\nlines", mentions_bot=True)
    await world.fake.wait_for(lambda: world.fake.messages(CHANNEL), what="the answer")
    [reply] = world.fake.messages(CHANNEL)
    assert reply["content"] == "re: a nul, a bell, an escape[31m and\nlines"
    # Repaired at the edge, not only by the agent: the inbox keeps what the adapter handed the dispatcher.
    entry = await world.parley.storage.inbox.get(1)  # the first message of a fresh database
    assert entry is not None and entry.message.text == "a nul, a bell, an escape[31m and\nlines"
    assert tracebacks(caplog) == []


def test_half_an_emoji_is_replaced_when_the_decoder_lets_it_through() -> None:
    """discord.py decodes frames with orjson when it is installed (it is here), which refuses a lone surrogate;
    its fallback, `json`, lets one through to the message content."""
    user = SimpleNamespace(id=6000, bot=False)
    message = SimpleNamespace(
        id=1, channel=SimpleNamespace(id=4000), guild=None, author=user, content="smile \ud83d", mentions=[]
    )
    assert DiscordMessage.model_validate(message).content == "smile \ufffd"


async def test_a_message_whose_fields_do_not_validate_is_dropped_quietly(
    world: World, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    not_text = world.fake.message_create("not text", mentions_bot=True, send=False)
    not_text["content"] = 42  # discord.py passes it on as it came
    odd_flag = world.fake.message_create("odd bot flag", mentions_bot=True, send=False)
    odd_flag["author"]["bot"] = "no"
    for payload in (not_text, odd_flag):
        world.fake.send_dispatch("MESSAGE_CREATE", payload)
    await world.mention_is_answered()
    [warning] = warnings_about(caplog, "does not validate")
    assert "content" in warning.getMessage() and "42" not in warning.getMessage()  # where, not what
    assert [m["content"] for m in world.fake.messages(CHANNEL)] == ["re: ping 0"]
    assert tracebacks(caplog) == []


async def test_a_message_in_a_guild_discord_py_does_not_know_is_not_taken_for_a_dm(world: World) -> None:
    world.fake.message_create("just chatting in a guild whose GUILD_CREATE was lost", guild_id="3999")
    await world.mention_is_answered()
    assert [m["content"] for m in world.fake.messages(CHANNEL)] == ["re: ping 0"]


async def test_slash_commands_that_do_not_fit_are_refused_quietly(
    world: World, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    unknown = world.fake.interaction_create_command("deploy", {"service": "api"}, send=False)
    nameless = world.fake.interaction_create_command("ask", {"question": "x"}, send=False)
    del nameless["data"]["name"]
    number = world.fake.interaction_create_command("ask", [{"name": "question", "type": 3, "value": 42}], send=False)
    for payload in (unknown, nameless, number):
        world.fake.send_dispatch("INTERACTION_CREATE", payload)
    world.fake.interaction_create_command("ask", {"question": "still there?"})
    await world.fake.wait_for_followups(1)
    assert world.fake.followups[0].json["content"] == "re: still there?"
    assert warnings_about(caplog, "CommandNotFound") and warnings_about(caplog, "does not validate")
    assert tracebacks(caplog) == []


UNDECODABLE = pytest.param(
    "MESSAGE_CREATE",
    {"content": "half an emoji \ud83d"},
    "JSONDecodeError",
    marks=pytest.mark.skipif(not discord.utils.HAS_ORJSON, reason="json decodes a lone surrogate"),
    id="a frame orjson cannot decode",
)


@pytest.mark.parametrize(
    ("event", "data", "error"),
    [pytest.param("READY", {}, "KeyError", id="READY without its session"), UNDECODABLE],
)
async def test_a_connection_task_that_ends_is_restarted_and_readiness_follows(
    world: World, caplog: pytest.LogCaptureFixture, event: str, data: dict[str, Any], error: str
) -> None:
    # discord.py decodes each frame, and reads READY, outside the parsers: an error there ends `connect()`.
    world.fake.send_dispatch(event, data)
    await world.connected(False)
    await world.connected(True)
    assert world.fake.identifies == 2  # a new session
    await world.fake.wait_for(lambda: world.fake.open_connections == 1, what="the old socket closed")
    await world.mention_is_answered()
    [ended] = [r for r in caplog.records if "gateway connection ended" in r.getMessage()]
    assert error in ended.getMessage()


async def test_a_lost_connection_is_not_ready_on_readyz_until_it_is_back(world: World) -> None:
    async def ready() -> dict[str, object]:
        return await readiness(world.parley, [world.adapter])

    async def discord_check(url: str) -> object:
        async with aiohttp.ClientSession() as session, session.get(url) as response:
            return json.loads(await response.text())["checks"]["platform:discord"]

    http = await serve(build_http_app(slack=None, readiness=ready), "127.0.0.1", 0)
    url = f"http://127.0.0.1:{http.addresses[0][1]}/readyz"
    try:
        assert await discord_check(url) == {"ok": True, "connected": True}
        world.fake.gateway_down = True
        world.fake.close_all(4000)
        await world.connected(False)
        assert await discord_check(url) == {"ok": False, "connected": False}
        world.fake.gateway_down = False
        await world.connected(True, timeout_s=20)  # discord.py's own backoff: up to 2, then 4 s
        assert await discord_check(url) == {"ok": True, "connected": True}
        await world.mention_is_answered()
    finally:
        await http.cleanup()
