"""Answers streamed while they are produced (issue 17): the agent's events, the dispatcher's stream path, Slack's
chat.startStream / appendStream / stopStream against the fake Slack (the real slack-bolt and slack-sdk), Discord's
edited message against the fake Discord (the real discord.py), and a process killed mid-stream."""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import signal
import sys
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import stamina
from dspy.lm15 import Request
from hypothesis import given, settings
from hypothesis import strategies as st

from adapters.discord import DiscordAdapter
from adapters.discord_stream import EditLimits
from adapters.slack import SlackAdapter, SlackConfig
from adapters.slack_stream import BROKEN, StreamLimits, card, last_key, render
from adapters.text import split_message, to_mrkdwn
from agent.answer_stream import AnswerTokens, answer_tokens, streaming_answer
from agent.approvals import ApprovalPolicy
from agent.attachments.models import OutFile
from agent.engines import ModelConfig, ModelHandle, ScriptedEngine, build_model, scripted_model
from agent.engines.scripted import echo, request_text
from agent.events import AnswerText, Event, StepFinished, StepStarted
from agent.messages import IncomingMessage, Reply, clean_text
from agent.ports import DeliveryError, Handlers
from agent.runtime import Agent, AgentOptions, Resilience
from agent.storage import Storage, open_storage
from agent.storage.postgres.storage import PostgresStorage
from agent.storage.sqlite.database import Database
from agent.tools import BUILTIN_TOOLS, ToolRegistry, ToolRunner
from bot.commands import ChatCommands
from bot.dispatcher import Dispatcher, DispatchOptions
from bot.streaming import STOPPED
from tests.conftest import REPO
from tests.fakes.discord import FakeDiscord
from tests.fakes.openai_server import FakeOpenAI
from tests.fakes.openai_server import Fault as ModelFault
from tests.fakes.platform import RecordingPlatform
from tests.fakes.slack import FakeSlack, Fault, event_callback_body, slash_command_body
from tests.slack_world import World, settled
from tests.test_discord import CHANNEL, build

STREAM = {"stream": True}
ANSWER = "6*7 is **42**, and I looked up the time."


def two_tools(request: Request) -> dict[str, Any]:
    """Calls the calculator, then the clock, then answers."""
    text = request_text(request)
    if "next_tool_name" not in text:
        return {"reasoning": "both tools answered", "answer": ANSWER}
    if "[[ ## tool_name_0 ## ]]" not in text:
        return {"next_thought": "compute it", "next_tool_name": "calculator", "next_tool_args": {"expression": "6*7"}}
    if "[[ ## tool_name_1 ## ]]" not in text:
        return {"next_thought": "now the time", "next_tool_name": "current_time", "next_tool_args": {"timezone": "UTC"}}
    return {"next_thought": "done", "next_tool_name": "finish", "next_tool_args": {}}


def streaming(world: World, **limits: Any) -> None:
    """Appends as often as every 50 ms (Slack's budget is the same), the scripted model calling two tools."""
    world.adapter.streams.limits = StreamLimits(append_interval_s=0.05, **limits)
    world.engine.responder = two_tools


