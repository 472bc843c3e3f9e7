"""The fake Slack speaks the protocol the real slack-sdk and slack-bolt expect (no code of ours involved)."""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from slack_bolt.adapter.socket_mode.aiohttp import AsyncSocketModeHandler
from slack_bolt.app.async_app import AsyncApp
from slack_bolt.request.async_request import AsyncBoltRequest
from slack_sdk.errors import SlackApiError
from slack_sdk.http_retry.builtin_async_handlers import AsyncRateLimitErrorRetryHandler, AsyncServerErrorRetryHandler
from slack_sdk.http_retry.builtin_interval_calculators import FixedValueRetryIntervalCalculator
from slack_sdk.signature import SignatureVerifier
from slack_sdk.web.async_client import AsyncWebClient

from tests.fakes.slack import (
    FakeSlack,
    Fault,
    block_actions_body,
    block_actions_payload,
    event_callback_body,
    sign,
    slack_headers,
    slash_command_body,
    slash_command_payload,
    ssl_check_body,
    url_verification_body,
)

SECRET = "test-signing-secret"

# Slack's documented example (https://docs.slack.dev/authentication/verifying-requests-from-slack/).
DOC_SECRET = "8f742231b10e8888abcd99yyyzzz85a5"
DOC_TIMESTAMP = 1531420618
DOC_BODY = (
    b"token=xyzz0WbapA4vBCDEFasx0q6G&team_id=T1DC2JH3J&team_domain=testteamnow&channel_id=G8PSS9T3V"
    b"&channel_name=foobar&user_id=U2CERLKJA&user_name=roadrunner&command=%2Fwebhook-collect&text="
    b"&response_url=https%3A%2F%2Fhooks.slack.com%2Fcommands%2FT1DC2JH3J%2F397700885554%2F96rGlfmibIGlgcZRskXaIFfN"
    b"&trigger_id=398738663015.47445629121.803a0bc887a14d10d2c447fce8b6703c"
)
DOC_SIGNATURE = "v0=a2114d57b48eac39b9ad189dd8316235a7b4a8d21a10bd27519666489c69b503"


@pytest.fixture
def slack() -> Iterator[FakeSlack]:
    with FakeSlack() as fake:
        yield fake
    assert not fake._thread.is_alive()


@pytest.fixture
async def client(slack: FakeSlack) -> AsyncWebClient:
    return AsyncWebClient(token=slack.bot_token, base_url=slack.api_url)


def mention(text: str, ts: str, *, channel: str = "C1", user: str = "U42") -> dict[str, Any]:
    text = f"<@UBOT> {text}"
    return {"type": "app_mention", "user": user, "text": text, "ts": ts, "channel": channel, "event_ts": ts}


# -- request signing --------------------------------------------------------------------------------------------


def test_sign_matches_slacks_documented_vector() -> None:
    headers = sign(DOC_SECRET, DOC_BODY, DOC_TIMESTAMP)
    assert headers == {"X-Slack-Request-Timestamp": str(DOC_TIMESTAMP), "X-Slack-Signature": DOC_SIGNATURE}
    # And slack-sdk's own verifier agrees with a fresh timestamp.
    fresh = sign(SECRET, b"x=1")
    assert SignatureVerifier(SECRET).is_valid(b"x=1", fresh["X-Slack-Request-Timestamp"], fresh["X-Slack-Signature"])


# -- Web API ----------------------------------------------------------------------------------------------------


