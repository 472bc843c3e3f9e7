"""Waiting for a person stalls nobody else: with two slots, three conversations waiting for approvals still
leave room for a fourth, each parked run goes on after its decision, and a parked conversation's later
message waits its turn. End to end over the fake Slack, with the real dispatcher, broker and agent."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from agent.ports import Handlers
from bot.dispatcher import Dispatcher, DispatchOptions
from tests.fakes.slack import event_callback_body
from tests.slack_world import World, settled

CHANNELS = ("C1", "C2", "C3")


def say(text: str, channel: str, ts: str, thread_ts: str | None = None) -> bytes:
    event = {"type": "app_mention", "user": "U1", "text": f"<@UBOT> {text}", "ts": ts, "channel": channel}
    if thread_ts:
        event["thread_ts"] = thread_ts
    return event_callback_body(event, event_id=f"Ev-{channel}-{ts}")


def buttons(post: dict[str, Any]) -> dict[str, str]:
    """A prompt's buttons: action id -> value."""
    blocks = post["blocks"] if isinstance(post["blocks"], list) else json.loads(post["blocks"])
    return {e["action_id"]: e["value"] for b in blocks if b.get("type") == "actions" for e in b["elements"]}


async def prompts(world: World, count: int) -> list[tuple[str, str, str]]:
    """Wait for `count` approval prompts: (channel, message ts, approve button value) each."""

    def shown() -> list[tuple[str, str, str]] | None:
        found = [
            (c.params["channel"], c.response["ts"], buttons(c.params)["parley_approve"])
            for c in world.fake.calls_to("chat.postMessage")
            if c.params.get("blocks") and "parley_approve" in buttons(c.params)
        ]
        return found if len(found) >= count else None

    found: list[tuple[str, str, str]] = await world.fake.wait_for(shown, what=f"{count} approval prompts")
    return found


def texts(world: World, channel: str) -> list[str]:
    return [p["text"] for p in world.fake.posted() if p["channel"] == channel and not p.get("blocks")]


@pytest.mark.parametrize("concurrency", [2])
async def test_parked_approvals_leave_room_for_everyone_else(world: World) -> None:
    for i, channel in enumerate(CHANNELS):
        await world.post(say(f"deploy svc{i}", channel, f"10.{i}"))
    shown = await prompts(world, 3)

    # Three runs wait for a person, with two slots: a fourth conversation is answered at once.
    await world.post(say("hello", "C4", "11.1"))
    await world.fake.wait_for(lambda: texts(world, "C4") == ["re: hello"], timeout_s=1.0, what="the C4 answer")
    # A later message in the parked conversation (the thread of the first) waits behind it.
    await world.post(say("and then?", "C1", "12.1", thread_ts="10.0"))
    await asyncio.sleep(0.2)
    assert texts(world, "C1") == []

    for channel, ts, value in shown:
        await world.click("UBOSS", "parley_approve", value, ts, channel=channel)
    await settled(world)
    assert sorted(world.deployed) == ["svc0", "svc1", "svc2"]
    assert texts(world, "C1") == ["tool said: deployed svc0", "re: and then?"]
    assert texts(world, "C2") == ["tool said: deployed svc1"]


@pytest.mark.parametrize("concurrency", [2])
async def test_a_parked_run_cut_by_a_restart_asks_again_and_the_old_prompt_loses_its_buttons(world: World) -> None:
    for i, channel in enumerate(CHANNELS):
        await world.post(say(f"deploy svc{i}", channel, f"20.{i}"))
    old = await prompts(world, 3)
    await world.dispatcher.stop(grace_s=0.5)

    first = world.dispatcher
    restarted = Dispatcher(
        world.storage,
        first.responder,
        [world.adapter],
        DispatchOptions(rate_limit=None, concurrency=2),
        first.approvals,
    )
    world.adapter.connect(Handlers(restarted.submit, restarted.decide))
    async with restarted:
        asked_again = (await prompts(world, 6))[3:]
        updated = {c.params["ts"] for c in world.fake.calls_to("chat.update")}
        assert {ts for _, ts, _ in old} <= updated, "every prompt of the stopped process was updated"
        assert all("parley_approve" not in buttons(c.params) for c in world.fake.calls_to("chat.update"))
        await world.post(say("hello", "C4", "21.1"))
        await world.fake.wait_for(lambda: texts(world, "C4") == ["re: hello"], timeout_s=1.0, what="the C4 answer")
        for channel, ts, value in asked_again:
            await world.click("UBOSS", "parley_approve", value, ts, channel=channel)
        await restarted.join()
    assert sorted(world.deployed) == ["svc0", "svc1", "svc2"]
    assert texts(world, "C3") == ["tool said: deployed svc2"]


@pytest.mark.parametrize("concurrency", [8])
async def test_one_person_cannot_park_more_than_their_share(world: World) -> None:
    """The cap (approvals.max_waiting_per_user, 3 by default): the fourth waiting request is refused with a
    reply that says why, and the model is not asked to relay it."""
    for i in range(4):
        await world.post(say(f"deploy svc{i}", f"C{i}", f"30.{i}"))
        if i < 3:
            await prompts(world, i + 1)
    await world.fake.wait_for(lambda: texts(world, "C3"), what="the refusal")
    assert texts(world, "C3") == [
        "You already have 3 requests waiting for an approval. Please wait until they are decided, then ask again."
    ]
    await settled(world)
