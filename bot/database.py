"""The database the settings name, opened for a block: the one way every command and the service open it.

Kept apart from the composition root (`bot/app.py`), which imports the agent and DSPy: `parley db ...` needs
only this.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from agent.storage import Storage, open_storage
from bot.config import Settings


@asynccontextmanager
async def open_db(settings: Settings, *, migrate: bool = True) -> AsyncIterator[Storage]:
    """The storage the settings name (PostgreSQL at `[db] url`, else the SQLite file), closed on the way out."""
    db = settings.db
    storage = await open_storage(
        url=db.url_value,
        path=db.path,
        busy_timeout_ms=db.busy_timeout_ms,
        max_turns=settings.memory.max_turns,
        pool_size=db.pool_size,
        migrate=migrate,
    )
    try:
        yield storage
    finally:
        await storage.close()