async def test_web_client_round_trip(slack: FakeSlack, client: AsyncWebClient) -> None:
    auth = await client.auth_test()
    assert (auth["team_id"], auth["user_id"], auth["bot_id"]) == ("T1", "UBOT", "BBOT")

    root = slack.add_message("C1", "what is 2+2?", user="U42")
    slack.seed_thread("C1", root, [{"user": "U43", "text": "good question"}])
    first = await client.chat_postMessage(channel="C1", text="thinking", thread_ts=root)
    second = await client.chat_postMessage(channel="C1", text="4", thread_ts=root)
    assert first["ok"] and first["channel"] == "C1"
    assert first["message"]["thread_ts"] == root and first["message"]["text"] == "thinking"
    assert float(root) < float(first["ts"]) < float(second["ts"])
    assert [p["text"] for p in slack.posted()] == ["thinking", "4"]

    await client.reactions_add(channel="C1", timestamp=root, name="eyes")
    assert slack.reactions("C1", root) == ["eyes"]
    with pytest.raises(SlackApiError) as again:
        await client.reactions_add(channel="C1", timestamp=root, name="eyes")
    assert again.value.response["error"] == "already_reacted"

    updated = await client.chat_update(channel="C1", ts=first["ts"], text="done thinking")
    assert updated["message"]["text"] == "done thinking"

    replies = await client.conversations_replies(channel="C1", ts=root)
    assert [m["text"] for m in replies["messages"]] == ["what is 2+2?", "good question", "done thinking", "4"]
    assert replies["messages"][0]["reactions"][0]["name"] == "eyes"
    paged = await client.conversations_replies(channel="C1", ts=root, limit=3)
    assert paged["has_more"] and paged["response_metadata"]["next_cursor"]

    await client.assistant_threads_setStatus(channel_id="C1", thread_ts=root, status="is thinking...")
    await client.chat_postEphemeral(channel="C1", user="U42", text="only you")
    await client.chat_delete(channel="C1", ts=second["ts"])
    user = await client.users_info(user="U42")
    assert user["user"]["id"] == "U42"

    # How slack-sdk sends each method: JSON bodies, form/query strings, GET.
    (post, *_) = slack.calls_to("chat.postMessage")
    assert post.headers["Authorization"] == "Bearer xoxb-test"
    assert post.headers["Content-Type"].startswith("application/json")
    assert post.params["thread_ts"] == root
    (react, *_) = slack.calls_to("reactions.add")
    assert react.params == {"channel": "C1", "timestamp": root, "name": "eyes"}
    assert [c.method for c in slack.calls][:2] == ["auth.test", "chat.postMessage"]


async def test_wrong_token_and_unknown_method(slack: FakeSlack) -> None:
    wrong = AsyncWebClient(token="xoxb-wrong", base_url=slack.api_url)
    with pytest.raises(SlackApiError) as error:
        await wrong.auth_test()
    assert error.value.response["error"] == "invalid_auth"
    app_token = AsyncWebClient(token=slack.app_token, base_url=slack.api_url)
    with pytest.raises(SlackApiError) as error:
        await app_token.chat_postMessage(channel="C1", text="hi")
    assert error.value.response["error"] == "not_allowed_token_type"
    good = AsyncWebClient(token=slack.bot_token, base_url=slack.api_url)
    with pytest.raises(SlackApiError) as error:
        await good.api_call("no.such.method")
    assert error.value.response["error"] == "unknown_method"
    assert slack.posted() == []


async def test_rate_limit_is_retried_by_the_sdk_handler(slack: FakeSlack) -> None:
    client = AsyncWebClient(
        token=slack.bot_token,
        base_url=slack.api_url,
        retry_handlers=[AsyncRateLimitErrorRetryHandler(max_retry_count=2)],
    )
    slack.fail_next("chat.postMessage", 429)
    response = await client.chat_postMessage(channel="C1", text="hello")
    assert response["ok"]
    calls = slack.calls_to("chat.postMessage")
    assert [c.status for c in calls] == [429, 200]
    assert calls[0].response == {"ok": False, "error": "ratelimited"}
    assert len(slack.posted()) == 1


