"""The Slack adapter end to end: the real slack-bolt and slack-sdk against a fake Slack on 127.0.0.1, signed
requests to Parley's real `/slack/events` endpoint, the real dispatcher, inbox, approvals and agent on a
scripted model."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import aiohttp
import pytest

from adapters.slack import SlackAdapter, SlackConfig
from agent.engines import ScriptedEngine, scripted_model
from agent.engines.scripted import request_text
from agent.messages import IncomingMessage, Reply
from agent.ports import Handlers
from agent.runtime import Agent, AgentOptions
from agent.storage import Storage
from agent.tools import ToolRunner
from bot.dispatcher import Dispatcher, DispatchOptions
from tests.fakes.slack import (
    FakeSlack,
    event_callback_body,
    slack_headers,
)
from tests.slack_world import SECRET, World, model, settled

# Messages in, replies out ----------------------------------------------------------------------------------


async def test_a_mention_is_answered_in_a_thread_under_it(world: World) -> None:
    assert await world.mention("hello there", ts="1700000000.000100", event_id="Ev1") == 200
    await settled(world)
    [post] = world.fake.posted()
    assert (post["channel"], post["thread_ts"], post["text"]) == ("C1", "1700000000.000100", "re: hello there")
    # A quick answer shows no progress sign: no reaction to add, none to clear.
    assert world.fake.calls_to("reactions.add") == world.fake.calls_to("reactions.remove") == []


@pytest.mark.parametrize("delay", [0.4])
async def test_a_slow_answer_shows_a_reaction_until_it_lands(world: World) -> None:
    await world.mention("take your time", ts="1700.11", event_id="EvSlow")
    await settled(world)
    added, removed = world.fake.calls_to("reactions.add"), world.fake.calls_to("reactions.remove")
    assert [(c.params["timestamp"], c.params["name"]) for c in added] == [("1700.11", "eyes")]
    assert [(c.params["timestamp"], c.params["name"]) for c in removed] == [("1700.11", "eyes")]
    assert world.fake.reactions("C1", "1700.11") == []


async def test_a_dm_is_answered_in_the_dm(world: World) -> None:
    event = {"type": "message", "channel_type": "im", "user": "U1", "text": "hi", "ts": "1700.2", "channel": "D1"}
    status, _ = await world.post(event_callback_body(event, event_id="Ev2"))
    await settled(world)
    [post] = world.fake.posted()
    assert status == 200 and post["channel"] == "D1" and "thread_ts" not in post and post["text"] == "re: hi"


async def test_a_thread_keeps_its_own_context(world: World) -> None:
    await world.mention("first question", ts="1700.3", event_id="Ev3")
    await settled(world)
    await world.mention("second question", ts="1700.4", event_id="Ev4", thread_ts="1700.3")
    await world.mention("elsewhere", ts="1700.5", event_id="Ev5")
    await settled(world)
    first, *later = [(p["thread_ts"], p["text"]) for p in world.fake.posted()]
    assert first == ("1700.3", "re: first question")
    # The two later conversations run side by side: either may be posted first.
    assert sorted(later) == [("1700.3", "re: second question"), ("1700.5", "re: elsewhere")]
    prompts = [request_text(r) for r in world.engine.requests]
    second = next(p for p in prompts if "second question" in p)
    assert "re: first question" in second  # the thread's earlier exchange is in the context
    third = next(p for p in prompts if "elsewhere" in p)
    assert "first question" not in third  # another thread does not see it


async def test_a_mention_inside_a_thread_sees_what_people_said_there_before(world: World) -> None:
    world.fake.seed_thread(
        "C1",
        "1690.1",
        [
            {"user": "U7", "text": "the deploy failed with exit code 137", "ts": "1690.1"},
            {"user": "U8", "text": "<@U7> probably out of memory", "ts": "1690.2"},
            {"bot_id": "B9", "text": "some other bot", "ts": "1690.3"},
        ],
    )
    await world.mention("what happened?", ts="1690.4", event_id="EvThread", thread_ts="1690.1")
    await settled(world)
    [post] = world.fake.posted()
    assert post["thread_ts"] == "1690.1"
    prompt = request_text(world.engine.requests[0])
    assert "Earlier in this thread:\n<U7>: the deploy failed with exit code 137\n<U8>: probably out of memory" in prompt
    assert "some other bot" not in prompt


@pytest.mark.parametrize("options", [{}, {"answer_edits": True}])
async def test_an_edited_dm_is_answered_only_when_settings_opt_in(world: World, options: dict[str, Any]) -> None:
    edited = {
        "type": "message",
        "subtype": "message_changed",
        "channel_type": "im",
        "channel": "D1",
        "message": {"type": "message", "user": "U1", "text": "what about now?", "ts": "1700.31"},
        "previous_message": {"type": "message", "user": "U1", "text": "what about now", "ts": "1700.31"},
        "ts": "1700.32",
    }
    status, _ = await world.post(event_callback_body(edited, event_id="EvEdit"))
    await settled(world)
    assert status == 200
    expected = ["re: what about now?"] if options.get("answer_edits") else []
    assert [p["text"] for p in world.fake.posted()] == expected


@pytest.mark.parametrize(("delay", "options"), [(0.4, {"assistant_status": True})])
async def test_assistant_status_when_opted_in(world: World) -> None:
    await world.mention("slow one", ts="1700.41", event_id="EvStatus", thread_ts="1700.40")
    await settled(world)
    statuses = [c.params["status"] for c in world.fake.calls_to("assistant.threads.setStatus")]
    assert statuses == ["is thinking...", ""]


async def test_post_to_a_channel_for_scheduled_reports(world: World) -> None:
    await world.adapter.post("slack:T1/C5", "**Weekly** report")
    [post] = world.fake.posted()
    assert (post["channel"], post["text"]) == ("C5", "*Weekly* report")


async def test_url_verification_is_answered_with_the_challenge(world: World) -> None:
    from tests.fakes.slack import url_verification_body

    status, text = await world.post(url_verification_body("chal-123"))
    assert status == 200 and "chal-123" in text


async def test_a_retried_event_is_answered_once(world: World) -> None:
    body = event_callback_body(
        {"type": "app_mention", "user": "U1", "text": "<@UBOT> once", "ts": "1700.6", "channel": "C1"},
        event_id="EvRetry",
    )
    statuses = [await world.post(body), await world.post(body, retry_num=1, retry_reason="http_timeout")]
    await settled(world)
    assert [s for s, _ in statuses] == [200, 200]
    assert [p["text"] for p in world.fake.posted()] == ["re: once"]


@pytest.mark.parametrize("problem", ["bad signature", "stale timestamp"])
async def test_unsigned_or_stale_requests_are_refused_and_nothing_happens(world: World, problem: str) -> None:
    body = event_callback_body(
        {"type": "app_mention", "user": "U1", "text": "<@UBOT> sneaky", "ts": "1700.7", "channel": "C1"},
        event_id="EvBad",
    )
    if problem == "bad signature":
        headers = slack_headers("wrong-secret", body)
    else:
        headers = slack_headers(SECRET, body, timestamp=int(time.time()) - 600)
    async with aiohttp.ClientSession() as session, session.post(world.url, data=body, headers=headers) as answer:
        assert answer.status == 401
    await settled(world)
    assert world.engine.requests == [] and world.fake.posted() == []
    assert await world.storage.inbox.unfinished(["slack"]) == [] and await world.storage.inbox.get(1) is None


async def test_the_bots_own_messages_and_other_bots_are_ignored(world: World) -> None:
    own = {"type": "message", "channel_type": "im", "user": "UBOT", "text": "my answer", "ts": "1.1", "channel": "D1"}
    other = {"type": "message", "channel_type": "im", "bot_id": "B2", "text": "beep", "ts": "1.2", "channel": "D1"}
    edit = {"type": "message", "channel_type": "im", "subtype": "message_changed", "ts": "1.3", "channel": "D1"}
    for i, event in enumerate((own, other, edit)):
        status, _ = await world.post(event_callback_body(event, event_id=f"EvIgnored{i}"))
        assert status == 200
    await settled(world)
    assert world.engine.requests == [] and world.fake.posted() == []


async def test_markdown_is_converted_and_a_long_answer_split_in_order(world: World) -> None:
    await world.mention("essay", ts="1700.8", event_id="Ev8")
    await settled(world)
    posts = world.fake.posted()
    assert len(posts) >= 2 and all(len(p["text"]) <= 3900 for p in posts)
    assert all(p["thread_ts"] == "1700.8" for p in posts)
    joined = "\n\n".join(p["text"] for p in posts)
    assert "*important*" in joined and "**" not in joined and "<https://example.com/doc|documented>" in joined
    assert [int(part.split(":")[0].removeprefix("Part ")) for part in joined.split("\n\n")] == list(range(12))


async def test_a_rate_limited_post_is_retried(world: World) -> None:
    world.fake.fail_next("chat.postMessage", 429)
    await world.mention("patience", ts="1700.9", event_id="Ev9")
    await settled(world)
    assert len(world.fake.calls_to("chat.postMessage")) == 2
    assert [p["text"] for p in world.fake.posted()] == ["re: patience"]


# Approval buttons ------------------------------------------------------------------------------------------------


async def approval_prompt(world: World) -> tuple[dict[str, Any], str]:
    """The posted approval message and its button value."""
    posts = await world.fake.wait_for(lambda: [p for p in world.fake.posted() if p.get("blocks")], what="prompt")
    prompt = posts[0]
    blocks = prompt["blocks"] if isinstance(prompt["blocks"], list) else json.loads(prompt["blocks"])
    actions = next(block for block in blocks if block["type"] == "actions")
    return prompt, actions["elements"][0]["value"]


async def test_approval_buttons_only_count_for_approvers_and_only_once(world: World) -> None:
    await world.mention("deploy api", ts="1701.1", event_id="EvDeploy")
    prompt, value = await approval_prompt(world)
    assert prompt["thread_ts"] == "1701.1" and "<@U1> asked me to run `deploy`" in json.dumps(prompt["blocks"])
    ts = world.fake.calls_to("chat.postMessage")[0].response["ts"]

    await world.click("U1", "parley_approve", value, ts)  # the requester is not an approver
    await world.click("UBOSS", "parley_approve", value, ts)
    await settled(world)
    await world.click("UBOSS", "parley_deny", value, ts)  # a second click
    ephemeral = [c.params["text"] for c in world.fake.calls_to("chat.postEphemeral")]
    assert ephemeral == [
        "You cannot do that: you are not an approver for this channel.",
        "You cannot do that: this request was already approved by slack:UBOSS.",
    ]
    assert world.deployed == ["api"]
    [update] = world.fake.calls_to("chat.update")
    assert ":white_check_mark: approved by slack:UBOSS" in update.params["text"]
    assert world.fake.posted()[-1]["text"] == "tool said: deployed api"


async def test_a_click_after_expiry_is_refused_and_the_tool_never_runs(world: World) -> None:
    await world.mention("deploy db", ts="1701.2", event_id="EvLate")
    _, value = await approval_prompt(world)
    await settled(world)  # nobody clicks within the expiry
    ts = world.fake.calls_to("chat.postMessage")[0].response["ts"]
    await world.click("UBOSS", "parley_approve", value, ts)
    assert world.deployed == []
    assert ":hourglass: expired (no decision in time)" in world.fake.calls_to("chat.update")[0].params["text"]
    assert world.fake.calls_to("chat.postEphemeral")[0].params["text"] == (
        "You cannot do that: this request was already expired."
    )


# Socket Mode -------------------------------------------------------------------------------------------------------


async def test_socket_mode_mention_is_answered_and_acknowledged(
    storage: Storage, fake: FakeSlack, runner: ToolRunner
) -> None:
    agent = Agent(storage, scripted_model(ScriptedEngine(responder=model)), runner, AgentOptions(max_iters=3))
    config = SlackConfig(
        bot_token="xoxb-test", signing_secret="", app_token="xapp-test", api_url=fake.api_url, stream=False
    )
    adapter = SlackAdapter(config)
    async with Dispatcher(storage, agent, [adapter], DispatchOptions(rate_limit=None)) as dispatcher:
        adapter.connect(Handlers(dispatcher.submit, dispatcher.decide))
        await adapter.start_socket_mode()
        await fake.wait_for_connections(1)
        event = {
            "type": "app_mention",
            "user": "U1",
            "text": "<@UBOT> over the socket",
            "ts": "1702.1",
            "channel": "C1",
        }
        envelope = fake.send_events_api(event, event_id="EvSocket")
        await fake.wait_for_ack(envelope)
        await fake.wait_for(lambda: fake.posted(), what="reply")
        # The socket drops: the client reconnects by itself and events flow again.
        fake.disconnect_all()
        await fake.wait_for_connections(2)
        again = {**event, "text": "<@UBOT> after a reconnect", "ts": "1702.2"}
        await fake.wait_for_ack(fake.send_events_api(again, event_id="EvSocket2"))
        await fake.wait_for(lambda: len(fake.posted()) == 2, what="second reply")
        await dispatcher.join()
        await adapter.close()
    assert [(p["thread_ts"], p["text"]) for p in fake.posted()] == [
        ("1702.1", "re: over the socket"),
        ("1702.2", "re: after a reconnect"),
    ]


# The app manifest ---------------------------------------------------------------------------------------------

# Every Web API method the adapter calls, and the bot scope Slack requires for it.
METHOD_SCOPES = {
    "chat_postMessage": "chat:write",
    "chat_update": "chat:write",
    "chat_postEphemeral": "chat:write",
    "reactions_add": "reactions:write",
    "reactions_remove": "reactions:write",
    "auth_test": None,
    "conversations_replies": "channels:history",
    # A stored reply's delivery key, looked up before posting it again (top-level replies, in DMs).
    "conversations_history": "channels:history",
    "files_upload_v2": "files:write",
    # Opt-in (PARLEY_SLACK__ASSISTANT_STATUS): the workspace adds assistant:write to use it.
    "assistant_threads_setStatus": None,
    # Streamed replies (PARLEY_SLACK__STREAM, adapters/slack_stream.py).
    "chat_startStream": "chat:write",
    "chat_appendStream": "chat:write",
    "chat_stopStream": "chat:write",
}


def test_the_app_manifest_grants_what_the_adapter_uses() -> None:
    import re

    import yaml

    from tests.conftest import REPO

    manifest = yaml.safe_load((REPO / "deploy" / "slack-app-manifest.yml").read_text())
    scopes = set(manifest["oauth_config"]["scopes"]["bot"])
    source = "".join((REPO / "adapters" / name).read_text() for name in ("slack.py", "slack_stream.py"))
    used = set(re.findall(r"self\.client\.(\w+)", source))
    assert {"chat_startStream", "chat_appendStream", "chat_stopStream"} <= used
    assert used <= set(METHOD_SCOPES), f"add the scope of {used - set(METHOD_SCOPES)} to the manifest and here"
    assert {scope for method, scope in METHOD_SCOPES.items() if method in used and scope} <= scopes
    assert {"app_mentions:read", "im:history", "commands"} <= scopes
    # Shared files are downloaded from their private URL with the bot token, which needs files:read.
    assert "url_private" not in source or "files:read" in scopes
    settings = manifest["settings"]
    assert set(settings["event_subscriptions"]["bot_events"]) == {"app_mention", "message.im"}
    assert settings["interactivity"]["is_enabled"] is True
    assert [c["command"] for c in manifest["features"]["slash_commands"]] == [SlackConfig("x", "y").command]


@pytest.mark.parametrize("thread", ["1702.1", ""])
async def test_a_reply_posted_by_a_process_that_died_before_recording_it_is_not_posted_again(
    world: World, thread: str
) -> None:
    """The reply is stored and was posted (its chunks carry their delivery key), but the process died before
    marking it delivered: whoever picks the message up finds the post in the thread (or the channel) and only
    records it."""
    message = IncomingMessage(
        platform="slack", channel="C1", user="U1", text="hi", thread=thread, message_id="1702.1", event_id="EvDied"
    )
    entry = await world.storage.inbox.accept(message)
    assert entry is not None
    reply = Reply("answered before the crash")
    await world.storage.inbox.answer(entry.id, reply)
    await world.adapter.deliver(message, reply, entry.delivery_key)  # then the process died

    for _ in range(100):  # the dispatcher looks for unfinished messages every second
        stored = await world.storage.inbox.get(entry.id)
        if stored is not None and stored.delivered_at is not None:
            break
        await asyncio.sleep(0.05)
    assert stored is not None and stored.delivered_at is not None
    assert [p["text"] for p in world.fake.posted()] == ["answered before the crash"]
