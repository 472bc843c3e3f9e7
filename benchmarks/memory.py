"""Memory benchmark (not a test): fact retrieval over 1,000,000 facts in 1,000 channels, and add_turn.

Compares `relevant_facts` (FTS5 + BM25, channel inside the MATCH) with a linear keyword scan of the same
facts (the reference design's algorithm). Run with `make bench`; prints a table. The database is built once
into data/bench/ and reused.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import random
import sqlite3
import statistics
import time
from pathlib import Path

from agent.memory import Memory, channel_terms, query_terms
from agent.messages import Conversation
from agent.store import Store

CHANNELS = 1000
VOCABULARY = 20000
SEED = 7
BATCH = 50_000


def vocabulary() -> list[str]:
    rng = random.Random(SEED)
    letters = "abcdefghijklmnopqrstuvwxyz"
    out: set[str] = set()
    while len(out) < VOCABULARY:
        out.add("".join(rng.choice(letters) for _ in range(rng.randint(4, 9))))
    return sorted(out)


def build(path: Path, facts: int) -> None:
    """Facts whose words follow a Zipf-like law: word 0 is in most facts, the tail in very few."""
    if path.exists():
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    asyncio.run(_create(path))
    vocab = vocabulary()
    cumulative = list(itertools.accumulate(1.0 / (rank + 1) for rank in range(len(vocab))))
    rng = random.Random(SEED)
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA synchronous = OFF")
    now = time.time()
    for start in range(0, facts, BATCH):
        batch = []
        for i in range(start, min(start + BATCH, facts)):
            channel = f"channel-{i % CHANNELS}"
            text = rng.choices(vocab, cum_weights=cumulative, k=8)
            key, value = f"fact {i} {text[0]}", " ".join(text[1:])
            batch.append(
                (channel, key, value, now, now, now, channel_terms(channel, key), channel_terms(channel, value))
            )
        conn.executemany(
            "INSERT INTO facts (channel, key, value, created_at, updated_at, last_access, key_terms, value_terms) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            batch,
        )
        conn.commit()
        print(f"  built {start + len(batch):,} facts", flush=True)
    conn.execute("INSERT INTO facts_fts (facts_fts) VALUES ('optimize')")
    conn.commit()
    conn.close()


async def _create(path: Path) -> None:
    await (await Store.open(path)).close()


async def linear_scan(store: Store, channel: str, query: str, k: int) -> list[str]:
    """The baseline: read every fact of the channel and count query words in it."""
    terms = set(query_terms(query))
    rows = await store.fetchall("SELECT key, value FROM facts WHERE channel = ?", (channel,))
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


async def measure(path: Path, queries: int) -> None:
    vocab = vocabulary()
    rng = random.Random(SEED + 1)
    store = await Store.open(path)
    memory = Memory(store)
    rows: list[tuple[str, float, float, float, float]] = []
    cases = {"rare words": vocab[5000:], "common words": vocab[:20]}
    for label, pool in cases.items():
        fts, scan = [], []
        for _ in range(queries):
            channel = f"channel-{rng.randrange(CHANNELS)}"
            query = " ".join(rng.sample(pool, 2))
            t = time.perf_counter()
            await memory.relevant_facts(channel, query, 10)
            fts.append((time.perf_counter() - t) * 1000)
            t = time.perf_counter()
            await linear_scan(store, channel, query, 10)
            scan.append((time.perf_counter() - t) * 1000)
        f50, f95 = percentiles(fts)
        s50, s95 = percentiles(scan)
        rows.append((label, f50, f95, s50, s95))

    turns = []
    memory = Memory(store, max_turns=100)
    for i in range(2000):
        t = time.perf_counter()
        await memory.add_turn(Conversation(f"channel-{i % 10}"), "user", f"message number {i} about things")
        turns.append((time.perf_counter() - t) * 1000)
    await store.close()

    print()
    print(f"{'case':<14} {'fts p50':>9} {'fts p95':>9} {'scan p50':>9} {'scan p95':>9} {'p95 ratio':>10}")
    for label, f50, f95, s50, s95 in rows:
        print(f"{label:<14} {f50:>7.2f}ms {f95:>7.2f}ms {s50:>7.2f}ms {s95:>7.2f}ms {s95 / f95:>9.1f}x")
    t50, t95 = percentiles(turns)
    print(f"{'add_turn':<14} {t50:>7.2f}ms {t95:>7.2f}ms   (target p95 <= 2 ms; relevant_facts p95 <= 5 ms)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--facts", type=int, default=1_000_000)
    parser.add_argument("--queries", type=int, default=300)
    parser.add_argument("--db", type=Path, default=Path("data/bench/memory-1m.db"))
    args = parser.parse_args()
    build(args.db, args.facts)
    print(f"{args.facts:,} facts in {CHANNELS:,} channels, {args.queries} queries per case")
    asyncio.run(measure(args.db, args.queries))


if __name__ == "__main__":
    main()