async def test_server_error_is_retried_and_slack_errors_are_not(slack: FakeSlack) -> None:
    client = AsyncWebClient(
        token=slack.bot_token,
        base_url=slack.api_url,
        retry_handlers=[
            AsyncServerErrorRetryHandler(max_retry_count=1, interval_calculator=FixedValueRetryIntervalCalculator(0.01))
        ],
    )
    slack.fail_next("chat.postMessage", 500)
    assert (await client.chat_postMessage(channel="C1", text="hello"))["ok"]
    assert [c.status for c in slack.calls_to("chat.postMessage")] == [500, 200]

    slack.fail_next("chat.postMessage", "channel_not_found", Fault.rate_limited(retry_after=7))
    with pytest.raises(SlackApiError) as error:
        await client.chat_postMessage(channel="C1", text="again")
    assert error.value.response.status_code == 200 and error.value.response["error"] == "channel_not_found"
    with pytest.raises(SlackApiError) as error:  # no rate-limit handler on this client
        await client.chat_postMessage(channel="C1", text="again")
    assert error.value.response.status_code == 429 and error.value.response.headers["Retry-After"] == "7"
    assert (await client.chat_postMessage(channel="C1", text="again"))["ok"]
    assert len(slack.posted()) == 2


# -- HTTP endpoint bodies, through Bolt's own request parsing and signature check -------------------------------


async def test_http_bodies_are_what_bolt_parses(slack: FakeSlack) -> None:
    app = AsyncApp(client=AsyncWebClient(token=slack.bot_token, base_url=slack.api_url), signing_secret=SECRET)
    seen: dict[str, Any] = {}

    @app.event("app_mention")
    async def on_mention(event: dict[str, Any], context: Any) -> None:
        seen["event"] = (event["text"], context.team_id, context.bot_user_id)

    @app.command("/ask")
    async def on_ask(ack: Any, command: dict[str, Any], respond: Any) -> None:
        await ack("on it")
        await respond(f"answer to {command['text']}")

    @app.action("approve")
    async def on_approve(ack: Any, body: dict[str, Any], action: dict[str, Any], respond: Any) -> None:
        await ack()
        seen["action"] = (action["value"], body["container"]["message_ts"], body["user"]["id"])
        await respond({"text": "approved", "replace_original": True})

    async def dispatch(body: bytes, secret: str = SECRET) -> Any:
        request = AsyncBoltRequest(body=body.decode(), headers=slack_headers(secret, body))
        return await app.async_dispatch(request)

    response = await dispatch(event_callback_body(mention("hi", "1700000000.000001"), event_id="Ev1"))
    assert response.status == 200
    await slack.wait_for(lambda: seen.get("event"), what="app_mention listener")
    assert seen["event"] == ("<@UBOT> hi", "T1", "UBOT")

    body = slash_command_body("/ask", "why?", user_id="U42", channel_id="C1", response_url=slack.response_url("ask"))
    response = await dispatch(body)
    assert response.status == 200 and response.body == "on it"
    await slack.wait_for(lambda: slack.responses["ask"], what="respond() to the response URL")
    assert slack.responses["ask"][0]["text"] == "answer to why?"

    body = block_actions_body(
        [{"action_id": "approve", "value": "call-7"}],
        user_id="U42",
        channel_id="C1",
        message_ts="1700000000.000100",
        response_url=slack.response_url("approval"),
    )
    assert (await dispatch(body)).status == 200
    await slack.wait_for(lambda: slack.responses["approval"], what="respond() after the action")
    assert seen["action"] == ("call-7", "1700000000.000100", "U42")
    assert slack.responses["approval"] == [{"text": "approved", "replace_original": True}]

    challenge = await dispatch(url_verification_body("abc123"))
    assert challenge.status == 200 and json.loads(challenge.body) == {"challenge": "abc123"}
    assert (await dispatch(ssl_check_body())).status == 200
    assert (await dispatch(event_callback_body(mention("x", "1.2"), event_id="Ev2"), secret="nope")).status == 401
    assert len(slack.calls_to("auth.test")) == 1  # Bolt authorizes once per app


# -- Socket Mode ------------------------------------------------------------------------------------------------


