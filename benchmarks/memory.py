"""Memory benchmark (not a test): fact retrieval over 1,000,000 facts in 1,000 channels, and the writes of a
message, on either engine of the storage seam (`--engine sqlite|postgres`).

Compares `storage.facts.relevant` (SQLite: FTS5 + BM25 with the channel inside the MATCH; PostgreSQL: a weighted
tsvector of channel-folded terms under one GIN index) with a linear keyword scan of the same facts (the reference
design's algorithm), then times the per-message writes through the repositories. Run with `make bench`;
prints a table. The facts are loaded once (a SQLite file in data/bench/, a schema of the PostgreSQL server) and
reused; loading reaches past the repositories (executemany on SQLite, COPY on PostgreSQL), since a million
upserts through `facts.add` would take the better part of an hour.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import random
import sqlite3
import statistics
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

from agent.messages import Conversation, IncomingMessage, Reply, Step
from agent.storage import Storage, open_storage
from agent.storage.models import ChainRecord
from agent.storage.postgres.storage import PostgresStorage
from agent.storage.sqlite.storage import SqliteStorage
from agent.storage.terms import channel_terms, query_terms
from benchmarks.engines import ENGINES, postgres_server, prepare_schema, server_version

CHANNELS = 1000
VOCABULARY = 20000
SEED = 7
BATCH = 50_000
FACT_COLUMNS = ("channel", "key", "value", "created_at", "updated_at", "last_access", "key_terms", "value_terms")
WRITES = 2000


def vocabulary() -> list[str]:
    rng = random.Random(SEED)
    letters = "abcdefghijklmnopqrstuvwxyz"
    out: set[str] = set()
    while len(out) < VOCABULARY:
        out.add("".join(rng.choice(letters) for _ in range(rng.randint(4, 9))))
    return sorted(out)


def generate(facts: int) -> Iterator[list[tuple[str, str, str]]]:
    """(channel, key, value) in batches; words follow a Zipf-like law: word 0 is in most facts, the tail in few."""
    vocab = vocabulary()
    cumulative = list(itertools.accumulate(1.0 / (rank + 1) for rank in range(len(vocab))))
    rng = random.Random(SEED)
    for start in range(0, facts, BATCH):
        batch = []
        for i in range(start, min(start + BATCH, facts)):
            text = rng.choices(vocab, cum_weights=cumulative, k=8)
            batch.append((f"channel-{i % CHANNELS}", f"fact {i} {text[0]}", " ".join(text[1:])))
        yield batch


# ---- loading -----------------------------------------------------------------------------------------------


def load_sqlite(path: Path, facts: int) -> None:
    """Straight into the file with executemany (the FTS triggers index each row), then one FTS optimize."""
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA synchronous = OFF")
    now = time.time()
    loaded = 0
    for batch in generate(facts):
        conn.executemany(
            f"INSERT INTO facts ({', '.join(FACT_COLUMNS)}) VALUES ({', '.join('?' * len(FACT_COLUMNS))})",
            [(c, k, v, now, now, now, channel_terms(c, k), channel_terms(c, v)) for c, k, v in batch],
        )
        conn.commit()
        loaded += len(batch)
        print(f"  loaded {loaded:,} facts", flush=True)
    conn.execute("INSERT INTO facts_fts (facts_fts) VALUES ('optimize')")
    conn.commit()
    conn.close()


async def load_postgres(storage: PostgresStorage, facts: int) -> None:
    """COPY in batches with the fact index dropped, then the index built once from its own definition (ten
    times faster than keeping a GIN index up to date row by row), then ANALYZE for the planner."""
    async with storage.db.transaction() as conn:
        raw: Any = conn  # an asyncpg connection: COPY is not part of the engine's narrow Conn protocol
        index = await raw.fetchval("SELECT pg_get_indexdef('facts_search'::regclass)")
        await raw.execute("DROP INDEX facts_search")
        now = time.time()
        loaded = 0
        for batch in generate(facts):
            records = [(c, k, v, now, now, now, channel_terms(c, k), channel_terms(c, v)) for c, k, v in batch]
            await raw.copy_records_to_table("facts", records=records, columns=list(FACT_COLUMNS))
            loaded += len(batch)
            print(f"  loaded {loaded:,} facts", flush=True)
        print("  building the fact index", flush=True)
        await raw.execute("SET LOCAL maintenance_work_mem = '512MB'")
        await raw.execute(index)
    await storage.db.execute("VACUUM ANALYZE facts")


async def open_loaded(engine: str, facts: int, db: Path, dsn: str | None) -> tuple[Storage, bool]:
    """The storage holding exactly `facts` benchmark facts, and whether they were loaded now (it held others)."""
    if engine == "sqlite":
        db.parent.mkdir(parents=True, exist_ok=True)
        storage = await open_storage(path=db)
        if await storage.jobs.mark("bench", "facts") != str(facts):
            await storage.close()
            await asyncio.to_thread(db.unlink, missing_ok=True)
            await (await open_storage(path=db)).close()  # the schema, then the rows straight into the file
            await asyncio.to_thread(load_sqlite, db, facts)
            storage = await open_storage(path=db)
            await storage.jobs.set_mark("bench", "facts", str(facts))
            return storage, True
        return storage, False
    assert dsn is not None
    # Named for the fact layout too: a schema loaded under another layout is loaded again.
    schema = f"bench_memory_folded_{facts}"
    storage = await open_storage(url=await prepare_schema(dsn, schema, fresh=False))
    if await storage.jobs.mark("bench", "facts") != str(facts):
        await storage.close()
        storage = await open_storage(url=await prepare_schema(dsn, schema, fresh=True))
        assert isinstance(storage, PostgresStorage)
        await load_postgres(storage, facts)
        await storage.jobs.set_mark("bench", "facts", str(facts))
        return storage, True
    return storage, False


# ---- measuring ---------------------------------------------------------------------------------------------


async def linear_scan(storage: Storage, channel: str, query: str, k: int) -> list[str]:
    """The baseline: read every fact of the channel and count query words in it."""
    terms = set(query_terms(query))
    rows: list[Any]
    if isinstance(storage, SqliteStorage):
        rows = await storage.db.fetchall("SELECT key, value FROM facts WHERE channel = ?", (channel,))
    else:
        assert isinstance(storage, PostgresStorage)
        rows = await storage.db.fetch("SELECT key, value FROM facts WHERE channel = $1", channel)
    scored = []
    for key, value in rows:
        score = sum(1 for w in f"{key} {value}".lower().split() if w in terms)
        if score:
            scored.append((score, key))
    scored.sort(reverse=True)
    return [key for _, key in scored[:k]]


def percentiles(samples: list[float]) -> tuple[float, float]:
    ordered = sorted(samples)
    return statistics.median(ordered), ordered[int(len(ordered) * 0.95) - 1]


async def timed(work: Callable[[int], Awaitable[object]], times: int) -> list[float]:
    samples = []
    for i in range(times):
        started = time.perf_counter()
        await work(i)
        samples.append((time.perf_counter() - started) * 1000)
    return samples


async def searches(storage: Storage, queries: int) -> list[tuple[str, float, float, float, float]]:
    vocab = vocabulary()
    rng = random.Random(SEED + 1)
    rows = []
    for label, pool in {"rare words": vocab[5000:], "common words": vocab[:20]}.items():
        asked = [(f"channel-{rng.randrange(CHANNELS)}", " ".join(rng.sample(pool, 2))) for _ in range(queries)]
        found: list[float] = []
        scan: list[float] = []
        for channel, query in asked:
            started = time.perf_counter()
            await storage.facts.relevant(channel, query, 10)
            found.append((time.perf_counter() - started) * 1000)
            started = time.perf_counter()
            await linear_scan(storage, channel, query, 10)
            scan.append((time.perf_counter() - started) * 1000)
        rows.append((label, *percentiles(found), *percentiles(scan)))
    return rows


async def writes(storage: Storage) -> dict[str, list[float]]:
    """Each write a message costs, through the repositories, in channels of their own (not the loaded facts')."""
    run = f"{time.time():.0f}"
    steps = (
        Step("look it up", "recall_facts", {"query": "standup"}, "standup: 9:30", model_ms=80.0, tool_ms=1.0),
        Step("done", "finish", {}, "", kind="thought"),
    )

    def conv(i: int) -> Conversation:
        return Conversation(f"bench-{run}-{i % 10}")

    async def add_fact(i: int) -> None:
        await storage.facts.add(f"bench-{run}-{i % 10}", f"fact {i}", f"value {i} of the write benchmark")

    async def add_turn(i: int) -> None:
        await storage.turns.add(conv(i), "user", f"message number {i} about things")

    accepted: list[int] = []

    async def accept(i: int) -> None:
        entry = await storage.inbox.accept(
            IncomingMessage(platform="bench", channel=f"c{i % 10}", user="u1", text=f"q{i}", event_id=f"{run}-{i}")
        )
        assert entry is not None
        accepted.append(entry.id)

    async def exchange(i: int) -> None:
        """The chain with its steps, both turns and the inbox row's answer, in one transaction."""
        chain = ChainRecord(f"question {i}", f"answer {i}", "answered", "bench", time.time(), 200.0, steps)
        await storage.record_exchange(conv(i), chain, Reply(f"answer {i}", steps), inbox_id=accepted[i])

    return {
        "facts.add": await timed(add_fact, WRITES),
        "turns.add": await timed(add_turn, WRITES),
        "inbox.accept": await timed(accept, WRITES),
        "record_exchange": await timed(exchange, WRITES),
    }


async def measure(engine: str, facts: int, queries: int, db: Path, dsn: str | None) -> None:
    started = time.perf_counter()
    storage, loaded = await open_loaded(engine, facts, db, dsn)
    ready_s = time.perf_counter() - started
    try:
        found = await searches(storage, queries)
        written = await writes(storage)
    finally:
        await storage.close()
    print(f"({'loaded' if loaded else 'opened'} in {ready_s:.1f} s)")
    print(f"{'case':<16} {'p50':>9} {'p95':>9} {'scan p50':>9} {'scan p95':>9} {'p95 ratio':>10}")
    for label, f50, f95, s50, s95 in found:
        print(f"{label:<16} {f50:>7.2f}ms {f95:>7.2f}ms {s50:>7.2f}ms {s95:>7.2f}ms {s95 / f95:>9.1f}x")
    for label, samples in written.items():
        w50, w95 = percentiles(samples)
        print(f"{label:<16} {w50:>7.2f}ms {w95:>7.2f}ms")
    print("targets: relevant facts p95 <= 5 ms; turns.add p95 <= 2 ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--engine", choices=ENGINES, default="sqlite")
    parser.add_argument("--facts", type=int, default=1_000_000)
    parser.add_argument("--queries", type=int, default=300)
    parser.add_argument("--db", type=Path, default=None, help="SQLite file (default: data/bench/memory-<facts>.db)")
    args = parser.parse_args()
    db = args.db or Path(f"data/bench/memory-{args.facts}.db")
    what = f"{args.facts:,} facts in {CHANNELS:,} channels, {args.queries} queries per case, {WRITES} of each write"
    if args.engine == "sqlite":
        print(f"\nMemory on SQLite {sqlite3.sqlite_version} ({db}): {what}")
        asyncio.run(measure("sqlite", args.facts, args.queries, db, None))
        return
    with postgres_server() as (dsn, where):
        print(f"\nMemory on PostgreSQL {asyncio.run(server_version(dsn))} ({where}): {what}")
        asyncio.run(measure("postgres", args.facts, args.queries, db, dsn))


if __name__ == "__main__":
    main()