def cards(stream: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    """Each task card's updates, by card id, in the order the cards first appeared."""
    found: dict[str, list[dict[str, Any]]] = {}
    for chunk in stream["chunks"]:
        if chunk["type"] == "task_update":
            found.setdefault(chunk["id"], []).append(chunk)
    return found


# The agent's events ---------------------------------------------------------------------------------------------


async def test_the_agent_tells_each_tool_step_with_its_thought_and_outcome_but_not_its_output_then_the_answer(
    storage: Storage, runner: ToolRunner
) -> None:
    agent = Agent(storage, scripted_model(ScriptedEngine(responder=two_tools)), runner, AgentOptions(max_iters=4))
    events: list[Event] = []
    message = IncomingMessage(platform="console", channel="c", user="u", text="what is 6*7, and the time?")
    exchange = await agent.respond(message, progress=events.append)
    assert exchange.reply.text == ANSWER
    started, finished = events[0], events[1]
    assert started == StepStarted(1, "calculator", "compute it", "expression=6*7")
    # The tool's output (42) was for the model: the event says only how the call ended.
    assert finished == StepFinished(1, "calculator", "ok")
    assert [(type(e).__name__, getattr(e, "index", 0)) for e in events[2:4]] == [
        ("StepStarted", 2),
        ("StepFinished", 2),
    ]
    assert events[-1] == AnswerText(ANSWER)


# The answer's tokens ------------------------------------------------------------------------------------------


def _chunk(text: str | None, finish: str | None = None) -> SimpleNamespace:
    """A streamed completion chunk as DSPy hands it to `send_stream` (OpenAI's shape)."""
    return SimpleNamespace(choices=[SimpleNamespace(delta=SimpleNamespace(content=text), finish_reason=finish)])


@settings(max_examples=300, deadline=None)
@given(
    answer=st.text(st.characters(exclude_categories=("Cs",)), max_size=60),
    reasoning=st.text(max_size=20),
    cuts=st.lists(st.integers(min_value=0, max_value=400), max_size=12),
    ascii_only=st.booleans(),
)
def test_the_answer_streams_as_its_decoded_text_however_the_provider_splits_it(
    answer: str, reasoning: str, cuts: list[int], ascii_only: bool
) -> None:
    """Escapes (quotes, newlines, \\u sequences, surrogate pairs) cut anywhere: each piece is new answer text,
    never JSON syntax nor the reasoning, and the pieces together are the answer as the reply has it (cleaned of
    control characters, stripped)."""
    content = json.dumps({"reasoning": reasoning, "answer": answer}, ensure_ascii=ascii_only)
    bounds = sorted({0, len(content), *(c for c in cuts if c < len(content))})
    parts = [content[a:b] for a, b in itertools.pairwise(bounds)]
    events: list[Event] = []
    tokens = AnswerTokens(events.append)

    async def feed() -> None:
        for i, part in enumerate(parts):
            await tokens.send(_chunk(part, "stop" if i == len(parts) - 1 else None))
        await tokens.send(SimpleNamespace(choices=[], usage={"prompt_tokens": 1}))  # the usage chunk

    asyncio.run(feed())
    pieces = [e.text for e in events if isinstance(e, AnswerText)]
    assert len(pieces) == len(events) and all(pieces)
    reply = clean_text(answer).strip()
    assert "".join(pieces) == reply == tokens.shown
    assert tokens.rest(reply) == ""
    assert tokens.rest(reply + "\n\nnote") == "\n\nnote"


async def test_the_answer_streams_piece_by_piece_and_a_later_call_adds_only_what_goes_on_from_it() -> None:
    events: list[Event] = []
    tokens = AnswerTokens(events.append)
    for part in ['{"reasoning": "r", "ans', 'wer": "The st', "andup is ", 'at 9:30"}']:
        await tokens.send(_chunk(part))
    await tokens.send(_chunk(None, "stop"))
    assert [e.text for e in events if isinstance(e, AnswerText)] == ["The st", "andup is", " at 9:30"]
    # A second call (the next model of the fallback chain) that says something else adds nothing to the shown
    # text: the reply replaces it at the end. The rest of the reply is only what goes on from the shown text.
    await tokens.send(_chunk('{"answer": "Something else entirely"}', "stop"))
    assert len(events) == 3
    assert tokens.rest("Something else entirely") == ""


async def test_a_call_that_broke_off_mid_answer_leaves_nothing_behind_for_the_next() -> None:
    """The first model's stream breaks (no final chunk); the fallback's call starts afresh: no JSON of either
    reaches the person, and the fallback's answer streams on where it goes on from what was shown."""
    events: list[Event] = []
    tokens = AnswerTokens(events.append)
    with answer_tokens(tokens):
        with streaming_answer():
            await tokens.send(_chunk('{"reasoning": "r", "answer": "The st'))
        with streaming_answer():
            for part in ['{"reasoning": "r2", "answer": "The standup', " is late \\ud83d", '\\ude00 today"}']:
                await tokens.send(_chunk(part))
            await tokens.send(_chunk(None, "stop"))
    assert "".join(e.text for e in events if isinstance(e, AnswerText)) == "The standup is late \U0001f600 today"


STREAMED = 'The standup is at 9:30 in the "blue" room,\nevery weekday.'


def standup(system: str, user: str) -> dict[str, Any]:
    """A model that finishes at once and answers about the standup."""
    if "next_tool_name" in system:
        return {"next_thought": "I know this.", "next_tool_name": "finish", "next_tool_args": {}}
    return {"reasoning": "From the context.", "answer": STREAMED}


def openai_model(fake: FakeOpenAI, **config: Any) -> ModelHandle:
    return build_model(ModelConfig(model="openai/fake", api_base=fake.url, api_key="sk-fake", num_retries=0, **config))


async def test_a_provider_that_streams_shows_the_answer_piece_by_piece_as_it_is_written(
    storage: Storage, runner: ToolRunner
) -> None:
    """The real `dspy.LM` client against a server that streams (server-sent events): the reply's call streams,
    the ReAct steps do not; the answer shows in pieces while the provider still writes it, and the usage the
    stream reports is counted exactly."""
    with FakeOpenAI(standup) as fake:
        fake.chunk_chars, fake.chunk_delay_s = 6, 0.02
        agent = Agent(storage, openai_model(fake), runner, AgentOptions(max_iters=3))
        seen: list[tuple[float, Event]] = []
        message = IncomingMessage(platform="console", channel="c", user="u", text="when is the standup?")
        exchange = await agent.respond(message, progress=lambda event: seen.append((time.monotonic(), event)))
        done = time.monotonic()
    pieces = [(at, e.text) for at, e in seen if isinstance(e, AnswerText)]
    assert "".join(text for _, text in pieces) == exchange.reply.text == STREAMED
    assert len(pieces) >= 5
    # The first piece showed while the rest was still being written (the fake pauses 20 ms between chunks).
    assert done - pieces[0][0] >= 0.1
    assert [bool(r.get("stream")) for r in fake.requests] == [False, True]
    assert fake.requests[1]["stream_options"] == {"include_usage": True}
    assert (exchange.chain.input_tokens, exchange.chain.output_tokens) == (20, 20)


async def test_a_model_set_not_to_stream_shows_the_answer_whole(storage: Storage, runner: ToolRunner) -> None:
    with FakeOpenAI(standup) as fake:
        agent = Agent(storage, openai_model(fake, stream=False), runner, AgentOptions(max_iters=3))
        events: list[Event] = []
        message = IncomingMessage(platform="console", channel="c", user="u", text="when is the standup?")
        exchange = await agent.respond(message, progress=events.append)
    assert events == [AnswerText(STREAMED)] and exchange.reply.text == STREAMED
    assert not any(r.get("stream") for r in fake.requests)


async def test_a_provider_that_fails_mid_answer_gives_way_to_the_fallback_whose_answer_replaces_the_shown_text(
    storage: Storage, runner: ToolRunner
) -> None:
    """The primary's stream breaks after a few chunks: nothing is retried on it (its text was shown), the
    fallback model answers, and nothing more is added to the broken text (the reply replaces it at the end)."""
    backup = ScriptedEngine(responder=lambda request: {"reasoning": "r", "answer": "From the backup."})
    with FakeOpenAI(standup) as fake:
        fake.chunk_chars = 12
        fake.fail_next = [ModelFault.slow(0), ModelFault.cut(after=4)]
        agent = Agent(
            storage, openai_model(fake), runner, AgentOptions(max_iters=3), Resilience(fallback=scripted_model(backup))
        )
        events: list[Event] = []
        message = IncomingMessage(platform="console", channel="c", user="u", text="when is the standup?")
        exchange = await agent.respond(message, progress=events.append)
    shown = "".join(e.text for e in events if isinstance(e, AnswerText))
    assert exchange.reply.text == "From the backup."
    assert shown and STREAMED.startswith(shown) and shown != STREAMED
    assert exchange.chain.model == "scripted"


# Slack ------------------------------------------------------------------------------------------------------------


def test_a_task_card_shows_the_models_words_without_letting_them_ping() -> None:
    """A tool's arguments and the thought before it are the model's words, shown in a card and, when the message
    is updated whole, in its markdown: a mention in them is defused like one in the answer."""
    cards: dict[str, dict[str, Any]] = {}
    shown = card(StepStarted(1, "post", "tell <!channel> and @here", "text=<@U1> hi"), cards)
    assert shown is not None
    assert shown["title"] == "post(text=<\u200b@U1> hi)"
    assert shown["details"] == "tell <\u200b!channel> and @\u200bhere"
    assert "<!channel>" not in render(list(cards.values()), "") and "<@U1>" not in render(list(cards.values()), "")


@pytest.mark.parametrize(("options", "delay"), [(STREAM, 0.1)])
async def test_a_two_tool_answer_streams_a_task_card_per_step_then_the_answer(world: World) -> None:
    streaming(world)
    await world.mention("what is 6*7, and the time?", ts="1800.1", event_id="EvTwo")
    await settled(world)
    [stream] = world.fake.streams("C1")
    # In the question's thread, shown to the person who asked (a channel needs the recipient's ids).
    assert (stream["thread_ts"], stream["recipient"], stream["state"]) == ("1800.1", ["T1", "U1"], "stopped")
    shown = cards(stream)
    assert list(shown) == ["step-1", "step-2"]
    assert [updates[-1]["status"] for updates in shown.values()] == ["complete", "complete"]
    assert shown["step-1"][-1]["title"] == "calculator(expression=6*7)"
    # What the tools returned (42, the time) was for the model, not for the channel: the cards never show it.
    assert all("output" not in update for updates in shown.values() for update in updates)
    assert shown["step-2"][-1]["details"] == "now the time"
    # A step's start and end are at most two updates of one card; the steps showed while the answer was made.
    assert all(len(updates) <= 2 for updates in shown.values())
    assert world.fake.calls_to("chat.appendStream")
    assert stream["text"] == ANSWER
    # Nothing else was posted, no reaction was needed, and the reply's key is on the streamed message.
    assert world.fake.posted() == [] and world.fake.calls_to("reactions.add") == []
    reply, message = Reply(ANSWER), IncomingMessage("slack", "C1", "U1", "q", thread="1800.1", message_id="1800.1")
    assert stream["metadata"]["event_payload"]["key"] == last_key("parley-1", reply)
    assert await world.adapter.already_delivered(message, reply, "parley-1")


PINGS = "Sure, I'll tell <!channel> and @here about it: the release is at 5pm, after the checks."


@pytest.mark.parametrize(("options", "chunk_chars"), [(STREAM, 1)])
async def test_a_streamed_answer_shows_in_pieces_and_a_mention_split_across_them_cannot_ping(world: World) -> None:
    """The model streams one character at a time: the answer reaches Slack in several appends before the stream
    ends, never replaced whole; `<` and `!channel>` (or `@` and `here`) in different pieces are still escaped."""
    world.adapter.streams.limits = StreamLimits(append_interval_s=0.05)
    world.engine.chunk_delay_s = 0.003

    def answer(request: Request) -> dict[str, Any]:
        if "next_tool_name" in request_text(request):
            return {"next_thought": "answer", "next_tool_name": "finish", "next_tool_args": {}}
        return {"reasoning": "asked to", "answer": PINGS}

    world.engine.responder = answer
    await world.mention("tell everyone about the release", ts="1850.1", event_id="EvPieces")
    await settled(world)
    [stream] = world.fake.streams("C1")
    # Several appends of text (the stop adds the end at most): the answer showed while it was written.
    assert len([chunk for chunk in stream["chunks"] if chunk["type"] == "markdown_text"]) >= 4
    assert stream["state"] == "stopped" and stream["text"].replace("\u200b", "") == PINGS
    assert "<!channel>" not in stream["text"] and "@here" not in stream["text"]
    assert world.fake.calls_to("chat.update") == [] and world.fake.posted() == []


@pytest.mark.parametrize(("options", "delay", "concurrency"), [(STREAM, 0.3, 1)])
async def test_a_message_waiting_for_a_free_slot_shows_its_stream_before_its_turn(world: World) -> None:
    """Every slot taken: the next conversation's message waits in line, but its stream opens at once, so the
    person sees it is on its way before the answer ahead of it is done."""
    await world.mention("what is 6*7?", ts="1900.1", event_id="EvBusy")
    await world.mention("and 7*8?", ts="1900.2", event_id="EvWaiting", channel="C2")
    await settled(world)
    started = {call.params["channel"]: call.at for call in world.fake.calls_to("chat.startStream") if call.ok}
    first_stop = min(call.at for call in world.fake.calls_to("chat.stopStream") if call.params["channel"] == "C1")
    assert started["C2"] < first_stop
    assert [s["state"] for s in world.fake.streams("C1") + world.fake.streams("C2")] == ["stopped", "stopped"]


@pytest.mark.parametrize(("options", "delay"), [(STREAM, 0.1)])
async def test_a_stream_that_fails_mid_way_ends_with_a_note_and_the_reply_is_posted(world: World) -> None:
    streaming(world)
    world.fake.fail_next("chat.appendStream", "internal_error")
    await world.mention("what is 6*7, and the time?", ts="1800.2", event_id="EvBroken")
    await settled(world)
    [stream] = world.fake.streams("C1")
    assert stream["state"] == "stopped", "a stream is never left open"
    assert stream["text"].endswith("_(live updates stopped; the answer follows below)_")
    [post] = world.fake.posted()
    assert (post["thread_ts"], post["text"]) == ("1800.2", to_mrkdwn(ANSWER))


@pytest.mark.parametrize("options", [STREAM])
async def test_a_refused_stream_posts_the_reply_whole(world: World) -> None:
    world.fake.fail_next("chat.startStream", "not_allowed")
    await world.mention("hello", ts="1800.3", event_id="EvRefused")
    await settled(world)
    assert world.fake.streams("C1") == []
    assert [p["text"] for p in world.fake.posted()] == ["re: hello"]


async def stream_card(world: World, status: str) -> dict[str, Any]:
    """The first stream once its first card has `status`."""

    def found() -> dict[str, Any] | None:
        streams = world.fake.streams("C1")
        first = cards(streams[0]).get("step-1") if streams else None
        return streams[0] if first and first[-1]["status"] == status else None

    stream: dict[str, Any] = await world.fake.wait_for(found, what=f"a card {status}")
    return stream


async def approval_value(world: World) -> tuple[str, str]:
    """The approval prompt's ts and its buttons' value."""
    posts = await world.fake.wait_for(
        lambda: [c for c in world.fake.calls_to("chat.postMessage") if c.ok], what="prompt"
    )
    blocks = posts[0].params["blocks"]
    blocks = blocks if isinstance(blocks, list) else json.loads(blocks)
    actions = next(block for block in blocks if block["type"] == "actions")
    return str(posts[0].response["ts"]), actions["elements"][0]["value"]


@pytest.mark.parametrize(("options", "delay"), [(STREAM, 0.1)])
async def test_an_approval_wait_shows_and_the_stream_goes_on_after_the_decision_in_a_new_message_once_expired(
    world: World,
) -> None:
    world.adapter.streams.limits = StreamLimits(append_interval_s=0.05)
    await world.mention("deploy api", ts="1800.4", event_id="EvDeploy")
    first = await stream_card(world, "pending")
    assert cards(first)["step-1"][-1]["details"] == "waiting for a person's approval"
    # A person takes longer than the stream lives.
    world.fake.expire_stream("C1", first["ts"])
    ts, value = await approval_value(world)
    await world.click("UBOSS", "parley_approve", value, ts)
    await settled(world)
    assert world.deployed == ["api"]
    old, new = world.fake.streams("C1")
    assert old["ts"] == first["ts"] and "(continued below)" in old["shown"]
    assert new["state"] == "stopped" and new["text"] == "tool said: deployed api"
    assert cards(new)["step-1"][-1]["status"] == "complete"
    assert [p["text"] for p in world.fake.posted() if not p.get("blocks")] == []


@pytest.mark.parametrize("options", [STREAM])
async def test_stop_cancels_the_answer_and_the_message_says_it_was_stopped(world: World) -> None:
    world.adapter.streams.limits = StreamLimits(append_interval_s=0.05)
    await world.mention("deploy web", ts="1800.5", event_id="EvStop")
    stream = await stream_card(world, "pending")
    world.fake.stop_stream_by_user("C1", stream["ts"])
    stopped = {"type": "message_stream_stopped", "channel": "C1", "ts": stream["ts"], "user": "U1"}
    status, _ = await world.post(event_callback_body(stopped, event_id="EvStopped"))
    assert status == 200
    await settled(world)
    assert world.deployed == []
    [shown] = world.fake.streams("C1")
    assert "Stopped at your request." in shown["shown"] and "deploy(service=web)" in shown["shown"]
    # The approval request was given up with the run: its prompt lost its buttons.
    [update] = [c for c in world.fake.calls_to("chat.update") if c.params["ts"] != stream["ts"]]
    assert "cancelled" in update.params["text"]
    await world.dispatcher.join()
    assert await world.storage.inbox.unfinished(["slack"]) == []
    # What the model used before the Stop counts against the person's budget: pressing Stop makes nothing free.
    spent = await world.storage.usage.spent(since=0, user="slack:U1")
    asked = world.engine.requests
    assert (spent.calls, spent.input_tokens) == (len(asked), sum(len(request_text(r)) // 4 for r in asked)) != (0, 0)
    assert (await world.storage.chains.stats()).by_status == {"stopped": 1}


async def slash(world: World, text: str, *, user: str, channel: str = "C1") -> str:
    """A `/parley` command typed in Slack: the text of its acknowledgement, as the person sees it."""
    body = slash_command_body(
        "/parley", text, user_id=user, channel_id=channel, response_url=world.fake.response_url(text)
    )
    _, answer = await world.post(body)
    return str(json.loads(answer)["text"])


@pytest.mark.parametrize("options", [STREAM])
async def test_the_stop_command_stops_the_persons_own_answer_under_way_in_the_channel(world: World) -> None:
    """Wherever Slack's own Stop is not offered: `/parley stop` in the channel stops the caller's answer (here
    waiting for an approval), and someone else's stop leaves it alone."""
    world.adapter.streams.limits = StreamLimits(append_interval_s=0.05)
    await world.mention("deploy web", ts="1800.7", event_id="EvStopCommand")
    stream = await stream_card(world, "pending")
    assert await slash(world, "stop", user="U2") == "No answer to you is under way in this channel."
    assert await slash(world, "stop", user="U1") == "Stopped your answer."
    await settled(world)
    assert world.deployed == []
    [shown] = world.fake.streams("C1")
    assert shown["ts"] == stream["ts"] and "Stopped at your request." in shown["shown"]
    await world.dispatcher.join()
    assert await world.storage.inbox.unfinished(["slack"]) == []


@pytest.mark.parametrize("how", ["stream", "command", "command on both"])
async def test_a_stop_asked_on_one_replica_stops_the_answer_another_replica_runs(
    pg_url: str, runner: ToolRunner, how: str
) -> None:
    """Slack sends the Stop (or the `stop` command) to any replica: the one that does not run the answer passes
    it on (PostgreSQL's NOTIFY), and the one that does cancels the run; the reply says it was stopped, once. The
    command stops the person's answers in every thread of the channel, here and on the other replicas."""
    first = await PostgresStorage.open(pg_url, pool_size=4)
    second = await PostgresStorage.open(pg_url, pool_size=4)
    started = {"first": asyncio.Event(), "second": asyncio.Event()}

    def slow(name: str) -> Callable[[], float]:
        def delay() -> float:
            started[name].set()
            return 30.0

        return delay

    here, there = RecordingPlatform(), RecordingPlatform()
    both = how == "command on both"
    running = Agent(first, scripted_model(ScriptedEngine(responder=echo, delay_s=slow("first"))), runner)
    other_engine = ScriptedEngine(responder=echo, delay_s=slow("second") if both else 0.0)
    idle = Agent(second, scripted_model(other_engine), runner)
    options = DispatchOptions(rate_limit=None)
    try:
        async with (
            Dispatcher(first, running, [here], options) as answering,
            Dispatcher(second, idle, [there], options) as other,
        ):
            message = IncomingMessage(platform="test", channel="c", user="u", text="hi", event_id="E1", thread="t1")
            await answering.submit(message)
            await asyncio.wait_for(started["first"].wait(), 10)
            if both:  # the same person asks in another thread of the channel; the other replica answers it
                await other.submit(replace(message, event_id="E2", thread="t2"))
                await asyncio.wait_for(started["second"].wait(), 10)
            [entry, *_] = await first.inbox.recent()
            if how == "stream":  # not under way there: passed on
                assert await other.stop_answer("test", entry.delivery_key) is False
            else:
                assert await other.stop_mine("test", message.conversation.channel, "u") is (True if both else None)
            await asyncio.wait_for(answering.join(), 10)
            await asyncio.wait_for(other.join(), 10)
        assert here.texts() == [STOPPED] and there.texts() == ([STOPPED] if both else [])
        stored = await first.inbox.get(entry.id)
        assert stored is not None and stored.reply is not None and stored.reply.status == "stopped"
    finally:
        await first.close()
        await second.close()


@pytest.mark.parametrize("options", [STREAM])
async def test_an_answer_longer_than_a_stream_holds_goes_on_in_posted_messages(world: World) -> None:
    world.adapter.streams.limits = StreamLimits(append_interval_s=0.05, max_chars=3000)
    await world.mention("essay", ts="1800.6", event_id="EvEssay")
    await settled(world)
    [stream] = world.fake.streams("C1")
    posts = world.fake.posted()
    assert len(stream["text"]) <= 3000 and stream["text"].startswith("Part 0:") and posts
    assert all(p["thread_ts"] == "1800.6" for p in posts)
    shown = stream["text"] + "".join(p["text"] for p in posts)
    assert all(f"Part {i}:" in shown for i in range(12))
    essay = world.engine.responder(world.engine.requests[-1])["answer"]
    assert posts[-1]["metadata"]["event_payload"]["key"] == last_key("parley-1", Reply(essay))


# Discord ----------------------------------------------------------------------------------------------------------

LONG_ANSWER = "\n\n".join(f"Paragraph {i}: " + " ".join(f"word{i}x{j}" for j in range(40)) for i in range(8))


def tool_then_long(request: Request) -> dict[str, Any]:
    """Calls the calculator, then answers at more length than one Discord message holds."""
    answer = two_tools(request)
    return {**answer, "answer": LONG_ANSWER} if "answer" in answer else answer


@pytest.fixture
async def discord_world(storage: Storage) -> AsyncIterator[tuple[FakeDiscord, DiscordAdapter, ScriptedEngine]]:
    """The Discord adapter with streaming on, edits at most every 0.2 s, the model calling two tools."""
    with FakeDiscord(channel_ids=(CHANNEL,)) as fake:
        adapter, dispatcher, engine = build(storage, fake, [], stream=True)
        commands = ChatCommands(storage, ToolRegistry.of(*BUILTIN_TOOLS), dispatcher.submit, ApprovalPolicy())
        adapter.connect(Handlers(dispatcher.submit, dispatcher.decide, commands))
        adapter.streams.limits = EditLimits(edit_interval_s=0.2)
        engine.responder, engine.delay_s = two_tools, 0.1
        async with dispatcher:
            await adapter.start()
            yield fake, adapter, engine
            await dispatcher.join()
            await adapter.close()


async def test_discord_shows_the_steps_as_a_status_line_replaced_by_the_answer_in_one_message(
    discord_world: tuple[FakeDiscord, DiscordAdapter, ScriptedEngine],
) -> None:
    fake, _, _ = discord_world
    fake.fail_next("PATCH /channels/{id}/messages/{mid}", 429)  # Discord asks to slow down once
    sent = fake.message_create("<@2000> what is 6*7, and the time?", mentions_bot=True)
    await fake.wait_for(lambda: [m for m in fake.messages(CHANNEL) if m["content"] == ANSWER], what="the answer")
    [reply] = fake.messages(CHANNEL)
    assert reply["message_reference"]["message_id"] == sent["id"]
    [post] = fake.requests_to("POST /channels/{id}/messages")
    assert post.json["content"].startswith("\u23f3 calculator(expression=6*7)")
    edits = fake.requests_to("PATCH /channels/{id}/messages/{mid}")
    contents = [e.json["content"] for e in edits if e.status == 200]
    assert contents[-1] == ANSWER and any("\u2705 calculator" in c and "current_time" in c for c in contents)
    assert [e.status for e in edits].count(429) == 1
    # About once a second (0.2 s here): never two changes of the message closer than that, the 429's retry aside.
    times = [post.at] + [e.at for e in edits if e.status == 200]
    assert all(later - earlier >= 0.19 for earlier, later in itertools.pairwise(times))


async def test_discord_rolls_a_long_answer_over_to_new_messages_at_2000_characters(
    discord_world: tuple[FakeDiscord, DiscordAdapter, ScriptedEngine],
) -> None:
    fake, _, engine = discord_world
    engine.responder = tool_then_long
    fake.message_create("<@2000> what is 6*7, and the time?", mentions_bot=True)
    parts = split_message(LONG_ANSWER, 2000)
    await fake.wait_for(lambda: [m["content"] for m in fake.messages(CHANNEL)] == parts, what="the answer's messages")
    # The first message showed the status line before the answer replaced it.
    [post, *more] = fake.requests_to("POST /channels/{id}/messages")
    assert post.json["content"].startswith("\u23f3 calculator") and len(more) == len(parts) - 1 >= 1
    chunks = [m["content"] for m in fake.messages(CHANNEL)]
    assert all(len(c) <= 2000 for c in chunks)
    assert " ".join(" ".join(chunks).split()) == " ".join(LONG_ANSWER.split())


async def test_discord_edits_the_answer_in_as_the_model_writes_it(storage: Storage) -> None:
    """A model that streams: the message shows the answer growing, edit by edit, then rolls over at 2,000."""
    engine = ScriptedEngine(responder=tool_then_long, streams=True, chunk_chars=40, chunk_delay_s=0.01)
    with FakeDiscord(channel_ids=(CHANNEL,)) as fake:
        adapter, dispatcher, _ = build(storage, fake, [], stream=True, engine=engine)
        adapter.streams.limits = EditLimits(edit_interval_s=0.2)
        async with dispatcher:
            await adapter.start()
            fake.message_create("<@2000> what is 6*7, and the time?", mentions_bot=True)
            parts = split_message(LONG_ANSWER, 2000)
            await fake.wait_for(lambda: [m["content"] for m in fake.messages(CHANNEL)] == parts, what="the answer")
            await dispatcher.join()
            await adapter.close()
    edits = [e.json["content"] for e in fake.requests_to("PATCH /channels/{id}/messages/{mid}") if e.status == 200]
    growing = [c for c in edits if c != parts[0] and parts[0].startswith(c) and c.startswith("Paragraph 0")]
    assert len(growing) >= 2, edits


async def test_discord_edits_a_slash_command_s_deferred_response_as_the_answer_grows(
    discord_world: tuple[FakeDiscord, DiscordAdapter, ScriptedEngine],
) -> None:
    fake, _, _ = discord_world
    fake.interaction_create_command("ask", {"question": "what is 6*7, and the time?"})
    await fake.wait_for(lambda: [b for _, b in fake.original_edits if b.get("content") == ANSWER], what="the answer")
    contents = [body["content"] for _, body in fake.original_edits]
    assert contents[0].startswith("\u23f3 calculator") and contents[-1] == ANSWER
    assert fake.followups == []


# A process killed mid-stream ---------------------------------------------------------------------------------------


@pytest.mark.slow
async def test_a_process_killed_mid_stream_is_finished_by_the_next_into_the_same_message(tmp_path: Path) -> None:
    """The first process streams the first tool step and dies (SIGKILL) while the model thinks; the next one
    answers the message again into the message the inbox recorded: one message, the whole answer, nothing
    posted besides."""
    database = tmp_path / "crash.db"
    with FakeSlack() as fake:
        worker = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "tests.fakes.stream_crash_worker",
            str(database),
            fake.api_url,
            cwd=REPO,
            env={**os.environ, "PYTHONPATH": str(REPO)},
            stderr=asyncio.subprocess.PIPE,
        )
        try:
            await fake.wait_for(
                lambda: [c for c in fake.calls_to("chat.appendStream") if c.ok] or worker.returncode is not None,
                timeout_s=60,
                what="the worker's first step",
            )
            assert worker.returncode is None, await worker.stderr.read() if worker.stderr else ""
            await recorded(database)
        finally:
            if worker.returncode is None:
                worker.send_signal(signal.SIGKILL)
            await worker.wait()
        [dead] = fake.streams("C1")
        assert dead["state"] == "streaming" and dead["text"] == ""

        storage = await open_storage(path=database)
        runner = ToolRunner(ToolRegistry.of(*BUILTIN_TOOLS))
        adapter = SlackAdapter(SlackConfig("xoxb-test", "secret", api_url=fake.api_url, stream=True))
        try:
            agent = Agent(
                storage, scripted_model(ScriptedEngine(responder=two_tools)), runner, AgentOptions(max_iters=4)
            )
            dispatcher = Dispatcher(storage, agent, [adapter], DispatchOptions(rate_limit=None))
            adapter.connect(Handlers(dispatcher.submit, dispatcher.decide, stop=dispatcher.stop_answer))
            async with dispatcher:
                await fake.wait_for(lambda: fake.streams("C1")[0]["state"] == "stopped", what="the finished stream")
                await dispatcher.join()
            assert await storage.inbox.unfinished(["slack"]) == []
        finally:
            await adapter.close()
            runner.close()
            await storage.close()
    # The message now shows the steps and the answer, replaced whole (what the dead process showed is unknown).
    [streamed] = fake.streams("C1")
    assert streamed["ts"] == dead["ts"] and streamed["state"] == "stopped"
    assert streamed["shown"].endswith(to_mrkdwn(ANSWER)) and "current_time(timezone=UTC)" in streamed["shown"]
    assert list(cards(streamed)) == ["step-1", "step-2"]
    assert fake.posted() == [] and len(fake.calls_to("chat.startStream")) == 1
    assert fake.calls_to("chat.update")[-1].params["metadata"]["event_payload"]["key"] == last_key(
        "parley-1", Reply(ANSWER)
    )


async def recorded(database: Path) -> None:
    """Wait until the worker's inbox row names the message it streams into."""
    storage = await open_storage(path=database)
    try:
        deadline = time.monotonic() + 10
        while not [e for e in await storage.inbox.unfinished(["slack"]) if e.stream]:
            assert time.monotonic() < deadline, "the stream was never recorded"
            await asyncio.sleep(0.01)
    finally:
        await storage.close()


# What a stream counts as delivered; retries, lost claims, Stop and recording ----------------------


def question(ts: str) -> IncomingMessage:
    """A mention in C1 whose reply goes in its thread (so it can stream)."""
    return IncomingMessage("slack", "C1", "U1", "q", workspace="T1", thread=ts, message_id=ts)


async def first_append(world: World) -> None:
    await world.fake.wait_for(lambda: [c for c in world.fake.calls_to("chat.appendStream") if c.ok], what="an append")


@pytest.mark.parametrize(("options", "delay"), [(STREAM, 0.1)])
async def test_an_answer_that_ends_after_a_shutdown_ended_its_stream_is_posted_not_counted_as_shown(
    world: World,
) -> None:
    streaming(world)
    await world.mention("what is 6*7, and the time?", ts="1800.7", event_id="EvLate")
    await first_append(world)
    await world.adapter.streams.close()  # what closing the adapter does while the answer is still running
    await settled(world)
    [stream] = world.fake.streams("C1")
    assert stream["text"].endswith("_Interrupted; the answer follows when I'm back._")
    assert [p["text"] for p in world.fake.posted()] == [to_mrkdwn(ANSWER)]
    assert await world.storage.inbox.unfinished(["slack"]) == []


@pytest.mark.parametrize("options", [STREAM])
async def test_a_reply_slack_would_not_show_in_a_message_that_no_longer_streams_is_posted_the_usual_way(
    world: World,
) -> None:
    dead = await world.adapter.open_stream(question("1900.1"), "parley-9")
    assert dead is not None
    world.fake.stop_stream_by_user("C1", dead.ref)
    taken = await world.adapter.open_stream(question("1900.1"), "parley-9", resume=dead.ref)  # after a restart
    assert taken is not None
    world.fake.fail_next("chat.update", "internal_error")
    assert await taken.finish(Reply("the answer")) is False
    assert world.fake.streams("C1")[0]["shown"] == ""


@pytest.mark.parametrize("options", [STREAM])
async def test_a_failed_stop_counts_an_answer_the_stream_shows_whole_and_ends_one_it_does_not_with_a_note(
    world: World,
) -> None:
    world.adapter.streams.limits = StreamLimits(append_interval_s=0.01)
    whole = await world.adapter.open_stream(question("1900.2"), "parley-8")
    assert whole is not None
    whole.show(AnswerText("the whole answer"))
    await first_append(world)
    world.fake.fail_next("chat.stopStream", "internal_error")
    assert await whole.finish(Reply("the whole answer")) is True  # posting it again would show it twice
    cut = await world.adapter.open_stream(question("1900.3"), "parley-7")
    assert cut is not None
    world.fake.fail_next("chat.stopStream", "internal_error")
    assert await cut.finish(Reply("an answer not streamed yet")) is False  # the usual way posts it
    first, second = world.fake.streams("C1")
    assert (first["state"], first["text"]) == ("stopped", "the whole answer")
    assert first["metadata"]["event_payload"]["key"] == last_key("parley-8", Reply("the whole answer"))
    assert second["state"] == "stopped" and second["text"].endswith(f"_{BROKEN}_")
    assert world.fake.posted() == []


@pytest.mark.parametrize("options", [STREAM])
async def test_a_part_of_a_long_answer_that_failed_to_post_is_posted_again_alone(world: World) -> None:
    world.adapter.streams.limits = StreamLimits(append_interval_s=0.05, max_chars=3000)
    world.fake.fail_next("chat.postMessage", "internal_error")
    with stamina.set_testing(True, attempts=3):
        await world.mention("essay", ts="1800.9", event_id="EvEssay2")
        await settled(world)
    [stream] = world.fake.streams("C1")
    shown = stream["text"] + "".join(p["text"] for p in world.fake.posted())
    assert [shown.count(f"Part {i}:") for i in range(12)] == [1] * 12
    assert await world.storage.inbox.unfinished(["slack"]) == []


@pytest.mark.parametrize("options", [STREAM])
async def test_slack_timeouts_and_dropped_connections_are_transient_delivery_failures(world: World) -> None:
    stream = await world.adapter.open_stream(question("1900.4"), "parley-6")
    assert stream is not None
    # A session slack-sdk makes itself honours its timeout; aiohttp's TimeoutError then reaches Parley as it is.
    world.adapter.client.session, world.adapter.client.timeout = None, 0.1  # type: ignore[assignment]
    world.fake.fail_next("chat.stopStream", Fault.slow(0.3), Fault.slow(0.3))
    assert await stream.finish(Reply("late")) is False
    world.fake.fail_next("chat.postMessage", Fault.slow(0.3))
    with pytest.raises(DeliveryError) as failed:
        await world.adapter.deliver(question("1900.4"), Reply("late"), "parley-6")
    assert failed.value.transient


@pytest.mark.parametrize("options", [STREAM])
async def test_ending_a_stream_never_replaces_the_message_whole(world: World) -> None:
    stream = await world.adapter.open_stream(question("1900.5"), "parley-5")
    assert stream is not None
    world.fake.expire_stream("C1", stream.ref)
    await stream.abort("Interrupted")
    assert world.fake.calls_to("chat.update") == []


@pytest.mark.parametrize(("options", "delay"), [(STREAM, 0.1)])
async def test_a_replica_that_lost_the_conversation_leaves_its_stream_to_the_new_holder_untouched(
    world: World,
) -> None:
    streaming(world)
    await world.mention("what is 6*7, and the time?", ts="1800.8", event_id="EvLost")
    await first_append(world)
    # Another replica takes the conversation (this one's claim lapsed while it stalled): its next write fails.
    [key] = world.dispatcher.held
    assert await world.storage.claims.take(key, "another-replica", ttl_s=60, now=time.time() + 3600)
    await world.dispatcher.join()
    await world.adapter.streams.close()
    [stream] = world.fake.streams("C1")
    assert stream["state"] == "streaming" and "Interrupted" not in stream["text"]
    assert world.fake.calls_to("chat.stopStream") == [] and world.fake.calls_to("chat.update") == []
    assert world.fake.posted() == []


@pytest.mark.parametrize(("options", "delay"), [(STREAM, 0.1)])
async def test_database_failures_while_the_answer_is_recorded_and_marked_delivered_go_on_in_the_same_stream(
    world: World, db: Database
) -> None:
    streaming(world)
    failing = {"answered", "delivered"}  # the exchange's write fails once, then the mark that it was delivered

    def fail_once(state: str, delivered_at: float | None) -> bool:
        write = "delivered" if delivered_at is not None else state
        if write in failing:
            failing.discard(write)
            return True
        return False

    await db.write(lambda conn: conn.create_function("fail_once", 2, fail_once))
    await db.write(
        lambda conn: conn.execute(
            "CREATE TRIGGER fail_once BEFORE UPDATE ON inbox WHEN fail_once(new.state, new.delivered_at) "
            "BEGIN SELECT RAISE(ABORT, 'disk I/O error'); END"
        )
    )
    with stamina.set_testing(True, attempts=3):
        await world.mention("what is 6*7, and the time?", ts="1801.1", event_id="EvRetry")
        await settled(world)
    assert failing == set()
    # One message, showing the answer once; nothing posted besides; recorded as delivered.
    [stream] = world.fake.streams("C1")
    assert (stream["state"], stream["text"], stream["shown"]) == ("stopped", ANSWER, ANSWER)
    assert world.fake.posted() == [] and len(world.fake.calls_to("chat.startStream")) == 1
    [entry] = await world.storage.inbox.recent()
    assert entry.reply is not None and entry.reply.text == ANSWER and entry.delivered_at is not None


async def test_a_stopped_answer_is_told_to_the_observers_with_the_model_calls_it_made(
    storage: Storage, runner: ToolRunner
) -> None:
    """The metrics hear of a stopped answer like any other: its model calls and tokens so far."""
    step = {"next_thought": "compute", "next_tool_name": "calculator", "next_tool_args": {"expression": "6*7"}}
    second_call = asyncio.Event()
    calls = itertools.count()

    def delay() -> float:
        if next(calls) == 0:
            return 0.0
        second_call.set()
        return 30.0

    engine = ScriptedEngine([step], responder=echo, delay_s=delay)
    seen: list[tuple[str, int, int | None]] = []
    observers = [lambda _message, chain: seen.append((chain.status, chain.model_calls, chain.input_tokens))]
    agent = Agent(storage, scripted_model(engine), runner, observers=observers)
    platform = RecordingPlatform()
    async with Dispatcher(storage, agent, [platform], DispatchOptions(rate_limit=None)) as dispatcher:
        await dispatcher.submit(IncomingMessage(platform="test", channel="c", user="u", text="6*7?", event_id="E1"))
        await asyncio.wait_for(second_call.wait(), 10)
        assert await dispatcher.stop_answer("test", "parley-1")
        await dispatcher.join()
    assert platform.texts() == [STOPPED]
    assert seen == [("stopped", 1, len(request_text(engine.requests[0])) // 4)]


async def test_a_stop_that_comes_while_the_answer_is_recorded_leaves_the_answer(
    storage: Storage, db: Database, runner: ToolRunner
) -> None:
    platform = RecordingPlatform()
    agent = Agent(storage, scripted_model(ScriptedEngine(responder=echo)), runner, AgentOptions(max_iters=3))
    loop = asyncio.get_running_loop()
    async with Dispatcher(storage, agent, [platform], DispatchOptions(rate_limit=None)) as dispatcher:

        def recording(state: str) -> int:
            # On the database's writer thread, while the answer is written: the person presses Stop now.
            if state == "answered":
                asyncio.run_coroutine_threadsafe(dispatcher.stop_answer("test", "parley-1"), loop)
                time.sleep(0.05)
            return 0

        await db.write(lambda conn: conn.create_function("recording", 1, recording))
        await db.write(
            lambda conn: conn.execute(
                "CREATE TRIGGER stop_now BEFORE UPDATE ON inbox BEGIN SELECT recording(new.state); END"
            )
        )
        await dispatcher.submit(IncomingMessage(platform="test", channel="c", user="u", text="hi", event_id="E1"))
        await dispatcher.join()
    assert platform.texts() == ["re: hi"]
    entry = await storage.inbox.get(1)
    assert entry is not None and entry.reply is not None and entry.reply.text == "re: hi"


async def test_discord_posts_only_the_files_again_when_they_failed_after_the_text_showed(
    discord_world: tuple[FakeDiscord, DiscordAdapter, ScriptedEngine],
) -> None:
    fake, adapter, _ = discord_world
    message = IncomingMessage("discord", CHANNEL, "7000", "q", workspace="1", message_id="5555")
    stream = await adapter.open_stream(message, "parley-9")
    assert stream is not None
    stream.show(StepStarted(1, "sql_query", "", "query=select 1"))
    await fake.wait_for(lambda: fake.messages(CHANNEL), what="the status line")
    fake.fail_next("POST /channels/{id}/messages", 400)
    reply = Reply("the answer", files=(OutFile("rows.csv", b"a,b\n1,2\n"),))
    with pytest.raises(DeliveryError):
        await stream.finish(reply)
    assert await stream.finish(reply) is True
    text, files = fake.messages(CHANNEL)
    assert text["content"] == "the answer" and files["content"] == "" and files["attachments"]
