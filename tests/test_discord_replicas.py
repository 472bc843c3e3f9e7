"""Discord with several replicas on one PostgreSQL database: one holds the gateway, the others answer over REST.

Every replica is the real stack (storage, dispatcher, echo agent, the Discord adapter with the storage's
leadership) against one fake Discord. The leader is killed the way it happens: SIGKILL of a real process, or the
database ending its session. Sharded replicas run their own shards with no election.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
from collections.abc import Iterator
from contextlib import AbstractAsyncContextManager
from pathlib import Path

import asyncpg  # type: ignore[import-untyped]
import pytest

from adapters.discord import DiscordAdapter, DiscordConfig
from agent.approvals import Decision, Verdict
from agent.engines import ScriptedEngine, scripted_model
from agent.engines.scripted import echo
from agent.messages import IncomingMessage
from agent.ports import Handlers
from agent.storage import open_storage
from agent.storage.leadership import Role
from bot.app import build_app
from bot.config import Settings
from bot.service import readiness
from tests.conftest import REPO, until
from tests.fakes.discord import FakeDiscord
from tests.fakes.discord_replica import Replica, replica

pytestmark = pytest.mark.serial
CHANNEL = "4000"


@pytest.fixture
def fake() -> Iterator[FakeDiscord]:
    with FakeDiscord(channel_ids=(CHANNEL,)) as running:
        yield running


def started(database: str, fake: FakeDiscord, identity: str) -> AbstractAsyncContextManager[Replica]:
    return replica(database, fake.api_url, fake.gateway_url, fake.token, identity=identity)


def answered(fake: FakeDiscord, text: str) -> int:
    return sum(m["content"] == text for m in fake.messages(CHANNEL))


async def test_one_replica_holds_the_gateway_and_a_follower_answers_over_rest(pg_url: str, fake: FakeDiscord) -> None:
    async with started(pg_url, fake, "replica-a") as a, started(pg_url, fake, "replica-b") as b:
        assert a.adapter.gateway_status() == {"gateway": "leader", "leader": "replica-a"}
        assert b.adapter.gateway_status() == {"gateway": "follower", "leader": "replica-a"}
        assert await a.adapter.is_connected() and await b.adapter.is_connected()  # both ready

        fake.message_create("<@2000> over the gateway", mentions_bot=True)
        await fake.wait_for(lambda: answered(fake, "re: over the gateway"), what="the leader's answer")

        # A message the follower takes from the shared inbox: its reply goes out over REST.
        stored = fake.message_create("<@2000> from the inbox", mentions_bot=True, send=False)
        await b.dispatcher.submit(
            IncomingMessage(
                platform="discord",
                workspace=fake.guild_id,
                channel=CHANNEL,
                user=stored["author"]["id"],
                text="from the inbox",
                message_id=stored["id"],
                event_id=stored["id"],
                mentioned=True,
            )
        )
        await fake.wait_for(lambda: answered(fake, "re: from the inbox"), what="the follower's reply")
        [reply] = [m for m in fake.messages(CHANNEL) if m["content"] == "re: from the inbox"]
        assert reply["message_reference"]["message_id"] == stored["id"]
        await b.adapter.post(f"discord:{fake.guild_id}/{CHANNEL}", "a scheduled report")
        assert answered(fake, "a scheduled report") == 1

        await a.dispatcher.join()
        await b.dispatcher.join()
        assert fake.identifies == 1 and fake.connections == 1  # the follower never opened the gateway
        assert answered(fake, "re: over the gateway") == 1

        settings = Settings(db={"url": pg_url}, scheduler={"enabled": False})
        async with build_app(settings, model=scripted_model(ScriptedEngine(responder=echo))) as parley:
            checks = await readiness(parley, [b.adapter])
        assert checks["platform:discord"] == {
            "ok": True,
            "connected": True,
            "gateway": "follower",
            "leader": "replica-a",
        }


async def test_a_leader_that_loses_its_database_session_closes_the_gateway_and_the_follower_takes_it(
    pg_url: str, fake: FakeDiscord
) -> None:
    async with started(pg_url, fake, "replica-a") as a, started(pg_url, fake, "replica-b") as b:
        conn = await asyncpg.connect(pg_url)
        try:
            await conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = 'parley replica-a'"
            )
        finally:
            await conn.close()
        await fake.wait_for_disconnects(1)  # the old leader's socket: closed before anyone else leads
        await until(lambda: fake.ready_count == 2, "the follower's gateway session")
        assert [number for number, _ in fake.disconnects] == [1]
        assert fake.open_connections == 1

        await until(b.adapter.ready.is_set, "the new leader's on_ready")
        fake.message_create("<@2000> after the takeover", mentions_bot=True)
        await fake.wait_for(lambda: answered(fake, "re: after the takeover"), what="an answer after the takeover")
        assert b.adapter.gateway_status() == {"gateway": "leader", "leader": "replica-b"}
        await until(lambda: a.adapter.gateway_status() == {"gateway": "follower", "leader": "replica-b"}, "a follows")
        assert await a.adapter.is_connected()


@pytest.mark.slow
async def test_a_killed_leader_is_replaced_within_ten_seconds_and_messages_after_are_answered(
    pg_url: str, fake: FakeDiscord, tmp_path: Path
) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    args = [pg_url, fake.api_url, fake.gateway_url, fake.token]
    log = tmp_path / "leader.log"
    with log.open("wb") as stderr:
        leader = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "tests.fakes.discord_replica", *args, cwd=REPO, env=env, stderr=stderr
        )
    try:
        await until(lambda: fake.ready_count == 1 or leader.returncode is not None, "the first replica leads", 60)
        assert leader.returncode is None, log.read_text()
        async with started(pg_url, fake, "replica-b") as b:
            assert b.adapter.seat.role == Role(leading=False, leader=f"{socket.gethostname()}:{leader.pid}")

            leader.send_signal(signal.SIGKILL)
            await leader.wait()
            takeover = await until(lambda: fake.ready_count == 2, "the follower's gateway session")
            print(f"gateway takeover after SIGKILL: {takeover:.2f} s")
            assert takeover < 10
            assert fake.identifies == 2 and b.adapter.gateway_status()["gateway"] == "leader"
            await until(b.adapter.ready.is_set, "the new leader's on_ready")
            assert await b.adapter.is_connected()

            fake.message_create("<@2000> anyone there?", mentions_bot=True)
            await fake.wait_for(lambda: answered(fake, "re: anyone there?"), what="the new leader's answer")
            await b.dispatcher.join()
            assert answered(fake, "re: anyone there?") == 1
    finally:
        if leader.returncode is None:
            leader.kill()
            await leader.wait()


async def test_sharded_replicas_run_their_own_shards_without_an_election(tmp_path: Path, fake: FakeDiscord) -> None:
    storage = await open_storage(path=tmp_path / "parley.db")
    config = DiscordConfig(
        token=fake.token,
        api_url=fake.api_url,
        gateway_url=fake.gateway_url,
        ready_timeout_s=0.05,
        shard_count=2,
        shard_ids=(1,),
        stream=False,
    )
    adapter = DiscordAdapter(config, leadership=storage.leadership)
    heard: list[IncomingMessage] = []

    async def submit(message: IncomingMessage) -> bool:
        heard.append(message)
        return False

    async def decide(decision: Decision) -> Verdict:
        return Verdict(False, "not here")

    adapter.connect(Handlers(submit, decide))
    try:
        assert adapter.leadership is None
        await adapter.start()
        [identify] = fake.identify_payloads
        assert identify["shard"] == [1, 2]
        fake.message_create("<@2000> on shard one", mentions_bot=True)
        await until(lambda: heard, "the sharded client hears the mention")
        assert heard[0].text == "on shard one"
        assert await adapter.is_connected()
        assert adapter.gateway_status() == {"gateway": "shards", "shards": [1], "shard_count": 2}
    finally:
        await adapter.close()
        await storage.close()
    assert not await adapter.is_connected()
