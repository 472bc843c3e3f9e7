"""The storage seam: every piece of Parley's state goes through `Storage` (see `base.py`), on one of two engines.

`open_storage` picks the engine: SQLite at a file path when no URL is given (the embedded default), PostgreSQL
for a `postgresql://` URL. Only the modules under this package speak SQL or import a database driver.
"""

from __future__ import annotations

from pathlib import Path

from agent.storage.base import Storage
from agent.storage.errors import StoreError, StoreMisconfigured, TransientStoreError

__all__ = ["Storage", "StoreError", "StoreMisconfigured", "TransientStoreError", "mask_url", "open_storage"]

POSTGRES_SCHEMES = ("postgresql", "postgres")


def mask_url(url: str) -> str:
    """The URL with its password replaced by `***`, fit for logs, errors and `parley config`."""
    from yarl import URL

    try:
        parsed = URL(url)
    except ValueError:
        return "<unparseable database URL>"
    return str(parsed.with_password("***")) if parsed.password else str(parsed)


async def open_storage(
    *,
    url: str | None = None,
    path: Path | str = "parley.db",
    busy_timeout_ms: int = 5000,
    max_turns: int = 100,
    pool_size: int = 10,
    migrate: bool = True,
) -> Storage:
    """Open (and by default migrate) the database: PostgreSQL at `url`, else SQLite at `path`.

    Raises StoreError with one line saying what is wrong (a wrong URL, a refused password, an unreachable
    server, a corrupted or newer file); `TransientStoreError` when the server could not be reached."""
    if url:
        scheme = url.split("://", 1)[0].lower() if "://" in url else ""
        if scheme not in POSTGRES_SCHEMES:
            raise StoreMisconfigured(f"database URL {mask_url(url)} is not a postgresql:// URL")
        from agent.storage.postgres.storage import PostgresStorage

        return await PostgresStorage.open(url, max_turns=max_turns, pool_size=pool_size, migrate=migrate)
    from agent.storage.sqlite.storage import SqliteStorage

    return await SqliteStorage.open(path, busy_timeout_ms=busy_timeout_ms, max_turns=max_turns, migrate=migrate)