@pytest.fixture
async def bolt(slack: FakeSlack) -> AsyncIterator[tuple[AsyncApp, AsyncSocketModeHandler]]:
    app = AsyncApp(client=AsyncWebClient(token=slack.bot_token, base_url=slack.api_url), signing_secret=SECRET)
    handler = AsyncSocketModeHandler(app, app_token=slack.app_token)
    yield app, handler
    await handler.close_async()
    assert handler.client.aiohttp_client_session.closed


async def test_socket_mode_events_acks_and_reconnect(
    slack: FakeSlack, bolt: tuple[AsyncApp, AsyncSocketModeHandler], caplog: pytest.LogCaptureFixture
) -> None:
    app, handler = bolt
    seen: list[str] = []

    @app.event("app_mention")
    async def on_mention(event: dict[str, Any], say: Any) -> None:
        seen.append(event["text"])
        await say(text=f"re: {event['text']}", thread_ts=event["ts"])

    @app.command("/ask")
    async def on_ask(ack: Any, command: dict[str, Any]) -> None:
        await ack(f"asked: {command['text']}")

    caplog.set_level(logging.WARNING)
    await handler.connect_async()
    assert slack.connections == 1
    (opened,) = slack.calls_to("apps.connections.open")
    assert opened.headers["Authorization"] == "Bearer xapp-test"

    first = slack.send_events_api(mention("one", "1700000000.000001"), event_id="Ev1")
    ack = await slack.wait_for_ack(first)
    assert ack.payload is None and ack.connection == 1
    (post,) = await slack.wait_for_call("chat.postMessage")
    assert post.params["channel"] == "C1" and post.params["thread_ts"] == "1700000000.000001"
    assert post.params["text"] == "re: <@UBOT> one"

    command = slash_command_payload("/ask", "why", user_id="U42", channel_id="C1", response_url=slack.response_url("x"))
    ack = await slack.wait_for_ack(slack.send_slash_command(command))
    assert ack.payload == {"text": "asked: why"}

    assert slack.disconnect_all() == 1
    await slack.wait_for_connections(2)
    assert len(slack.calls_to("apps.connections.open")) == 2
    second = slack.send_events_api(mention("two", "1700000000.000002"), retry_attempt=1, retry_reason="timeout")
    assert (await slack.wait_for_ack(second)).connection == 2
    await slack.wait_for_call("chat.postMessage", count=2)
    assert seen == ["<@UBOT> one", "<@UBOT> two"]

    # Slack's own "disconnect" message: the SDK fetches a new URL, closes the old socket, then opens a new one.
    slack.send_disconnect()
    await slack.wait_for_connections(3)
    await slack.wait_for(lambda: slack.open_connections == 1, what="only the new connection open")
    third = slack.send_events_api(mention("three", "1700000000.000003"))
    assert (await slack.wait_for_ack(third)).connection == 3
    await slack.wait_for_call("chat.postMessage", count=3)
    assert [m for m in slack.received if m != {}] == []
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text


async def test_socket_mode_interactive_envelope(
    slack: FakeSlack, bolt: tuple[AsyncApp, AsyncSocketModeHandler]
) -> None:
    app, handler = bolt
    pressed: asyncio.Event = asyncio.Event()

    @app.action("approve")
    async def on_approve(ack: Any, action: dict[str, Any]) -> None:
        await ack()
        assert action["value"] == "call-9"
        pressed.set()

    await handler.connect_async()
    payload = block_actions_payload(
        [{"action_id": "approve", "value": "call-9"}],
        user_id="U42",
        channel_id="C1",
        message_ts="1700000000.000100",
        response_url=slack.response_url("approval"),
    )
    envelope_id = slack.send_interactive(payload)
    await asyncio.wait_for(pressed.wait(), 5)
    assert (await slack.wait_for_ack(envelope_id)).payload is None
    assert slack.sent[-1]["type"] == "interactive"


def test_fake_threads_end() -> None:
    before = {t.name for t in threading.enumerate()}
    with FakeSlack() as fake:
        assert "fake-slack" in {t.name for t in threading.enumerate()}
        assert fake.url.startswith("http://127.0.0.1:")
    assert {t.name for t in threading.enumerate()} <= before
