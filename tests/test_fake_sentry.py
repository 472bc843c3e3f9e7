"""The fake Sentry takes what the real sentry-sdk sends (no code of ours involved), and refuses what Relay would.

`sentry_sdk.init` sets a process-wide client, so every test here goes through the `sentry` fixture, which puts
the SDK back in its disabled state afterwards: later tests in the suite must not report to a dead port.
"""

from __future__ import annotations

import gzip
import json
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import sentry_sdk

from tests.fakes.sentry import FakeSentry, parse_envelope

InitSentry = Callable[..., sentry_sdk.Client]


@pytest.fixture
def fake() -> Iterator[FakeSentry]:
    with FakeSentry() as server:
        yield server
    assert not server._thread.is_alive()


def reset_sentry() -> None:
    """Close the global client (flushing what it queued, stopping its worker thread) and put the no-op client
    back, which is what an uninitialised SDK has. `sentry_sdk.init(dsn=None)` would instead leave a real,
    if inactive, client with its integrations installed."""
    sentry_sdk.get_client().close(timeout=2)
    sentry_sdk.get_global_scope().set_client(None)


@pytest.fixture
def sentry(fake: FakeSentry) -> Iterator[InitSentry]:
    """`sentry(dsn=None, **options)` initialises the real SDK against the fake (or `dsn`); undone after the test."""

    def init(dsn: str | None = None, **options: Any) -> sentry_sdk.Client:
        # No default integrations: they hook logging, threading and sys.excepthook for the whole process.
        # An explicit empty http_proxy keeps a developer's proxy variables from rerouting 127.0.0.1.
        sentry_sdk.get_client().close(timeout=2)  # a second init in one test replaces the first client
        sentry_sdk.init(dsn=dsn or fake.dsn, default_integrations=False, http_proxy="", **options)
        client = sentry_sdk.get_client()
        assert isinstance(client, sentry_sdk.Client) and client.is_active()
        return client

    try:
        yield init
    finally:
        reset_sentry()
    assert not sentry_sdk.get_client().is_active()


