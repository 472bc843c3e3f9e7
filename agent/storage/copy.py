"""Copy a SQLite database into an empty PostgreSQL one (`parley db copy`): how a team outgrows the embedded file.

Rows travel table by table in `TABLES` order (parents before children, so foreign keys hold at every batch),
in batches read by rowid, and keep their ids: chain ids in turns, inbox ids in delivery keys and the export's
high-water mark in `job_state` all still point at the right rows. The SQLite FTS index is not copied (it is
not a table of `TABLES`); PostgreSQL builds its own from the facts. Only an empty target is accepted, so a
second run cannot interleave two copies, and the copy ends by comparing every table's row count on both
sides: a difference (Parley still writing to the file, say) fails the copy rather than passing unnoticed.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from agent.storage.errors import StoreError, StoreMisconfigured
from agent.storage.models import TABLES, StorageStatus

if TYPE_CHECKING:
    from agent.storage.postgres.storage import PostgresStorage
    from agent.storage.sqlite.storage import SqliteStorage

# Called at the start of each table (0) and after each batch, with the table's rows copied so far.
Progress = Callable[[str, int], None]


async def copy_database(
    source: SqliteStorage,
    target: PostgresStorage,
    *,
    batch: int = 1000,
    progress: Progress | None = None,
) -> dict[str, int]:
    """Copy every row of `source` into the empty `target`; returns the rows copied per table.

    Raises StoreError (one line) when the target is not empty, a schema is not at its engine's latest version,
    a batch fails to load (the target then holds part of the data: empty it and copy again), or the counts
    differ afterwards. Stop Parley first: rows written to the source during the copy fail the check."""
    if batch < 1:
        raise ValueError("batch must be at least 1")
    _check_schema(await source.status())
    _check_schema(await target.status())
    if not await target.is_empty():
        raise StoreMisconfigured(
            f"{target.location} already holds data; copy only into an empty database (a new database or schema)"
        )
    copied = {table: await _copy_table(source, target, table, batch, progress) for table in TABLES}
    await target.finish_load()
    _verify(await source.status(), await target.status(), copied)
    return copied


async def _copy_table(
    source: SqliteStorage, target: PostgresStorage, table: str, batch: int, progress: Progress | None
) -> int:
    """One table in batches by rowid: reading after the last rowid seen costs the same at any depth of the table."""
    copied, after = 0, 0
    if progress is not None:
        progress(table, 0)
    while rows := await source.rows(table, after=after, batch=batch):
        after = int(rows[-1]["_rowid"])
        try:
            await target.load_rows(table, [{k: v for k, v in row.items() if k != "_rowid"} for row in rows])
        except (StoreError, ValueError) as exc:
            # A transient failure stays transient; a row that does not fit (ValueError: a column the target
            # lacks) is a broken database. Either way: where the copy stopped, and what to do about it.
            kind = type(exc) if isinstance(exc, StoreError) else StoreError
            raise kind(
                f"copying {table} stopped after {copied:,} rows: {exc}; {target.location} now holds part of "
                "the data: empty it and copy again"
            ) from exc
        copied += len(rows)
        if progress is not None:
            progress(table, copied)
    return copied


def _check_schema(status: StorageStatus) -> None:
    """Both sides must have the tables and columns of this code's schema, else rows would not fit."""
    if status.schema_version != status.latest_version:
        raise StoreMisconfigured(
            f"{status.location} has schema version {status.schema_version}, this code's {status.engine} schema is "
            f"version {status.latest_version}; run `parley db migrate` on it first"
        )


def _verify(source: StorageStatus, target: StorageStatus, copied: dict[str, int]) -> None:
    """Every table holds as many rows on both sides as were copied; the first table that does not is named."""
    for table in TABLES:
        counts = (source.rows.get(table, 0), copied[table], target.rows.get(table, 0))
        if len(set(counts)) > 1:
            raise StoreError(
                f"table {table} differs after the copy: {counts[0]:,} rows in {source.location}, {counts[1]:,} "
                f"copied, {counts[2]:,} in {target.location}; stop Parley before copying, empty the target and "
                "copy again"
            )
