"""Memory: FTS sync, history bound, prune rule, export/import, channel isolation, query safety."""

from __future__ import annotations

import sqlite3
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.memory import Memory, match_expression, query_terms, scope_token
from agent.messages import Conversation
from agent.store import Store


async def keys_for(memory: Memory, channel: str, query: str) -> list[str]:
    return [f.key for f in await memory.relevant_facts(channel, query, 10)]


async def fts_integrity(store: Store) -> None:
    """FTS5 raises if the index disagrees with the content table."""
    await store.write(lambda db: db.execute("INSERT INTO facts_fts (facts_fts, rank) VALUES ('integrity-check', 1)"))


async def test_fts_index_follows_insert_update_and_delete(memory: Memory, store: Store) -> None:
    await memory.add_fact("team", "standup", "daily at 9:30 in the blue room")
    assert await keys_for(memory, "team", "when is standup?") == ["standup"]
    assert await keys_for(memory, "team", "blue room") == ["standup"]

    await memory.add_fact("team", "standup", "daily at 10:00 in the green room")
    assert await keys_for(memory, "team", "blue") == []
    assert await keys_for(memory, "team", "green") == ["standup"]
    await fts_integrity(store)

    await memory.forget("team")
    assert await keys_for(memory, "team", "green standup") == []
    await fts_integrity(store)


async def test_bm25_ranks_the_better_match_first(memory: Memory) -> None:
    await memory.add_fact("team", "lunch", "pizza on fridays")
    await memory.add_fact("team", "deploy", "deploy freeze on fridays after the deploy review")
    await memory.add_fact("team", "wifi", "password is hunter2")
    assert (await keys_for(memory, "team", "deploy fridays"))[0] == "deploy"
    assert await keys_for(memory, "team", "wifi password") == ["wifi"]


async def test_upsert_updates_value_confidence_and_access_count(memory: Memory) -> None:
    await memory.add_fact("team", "standup", "9:30", confidence=0.5)
    await memory.add_fact("team", "standup", "10:00", confidence=0.9)
    [fact] = await memory.facts("team")
    assert (fact.value, fact.confidence, fact.access_count) == ("10:00", 0.9, 1)


async def test_get_fact_touches_last_access(memory: Memory, store: Store) -> None:
    await memory.add_fact("team", "standup", "9:30")
    await store.write(lambda db: db.execute("UPDATE facts SET last_access = 0"))
    fact = await memory.get_fact("team", "standup")
    assert fact is not None and fact.last_access > time.time() - 60 and fact.access_count == 1
    assert await memory.get_fact("team", "missing") is None


async def test_history_is_bounded_per_channel(store: Store) -> None:
    memory = Memory(store, max_turns=5)
    conv, other = Conversation("team"), Conversation("ops")
    for i in range(8):
        await memory.add_turn(conv, "user", f"message {i}")
    await memory.add_turn(other, "user", "ops message")
    assert [t.text for t in await memory.channel_turns("team")] == [f"message {i}" for i in range(3, 8)]
    assert [t.text for t in await memory.recent_turns(conv, 2)] == ["message 6", "message 7"]
    assert [t.text for t in await memory.channel_turns("ops")] == ["ops message"]


async def test_threads_have_their_own_recent_turns(memory: Memory) -> None:
    await memory.add_turn(Conversation("team"), "user", "top level")
    await memory.add_turn(Conversation("team", "t1"), "user", "in thread")
    assert [t.text for t in await memory.recent_turns(Conversation("team", "t1"))] == ["in thread"]
    assert len(await memory.channel_turns("team")) == 2


async def test_prune_keeps_recent_and_frequently_accessed_facts(memory: Memory, store: Store) -> None:
    for key in ("old", "old-popular", "fresh"):
        await memory.add_fact("team", key, f"value of {key}")
    old = time.time() - 40 * 86400

    def age(db: sqlite3.Connection) -> None:
        db.execute("UPDATE facts SET last_access = ? WHERE key LIKE 'old%'", (old,))
        db.execute("UPDATE facts SET access_count = 11 WHERE key = 'old-popular'")

    await store.write(age)
    assert await memory.prune_old_facts(30) == 1
    assert sorted(f.key for f in await memory.facts("team")) == ["fresh", "old-popular"]
    assert await keys_for(memory, "team", "old") == ["old-popular"]


async def test_two_channels_never_see_each_other(memory: Memory) -> None:
    await memory.add_fact("team", "secret", "team launch code")
    await memory.add_fact("ops", "secret", "ops launch code")
    await memory.add_turn(Conversation("team"), "user", "team only")
    assert [f.value for f in await memory.relevant_facts("team", "launch code secret")] == ["team launch code"]
    assert [f.value for f in await memory.relevant_facts("ops", "launch code secret")] == ["ops launch code"]
    assert await memory.recent_turns(Conversation("ops")) == []
    context = await memory.context_text(Conversation("ops"), "launch code")
    assert "team" not in context


async def test_export_import_round_trip(memory: Memory) -> None:
    conv = Conversation("team")
    await memory.add_fact("team", "standup", "9:30")
    await memory.add_fact("team", "retro", "fridays")
    await memory.add_turn(conv, "user", "hello", user_id="u1")
    await memory.add_turn(Conversation("team", "t9"), "assistant", "hi in thread")
    await memory.set_working(conv, "topic", "planning")
    exported = await memory.export_channel("team")

    await memory.import_channel(exported, "copy")
    copied = await memory.export_channel("copy")
    assert copied["facts"] == exported["facts"]
    assert copied["turns"] == exported["turns"]
    assert copied["working_memory"] == exported["working_memory"]
    assert await keys_for(memory, "copy", "standup") == ["standup"]
    with pytest.raises(ValueError, match="version"):
        await memory.import_channel({"version": 99, "channel": "x"})


async def test_working_memory_is_per_conversation(memory: Memory) -> None:
    await memory.set_working(Conversation("team"), "topic", "a")
    await memory.set_working(Conversation("team"), "topic", "b")
    await memory.set_working(Conversation("team", "t"), "topic", "thread")
    assert await memory.working(Conversation("team")) == {"topic": "b"}
    assert await memory.working(Conversation("team", "t")) == {"topic": "thread"}


def test_query_terms_drop_common_words_and_quote_user_text() -> None:
    assert query_terms("When IS the standup?") == ["standup"]
    assert query_terms("what is the") == []
    expression = match_expression("team", 'say "hi" AND NEAR(x) OR * snake_case')
    assert expression is not None
    scope = scope_token("team")
    assert expression == " OR ".join(f'"{scope}{w}"' for w in ("say", "hi", "near", "snake", "case"))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(query=st.text(max_size=80))
async def test_any_user_text_is_a_safe_query(memory: Memory, query: str) -> None:
    await memory.add_fact("team", "standup", "9:30")
    found = await memory.relevant_facts("team", query)
    assert all(f.key == "standup" for f in found)
