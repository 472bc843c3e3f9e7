"""Several replicas on one PostgreSQL database: three real `parley run` processes, the fake Slack and the fake
OpenAI-compatible model on 127.0.0.1, Slack events spread over the replicas' ports as a load balancer would.

What must hold: every message answered exactly once and each conversation in order, a replica killed in the
middle of a burst included; an approval asked on one replica and clicked on another; one per-user limit for
all replicas.
"""

from __future__ import annotations

import itertools
import json
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import REPO
from tests.fakes.openai_server import FakeOpenAI
from tests.fakes.slack import FakeSlack, block_actions_body, event_callback_body, slack_headers
from tests.test_cli import base_env, free_port

pytestmark = [pytest.mark.slow, pytest.mark.serial]
SECRET = "replica-secret"
CLAIM_TTL_S = 3.0


class Replica:
    """One `parley run` process serving Slack over HTTP on its own port."""

    def __init__(self, env: dict[str, str]) -> None:
        self.port = free_port()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "bot", "run"],
            env={**env, "PARLEY_HTTP__PORT": str(self.port)},
            cwd=REPO,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def ready(self) -> bool:
        assert self.proc.poll() is None, self.proc.communicate()[1]
        try:
            with urllib.request.urlopen(f"{self.url}/readyz", timeout=1) as answer:
                return bool(json.load(answer)["ready"])
        except (OSError, ValueError):
            return False

    def post(self, body: bytes, **headers: Any) -> int:
        """POST a signed Slack request; the HTTP status (0 when nothing answered: the replica is gone)."""
        request = urllib.request.Request(
            f"{self.url}/slack/events", data=body, headers=slack_headers(SECRET, body, **headers), method="POST"
        )
        try:
            with urllib.request.urlopen(request, timeout=10) as answer:
                return int(answer.status)
        except urllib.error.HTTPError as error:
            return int(error.code)
        except OSError:
            return 0

    def stop(self) -> str:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.communicate(timeout=30)[1]


