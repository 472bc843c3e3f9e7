"""The SQLite database under the storage seam: connections, pragmas, migrations and transactions.

Writes go through one plain `sqlite3` connection owned by one dedicated thread: `await store.write(work)` runs
`work(conn)` there inside a `BEGIN IMMEDIATE` transaction, so a write costs one hop between the event loop and
the thread however many statements it has (through aiosqlite each statement is a hop: a message's writes took
some 28). Writes queued while the thread is busy share one transaction (group commit), each in a savepoint,
so a burst costs one commit and one failing write does not undo the others. Reads go through an aiosqlite
connection; WAL lets them run while the writer writes.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections import deque
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, TypeVar

import aiosqlite

from agent.storage.errors import StoreError, TransientStoreError
from agent.storage.rows import count
from agent.storage.sqlite.migrations import LATEST_VERSION, MIGRATIONS

Params = Iterable[Any] | dict[str, Any]
T = TypeVar("T")


class Database:
    """Owns the connections to one SQLite file. Open with `await Database.open(path)`, close on shutdown.

    Only the SQLite repositories use it; an `sqlite3` error leaves it as a `StoreError` (`TransientStoreError`
    for a lock, a busy file or an I/O failure), so nothing above the seam sees `sqlite3`."""

    def __init__(
        self, path: Path, writer: sqlite3.Connection, writer_thread: ThreadPoolExecutor, reader: aiosqlite.Connection
    ) -> None:
        self.path = path
        self._writer = writer
        self._writer_thread = writer_thread
        self._reader = reader
        self._queue: deque[_Write[Any]] = deque()
        self._queue_lock = threading.Lock()
        self._draining = False
        self._closed = False

    @classmethod
    async def open(
        cls, path: Path | str, *, busy_timeout_ms: int = 5000, migrate_to: int | None = LATEST_VERSION
    ) -> Database:
        """Open (creating if needed) and migrate. `migrate_to=None` leaves the schema as it is."""
        path = Path(path)
        if str(path) != ":memory:":
            path.parent.mkdir(parents=True, exist_ok=True)
        thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="parley-db-writer")
        loop = asyncio.get_running_loop()
        writer: sqlite3.Connection | None = None
        reader: aiosqlite.Connection | None = None
        try:
            writer = await loop.run_in_executor(thread, _open_writer, path, busy_timeout_ms, migrate_to)
            reader = await aiosqlite.connect(path, isolation_level=None)
            reader.row_factory = sqlite3.Row
            for pragma in (f"busy_timeout = {int(busy_timeout_ms)}", "query_only = ON"):
                await reader.execute(f"PRAGMA {pragma}")
        except (sqlite3.DatabaseError, StoreError) as exc:
            if reader is not None:
                await reader.close()
            if writer is not None:
                await loop.run_in_executor(thread, writer.close)
            thread.shutdown()
            raise _explain(path, exc) from None
        return cls(path, writer, thread, reader)

    async def close(self) -> None:
        """Close both connections and the writer thread; aiosqlite threads are not daemons, so a forgotten
        close hangs exit. Closing twice is harmless."""
        if self._closed:
            return
        self._closed = True
        await asyncio.get_running_loop().run_in_executor(self._writer_thread, self._writer.close)
        self._writer_thread.shutdown()
        await self._reader.close()

    async def write(self, work: Callable[[sqlite3.Connection], T]) -> T:
        """Run `work(conn)` atomically on the writer thread; returns once it is committed, or raises what it
        raised after rolling it back.

        Writes run one at a time in the order they were queued. A caller cancelled while waiting may still
        see its write commit: it is all or nothing either way.
        """
        if self._closed:
            raise StoreError(f"database {self.path} is closed")
        loop = asyncio.get_running_loop()
        write: _Write[T] = _Write(work, loop.create_future())
        with self._queue_lock:
            self._queue.append(write)
            start = not self._draining
            self._draining = True
        if start:
            self._writer_thread.submit(self._drain, loop)
        try:
            return await write.done
        except sqlite3.Error as exc:
            raise translate(exc) from exc

    def _drain(self, loop: asyncio.AbstractEventLoop) -> None:
        """On the writer thread: commit everything queued, a batch per transaction, until the queue is empty.

        Whatever happens (the loop closed, a failure inside a failure), the flag is reset on the way out, so the
        next write starts a new drain instead of waiting forever.
        """
        try:
            while True:
                with self._queue_lock:
                    batch = list(self._queue)
                    self._queue.clear()
                    if not batch:
                        return
                outcomes = _commit_batch(self._writer, batch)
                loop.call_soon_threadsafe(_settle, outcomes)
        finally:
            with self._queue_lock:
                self._draining = False
                stranded = list(self._queue)
                self._queue.clear()
            if stranded and not loop.is_closed():
                failure = StoreError("the database writer stopped")
                failed: list[Outcome] = [(w, None, failure) for w in stranded]
                loop.call_soon_threadsafe(_settle, failed)

    async def fetchall(self, sql: str, params: Params = ()) -> list[sqlite3.Row]:
        """Run the query and read its rows in one step on the reader thread. A statement left open across an await
        would hold its read snapshot, and another read starting meanwhile would share it: it could miss a write
        that returned before that read began."""
        try:
            return list(await self._reader.execute_fetchall(sql, params))
        except sqlite3.Error as exc:
            raise translate(exc) from exc

    async def fetchone(self, sql: str, params: Params = ()) -> sqlite3.Row | None:
        """The first row of a query that returns one (see `fetchall`)."""
        rows = await self.fetchall(sql, params)
        return rows[0] if rows else None

    async def version(self) -> int:
        row = await self.fetchone("PRAGMA user_version")
        return int(row[0]) if row else 0


@dataclass
class _Write(Generic[T]):
    work: Callable[[sqlite3.Connection], T]
    done: asyncio.Future[T]


Outcome = tuple[_Write[Any], Any, BaseException | None]


def _commit_batch(conn: sqlite3.Connection, batch: list[_Write[Any]]) -> list[Outcome]:
    """One transaction for the batch, one savepoint per write: a write that raises is undone alone."""
    outcomes: list[Outcome] = []
    try:
        conn.execute("BEGIN IMMEDIATE")
        for write in batch:
            conn.execute("SAVEPOINT write")
            try:
                outcomes.append((write, write.work(conn), None))
            except BaseException as exc:
                if not conn.in_transaction:  # SQLite rolled the whole transaction back (disk full, I/O error)
                    raise
                conn.execute("ROLLBACK TO write")
                outcomes.append((write, None, exc))
            conn.execute("RELEASE write")
        conn.execute("COMMIT")
    except BaseException as exc:  # nothing of the batch landed: every writer gets the real cause
        try:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
        except sqlite3.Error:
            pass
        return [(write, None, exc) for write in batch]
    return outcomes


def _settle(outcomes: list[Outcome]) -> None:
    """On the event loop: hand each writer its result; a writer that stopped waiting is skipped."""
    for write, result, error in outcomes:
        if write.done.cancelled():
            continue
        if error is None:
            write.done.set_result(result)
        else:
            write.done.set_exception(error)


def _open_writer(path: Path, busy_timeout_ms: int, migrate_to: int | None) -> sqlite3.Connection:
    """Runs on the writer thread: connect, set the pragmas, check the schema version and migrate."""
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    try:
        conn.row_factory = sqlite3.Row
        for pragma in (f"busy_timeout = {int(busy_timeout_ms)}", "synchronous = NORMAL", "foreign_keys = ON"):
            conn.execute(f"PRAGMA {pragma}")
        conn.execute("PRAGMA journal_mode = WAL")
        store_version = user_version(conn)
        if store_version > LATEST_VERSION:
            raise StoreError(
                f"database {path} has schema version {store_version}, newer than this code "
                f"({LATEST_VERSION}); upgrade Parley or use another PARLEY_DB__PATH"
            )
        if migrate_to is not None:
            apply_migrations(conn, migrate_to)
    except BaseException:
        conn.close()
        raise
    return conn


def user_version(conn: sqlite3.Connection) -> int:
    row = conn.execute("PRAGMA user_version").fetchone()
    return int(row[0]) if row else 0


def apply_migrations(conn: sqlite3.Connection, target: int = LATEST_VERSION) -> None:
    """Apply the steps from the current version up to `target`, each in its own transaction."""
    current = user_version(conn)
    for version in range(current, min(target, LATEST_VERSION)):
        script = f"BEGIN IMMEDIATE;\n{MIGRATIONS[version]}\nPRAGMA user_version = {version + 1};\nCOMMIT;"
        try:
            conn.executescript(script)
        except sqlite3.Error:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise


TRANSIENT = ("locked", "busy", "disk i/o")


def marks(columns: str | tuple[str, ...]) -> str:
    """The `?` placeholders for a list of columns."""
    return ", ".join("?" * count(columns))


def translate(exc: sqlite3.Error) -> StoreError:
    """An `sqlite3` error as the seam's: a lock, a busy file or an I/O failure may pass on a retry."""
    text = str(exc)
    if any(word in text.lower() for word in TRANSIENT):
        return TransientStoreError(f"SQLite: {text}")
    return StoreError(f"SQLite: {text}")


def _explain(path: Path, exc: Exception) -> StoreError:
    """Turn a low-level SQLite error at start-up into one clear sentence."""
    if isinstance(exc, StoreError):
        return exc
    text = str(exc)
    if "locked" in text or "busy" in text:
        return StoreError(f"database {path} is locked by another process ({text})")
    if "not a database" in text or "malformed" in text:
        return StoreError(f"database {path} is not a valid SQLite database; it may be corrupted ({text})")
    if "unable to open" in text:
        return StoreError(f"database {path} cannot be opened; check the path and permissions ({text})")
    return StoreError(f"database {path} cannot be used: {text}")