def post(url: str, body: bytes, headers: dict[str, str]) -> tuple[int, dict[str, Any]]:
    request = urllib.request.Request(url, data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


AUTH = {"X-Sentry-Auth": "Sentry sentry_key=public, sentry_version=7, sentry_client=test/1.0"}


# -- the real SDK -----------------------------------------------------------------------------------------------


def test_message_with_a_scope_tag_arrives_gzipped(fake: FakeSentry, sentry: InitSentry) -> None:
    sentry()
    with sentry_sdk.new_scope() as scope:
        scope.set_tag("component", "fake-sentry-test")
        event_id = sentry_sdk.capture_message("hello", level="warning")
    sentry_sdk.flush(timeout=5)

    (event,) = fake.wait_for_events(1)
    assert event["event_id"] == event_id
    assert event["message"] == "hello"
    assert event["level"] == "warning"
    assert event["tags"] == {"component": "fake-sentry-test"}
    # The SDK's default is gzip (brotli only if importable); what is kept is the decompressed envelope.
    assert fake.encodings[0] == ("br" if _brotli_importable() else "gzip")
    assert b'"hello"' in fake.raw_bodies[0]
    header, items = fake.envelopes[0]
    assert header["event_id"] == event_id
    assert header["trace"]["public_key"] == "public"
    assert [item.type for item in items][:1] == ["event"]
    assert fake.rejected == []


def test_an_exception_arrives_with_its_type_and_value(fake: FakeSentry, sentry: InitSentry) -> None:
    sentry()
    try:
        raise ValueError("boom")
    except ValueError as error:
        event_id = sentry_sdk.capture_exception(error)
    sentry_sdk.flush(timeout=5)

    (event,) = fake.wait_for_events(1)
    assert event["event_id"] == event_id
    (value,) = event["exception"]["values"]
    assert (value["type"], value["value"]) == ("ValueError", "boom")
    assert value["stacktrace"]["frames"][-1]["function"] == "test_an_exception_arrives_with_its_type_and_value"


def test_an_uncompressed_envelope_is_taken_too(fake: FakeSentry, sentry: InitSentry) -> None:
    sentry(_experiments={"transport_compression_level": 0})
    sentry_sdk.capture_message("plain")
    sentry_sdk.flush(timeout=5)

    (event,) = fake.wait_for_events(1)
    assert event["message"] == "plain"
    assert fake.encodings[0] == ""


def test_a_wrong_key_or_project_records_nothing(fake: FakeSentry, sentry: InitSentry) -> None:
    sentry(dsn=fake.dsn.replace("//public@", "//intruder@"))
    sentry_sdk.capture_message("from the wrong key")
    sentry_sdk.flush(timeout=5)
    sentry(dsn=fake.dsn.removesuffix("/1") + "/2")
    sentry_sdk.capture_message("to the wrong project")
    sentry_sdk.flush(timeout=5)

    # Each client also sends a client report (the event it lost) on flush, refused the same way.
    assert sorted(set(fake.rejected)) == [("/api/1/envelope/", 401), ("/api/2/envelope/", 404)]
    assert (fake.events, fake.envelopes, fake.raw_bodies) == ([], [], [])
    with pytest.raises(AssertionError, match=r"expected 1 Sentry event\(s\) within 0.1s, got 0"):
        fake.wait_for_events(1, timeout=0.1)


def test_reset_leaves_the_sdk_disabled(fake: FakeSentry, sentry: InitSentry) -> None:
    sentry()
    reset_sentry()
    assert not sentry_sdk.get_client().is_active()
    assert sentry_sdk.capture_message("after the reset") is None
    sentry_sdk.flush(timeout=1)
    assert fake.envelopes == []


# -- the protocol by hand ---------------------------------------------------------------------------------------


def test_items_with_and_without_length_and_the_legacy_store(fake: FakeSentry) -> None:
    attachment = b"line one\nline two\n"
    body = b"\n".join(
        [
            b'{"event_id":"9ec79c33ec9942ab8353589fcb2e04dc"}',
            b'{"type":"attachment","length":%d,"filename":"a.txt"}' % len(attachment),
            attachment,
            b'{"type":"event"}',
            b'{"message":"no length","level":"error"}',
            b"",
        ]
    )
    status, answer = post(
        f"{fake.base_url}/api/1/envelope/",
        gzip.compress(body),
        {**AUTH, "Content-Type": "application/x-sentry-envelope", "Content-Encoding": "gzip"},
    )
    assert (status, answer) == (200, {"id": "9ec79c33ec9942ab8353589fcb2e04dc"})
    header, items = fake.envelopes[0]
    assert header == {"event_id": "9ec79c33ec9942ab8353589fcb2e04dc"}
    assert [(item.type, item.payload) for item in items] == [
        ("attachment", attachment),
        ("event", b'{"message":"no length","level":"error"}'),
    ]
    assert fake.raw_bodies == [body]

    event = {"event_id": "b" * 32, "message": "stored", "level": "info"}
    status, answer = post(f"{fake.base_url}/api/1/store/", json.dumps(event).encode(), AUTH)
    assert (status, answer) == (200, {"id": "b" * 32})
    assert fake.wait_for_events(2) == [{"message": "no length", "level": "error"}, event]


def test_malformed_bodies_are_refused(fake: FakeSentry) -> None:
    url = f"{fake.base_url}/api/1/envelope/"
    assert post(url, b'{}\n{"type":"event","length":99}\n{}\n', AUTH)[0] == 400
    assert post(url, b"not json\n", AUTH)[0] == 400
    assert post(url, b"{}\n", {**AUTH, "Content-Encoding": "gzip"})[0] == 400
    assert post(url, b"{}\n", {**AUTH, "Content-Encoding": "zstd"})[0] == 415
    if not _brotli_importable():
        assert post(url, b"{}\n", {**AUTH, "Content-Encoding": "br"})[0] == 415
    assert post(url, b"{}\n", {})[0] == 401
    assert fake.envelopes == []
    assert parse_envelope(b"{}") == ({}, [])


def _brotli_importable() -> bool:
    try:
        import brotli  # type: ignore[import-not-found, unused-ignore]  # noqa: F401
    except ImportError:
        return False
    return True
