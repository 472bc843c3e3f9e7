"""Memory through the storage seam: FTS sync, history bound, prune rule, export/import, channel isolation and
query safety."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.memory import context_text
from agent.messages import Conversation
from agent.storage import Storage, open_storage
from agent.storage.sqlite.database import Database
from agent.storage.sqlite.memory import match_expression
from agent.storage.terms import query_terms, scope_token


async def keys_for(storage: Storage, channel: str, query: str) -> list[str]:
    return [f.key for f in await storage.facts.relevant(channel, query, 10)]


async def fts_integrity(db: Database) -> None:
    """FTS5 raises if the index disagrees with the content table."""
    await db.write(lambda conn: conn.execute("INSERT INTO facts_fts (facts_fts, rank) VALUES ('integrity-check', 1)"))


async def test_fts_index_follows_insert_update_and_delete(storage: Storage, db: Database) -> None:
    await storage.facts.add("team", "standup", "daily at 9:30 in the blue room")
    assert await keys_for(storage, "team", "when is standup?") == ["standup"]
    assert await keys_for(storage, "team", "blue room") == ["standup"]

    await storage.facts.add("team", "standup", "daily at 10:00 in the green room")
    assert await keys_for(storage, "team", "blue") == []
    assert await keys_for(storage, "team", "green") == ["standup"]
    await fts_integrity(db)

    await storage.forget("team")
    assert await keys_for(storage, "team", "green standup") == []
    await fts_integrity(db)


async def test_bm25_ranks_the_better_match_first(storage: Storage) -> None:
    await storage.facts.add("team", "lunch", "pizza on fridays")
    await storage.facts.add("team", "deploy", "deploy freeze on fridays after the deploy review")
    await storage.facts.add("team", "wifi", "password is hunter2")
    assert (await keys_for(storage, "team", "deploy fridays"))[0] == "deploy"
    assert await keys_for(storage, "team", "wifi password") == ["wifi"]


async def test_upsert_updates_value_confidence_and_access_count(storage: Storage) -> None:
    await storage.facts.add("team", "standup", "9:30", confidence=0.5)
    await storage.facts.add("team", "standup", "10:00", confidence=0.9)
    [fact] = await storage.facts.of_channel("team")
    assert (fact.value, fact.confidence, fact.access_count) == ("10:00", 0.9, 1)


async def test_get_fact_touches_last_access(storage: Storage, db: Database) -> None:
    await storage.facts.add("team", "standup", "9:30")
    await db.write(lambda conn: conn.execute("UPDATE facts SET last_access = 0"))
    fact = await storage.facts.get("team", "standup")
    assert fact is not None and fact.last_access > time.time() - 60 and fact.access_count == 1
    assert await storage.facts.get("team", "missing") is None


async def test_history_is_bounded_per_channel(tmp_path: Path) -> None:
    storage = await open_storage(path=tmp_path / "bounded.db", max_turns=5)
    try:
        conv, other = Conversation("team"), Conversation("ops")
        for i in range(8):
            await storage.turns.add(conv, "user", f"message {i}")
        await storage.turns.add(other, "user", "ops message")
        assert [t.text for t in await storage.turns.of_channel("team")] == [f"message {i}" for i in range(3, 8)]
        assert [t.text for t in await storage.turns.recent(conv, 2)] == ["message 6", "message 7"]
        assert [t.text for t in await storage.turns.of_channel("ops")] == ["ops message"]
    finally:
        await storage.close()


async def test_threads_have_their_own_recent_turns(storage: Storage) -> None:
    await storage.turns.add(Conversation("team"), "user", "top level")
    await storage.turns.add(Conversation("team", "t1"), "user", "in thread")
    assert [t.text for t in await storage.turns.recent(Conversation("team", "t1"))] == ["in thread"]
    assert len(await storage.turns.of_channel("team")) == 2


async def test_prune_keeps_recent_and_frequently_accessed_facts(storage: Storage, db: Database) -> None:
    for key in ("old", "old-popular", "fresh"):
        await storage.facts.add("team", key, f"value of {key}")
    old = time.time() - 40 * 86400

    def age(conn: sqlite3.Connection) -> None:
        conn.execute("UPDATE facts SET last_access = ? WHERE key LIKE 'old%'", (old,))
        conn.execute("UPDATE facts SET access_count = 11 WHERE key = 'old-popular'")

    await db.write(age)
    assert await storage.facts.prune(30, now=time.time()) == 1
    assert sorted(f.key for f in await storage.facts.of_channel("team")) == ["fresh", "old-popular"]
    assert await keys_for(storage, "team", "old") == ["old-popular"]


async def test_two_channels_never_see_each_other(storage: Storage) -> None:
    await storage.facts.add("team", "secret", "team launch code")
    await storage.facts.add("ops", "secret", "ops launch code")
    await storage.turns.add(Conversation("team"), "user", "team only")
    assert [f.value for f in await storage.facts.relevant("team", "launch code secret")] == ["team launch code"]
    assert [f.value for f in await storage.facts.relevant("ops", "launch code secret")] == ["ops launch code"]
    assert await storage.turns.recent(Conversation("ops")) == []
    context = await context_text(storage, Conversation("ops"), "launch code")
    assert "team" not in context


async def test_export_import_round_trip(storage: Storage) -> None:
    conv = Conversation("team")
    await storage.facts.add("team", "standup", "9:30")
    await storage.facts.add("team", "retro", "fridays")
    await storage.turns.add(conv, "user", "hello", user_id="u1")
    await storage.turns.add(Conversation("team", "t9"), "assistant", "hi in thread")
    await storage.notes.set(conv, "topic", "planning")
    exported = await storage.export_channel("team")

    await storage.import_channel(exported, "copy")
    copied = await storage.export_channel("copy")
    assert copied["facts"] == exported["facts"]
    assert copied["turns"] == exported["turns"]
    assert copied["working_memory"] == exported["working_memory"]
    assert await keys_for(storage, "copy", "standup") == ["standup"]
    with pytest.raises(ValueError, match="version"):
        await storage.import_channel({"version": 99, "channel": "x"})


async def test_working_memory_is_per_conversation(storage: Storage) -> None:
    await storage.notes.set(Conversation("team"), "topic", "a")
    await storage.notes.set(Conversation("team"), "topic", "b")
    await storage.notes.set(Conversation("team", "t"), "topic", "thread")
    assert await storage.notes.of(Conversation("team")) == {"topic": "b"}
    assert await storage.notes.of(Conversation("team", "t")) == {"topic": "thread"}


def test_query_terms_drop_common_words_and_quote_user_text() -> None:
    assert query_terms("When IS the standup?") == ["standup"]
    assert query_terms("what is the") == []
    assert match_expression("team", query_terms("what is the")) is None
    expression = match_expression("team", query_terms('say "hi" AND NEAR(x) OR * snake_case'))
    assert expression is not None
    scope = scope_token("team")
    assert expression == " OR ".join(f'"{scope}{w}"' for w in ("say", "hi", "near", "snake", "case"))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(query=st.text(max_size=80))
async def test_any_user_text_is_a_safe_query(storage: Storage, query: str) -> None:
    await storage.facts.add("team", "standup", "9:30")
    found = await storage.facts.relevant("team", query)
    assert all(f.key == "standup" for f in found)