def wait_until(check: Any, what: str, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


@contextmanager
def replicas(
    tmp_path: Path, pg_url: str, slack: FakeSlack, model: FakeOpenAI, **settings: str
) -> Iterator[list[Replica]]:
    env = base_env(
        tmp_path,
        PARLEY_DB__URL=pg_url,
        PARLEY_LM__MODEL="openai/fake-model",
        PARLEY_LM__API_BASE=model.url,
        PARLEY_LM__API_KEY="sk-test",
        PARLEY_SLACK__BOT_TOKEN="xoxb-test",
        PARLEY_SLACK__SIGNING_SECRET=SECRET,
        PARLEY_SLACK__API_URL=slack.api_url,
        PARLEY_DISPATCH__POLL_S="0.2",
        PARLEY_APPROVALS__APPROVERS=json.dumps({"slack": ["UBOSS"]}),
        # Replies are posted whole, so each is one chat.postMessage to count and order (streamed replies are
        # tested in tests/test_streaming.py).
        PARLEY_SLACK__STREAM="false",
        **settings,
    )
    started = [Replica(env) for _ in range(3)]
    try:
        wait_until(lambda: all(r.ready() for r in started), "three ready replicas")
        yield started
    finally:
        errors = [r.stop() for r in started]
    assert all("xoxb-test" not in e for e in errors)


def mention(channel: str, text: str, ts: str, thread: str | None = None) -> dict[str, Any]:
    event = {"type": "app_mention", "user": "U1", "text": f"<@UBOT> {text}", "ts": ts, "channel": channel}
    return {**event, "thread_ts": thread} if thread else event


def replies(slack: FakeSlack) -> list[dict[str, Any]]:
    return [p for p in slack.posted() if not p.get("blocks")]


def test_a_burst_over_three_replicas_with_one_killed_is_answered_once_and_in_order(tmp_path: Path, pg_url: str) -> None:
    conversations, per_conversation = 20, 10
    total = conversations * per_conversation
    # One user sends the whole burst; a short claim, so the killed replica's conversations move on soon.
    off = {"PARLEY_DISPATCH__RATE_LIMIT": "off", "PARLEY_DISPATCH__CLAIM_TTL_S": str(CLAIM_TTL_S)}
    with FakeSlack() as slack, FakeOpenAI() as model, replicas(tmp_path, pg_url, slack, model, **off) as running:
        turn = itertools.cycle(running)
        killed_at = 0.0
        for i, (m, c) in enumerate(itertools.product(range(per_conversation), range(conversations))):
            if i == total // 2:  # mid-burst, a replica dies without a word
                running[1].proc.send_signal(signal.SIGKILL)
                running[1].proc.wait()
                killed_at = time.monotonic()
            # Each conversation is a thread; `what is N+1000?` makes each reply name its message.
            n = c * 100 + m
            event = mention(f"C{c}", f"what is {n}+1000?", f"{c}.{m + 1}", f"{c}.0")
            body = event_callback_body(event, event_id=f"E{n}")
            first = next(turn)
            while first.post(body) != 200:  # Slack retries a delivery that got no 200, here at another replica
                first = next(turn)
            if n % 7 == 0:  # and sometimes retries one that was answered, to another replica
                other = next(turn)
                while other is first or other.proc.poll() is not None:
                    other = next(turn)
                assert other.post(body, retry_num=1) == 200
        wait_until(lambda: len(replies(slack)) >= total, "every reply", timeout_s=CLAIM_TTL_S + 60)
        recovered_s = time.monotonic() - killed_at
        time.sleep(CLAIM_TTL_S)  # nothing else arrives later
        posted = replies(slack)

    assert len(posted) == total
    by_thread: dict[str, list[int]] = {}
    for post in posted:
        by_thread.setdefault(f"{post['channel']}/{post['thread_ts']}", []).append(int(float(post["text"])))
    assert sorted(by_thread) == sorted(f"C{c}/{c}.0" for c in range(conversations))
    for c in range(conversations):
        assert by_thread[f"C{c}/{c}.0"] == [c * 100 + m + 1000 for m in range(per_conversation)]
    assert recovered_s < CLAIM_TTL_S + 30


def test_an_approval_asked_on_one_replica_is_decided_on_another_and_only_once(tmp_path: Path, pg_url: str) -> None:
    with (
        FakeSlack() as slack,
        FakeOpenAI() as model,
        replicas(tmp_path, pg_url, slack, model, PARLEY_TOOLS__CALCULATOR__APPROVAL="approve") as running,
    ):
        asked, clicked, replayed = running
        assert asked.post(event_callback_body(mention("C1", "what is 20+22?", "9.1"), event_id="EvAsk")) == 200
        wait_until(lambda: [p for p in slack.posted() if p.get("blocks")], "the approval prompt")
        [prompt] = [p for p in slack.posted() if p.get("blocks")]
        blocks = prompt["blocks"] if isinstance(prompt["blocks"], list) else json.loads(prompt["blocks"])
        value = next(b for b in blocks if b["type"] == "actions")["elements"][0]["value"]
        ts = slack.calls_to("chat.postMessage")[0].response["ts"]

        def click() -> bytes:
            action = {"action_id": "parley_approve", "value": value}
            return block_actions_body(
                [action], user_id="UBOSS", channel_id="C1", message_ts=ts, response_url=slack.response_url("click")
            )

        assert clicked.post(click()) == 200
        wait_until(lambda: replies(slack), "the answer after the approval")
        assert replayed.post(click()) == 200
        time.sleep(1.0)
        assert [p["text"] for p in replies(slack)] == ["42"]
        # The replayed click was refused as already decided, to the person who clicked.
        wait_until(lambda: slack.calls_to("chat.postEphemeral"), "the refusal of the second click")
        assert "already approved by slack:UBOSS" in slack.calls_to("chat.postEphemeral")[-1].params["text"]
        assert any("approved by slack:UBOSS" in c.params.get("text", "") for c in slack.calls_to("chat.update"))


def test_the_per_user_limit_counts_across_replicas(tmp_path: Path, pg_url: str) -> None:
    with (
        FakeSlack() as slack,
        FakeOpenAI() as model,
        replicas(tmp_path, pg_url, slack, model, PARLEY_DISPATCH__RATE_LIMIT="3/hour") as running,
    ):
        for i in range(9):  # one user, three messages on each replica, each in a conversation of its own
            body = event_callback_body(mention(f"C{i}", f"what is {i}+1?", f"5.{i}"), event_id=f"EvLimit{i}")
            assert running[i % 3].post(body) == 200
        wait_until(lambda: len(replies(slack)) >= 9, "nine replies")
        texts = [p["text"] for p in replies(slack)]
        # `parley db status` lists the three live replicas, and /readyz tells which one answered.
        status = subprocess.run(
            [sys.executable, "-m", "bot", "db", "status", "--json"],
            env=base_env(tmp_path, PARLEY_DB__URL=pg_url),
            capture_output=True,
            text=True,
            check=True,
        )
        listed = {r["id"] for r in json.loads(status.stdout)["replicas"]}
        for replica in running:
            with urllib.request.urlopen(f"{replica.url}/readyz", timeout=5) as answer:
                listed.discard(json.load(answer)["checks"]["replica"]["id"])
        assert len(json.loads(status.stdout)["replicas"]) == 3 and listed == set()
    limited = [t for t in texts if "faster than I can take them" in t]
    assert len(limited) == 6 and len(texts) - len(limited) == 3
