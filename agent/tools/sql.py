"""`sql_query`: read-only SQL on one configured SQLite database.

Read-only is enforced three times, because each layer alone has holes: the file is opened with `mode=ro`
(but ATTACH and VACUUM INTO open other files), `PRAGMA query_only` refuses writes to open databases, and an
authorizer allows only reading actions, so ATTACH, VACUUM, writable pragmas, DDL and DML fail when the
statement is prepared, before anything runs. A progress handler stops queries that run too long, so a
cartesian join cannot hold a worker thread forever.

A result longer than the rows shown to the model is also posted with the reply as a CSV file (the reply's
`post_file`, bounded by its byte limit): the model summarises, the person gets every row.
"""

from __future__ import annotations

import csv
import io
import itertools
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from urllib.parse import quote

from agent.attachments.models import Outbox
from agent.tools.context import current_or_none
from agent.tools.registry import ToolError, tool

DEFAULT_MAX_ROWS = 50
DEFAULT_MAX_SECONDS = 2.0
# The progress handler runs every this many VM instructions: often enough to stop within milliseconds.
PROGRESS_STEPS = 10_000
MAX_CELL_CHARS = 200
# Rows past the shown ones are counted up to this many, so the model knows how much it did not see.
COUNT_CAP = 10_000
# Caps on what one query can allocate or send: a 1 GB zeroblob or a megabyte of SQL is refused by SQLite.
MAX_VALUE_BYTES = 1_000_000
MAX_SQL_BYTES = 100_000

# Functions that reach outside the database (files, extensions) or corrupt it; most are absent from
# Python's build, and are refused by name in case a build has them.
DENIED_FUNCTIONS = frozenset(
    {"load_extension", "readfile", "writefile", "edit", "fts3_tokenizer", "lsdir", "sqlar_uncompress", "zipfile"}
)
# Pragmas that only describe the schema; everything else (and every pragma with a value) is refused.
READ_PRAGMAS = frozenset(
    {"table_info", "table_xinfo", "table_list", "index_list", "index_info", "index_xinfo", "foreign_key_list"}
)
_ALLOWED_ACTIONS = frozenset({sqlite3.SQLITE_SELECT, sqlite3.SQLITE_READ, sqlite3.SQLITE_RECURSIVE})


def sql_tool(
    database: Path, max_rows: int = DEFAULT_MAX_ROWS, *, max_seconds: float = DEFAULT_MAX_SECONDS
) -> Callable[[str], str]:
    """`sql_query` on `database`, read-only, at most `max_rows` rows shown and `max_seconds` of work."""
    uri = f"file:{quote(str(Path(database).absolute()))}?mode=ro"

    def sql_query(query: str) -> str:
        """Run one read-only SQL SELECT on the configured SQLite database (tables are listed in sqlite_master)."""
        if not query.strip():
            raise ToolError("the query is empty")
        conn = _connect(uri)
        try:
            return _run(conn, query, max_rows, max_seconds)
        finally:
            conn.close()

    def read_only(query: str) -> None:
        """Refuse a query that is not one read-only statement before anyone is asked to approve it: EXPLAIN
        prepares the statement (the authorizer refuses writes then) and lists its program without running it."""
        sql_query("EXPLAIN " + query if query.strip() else "")

    tool(name="sql_query", approval="approve", returns="a header line, then one row per line", check=read_only)(
        sql_query
    )
    return sql_query


def _connect(uri: str) -> sqlite3.Connection:
    try:
        conn = sqlite3.connect(uri, uri=True, isolation_level=None)
        # mode=ro opens lazily: touch the schema now so a missing or broken file fails here.
        conn.execute("PRAGMA query_only = ON")
        conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
    except sqlite3.Error:
        raise ToolError("the database is not available") from None
    conn.setlimit(sqlite3.SQLITE_LIMIT_ATTACHED, 0)
    conn.setlimit(sqlite3.SQLITE_LIMIT_LENGTH, MAX_VALUE_BYTES)
    conn.setlimit(sqlite3.SQLITE_LIMIT_SQL_LENGTH, MAX_SQL_BYTES)
    conn.set_authorizer(_authorize)
    return conn


def _authorize(action: int, arg1: str | None, arg2: str | None, db: str | None, trigger: str | None) -> int:
    """Allow reading, nothing else; SQLite asks this for every action while it prepares a statement."""
    if action in _ALLOWED_ACTIONS:
        return sqlite3.SQLITE_OK
    if action == sqlite3.SQLITE_FUNCTION:
        return sqlite3.SQLITE_DENY if (arg2 or "").lower() in DENIED_FUNCTIONS else sqlite3.SQLITE_OK
    if action == sqlite3.SQLITE_PRAGMA and (arg1 or "").lower() in READ_PRAGMAS:
        return sqlite3.SQLITE_OK
    return sqlite3.SQLITE_DENY


def _run(conn: sqlite3.Connection, query: str, max_rows: int, max_seconds: float) -> str:
    deadline = time.monotonic() + max_seconds
    conn.set_progress_handler(lambda: int(time.monotonic() > deadline), PROGRESS_STEPS)
    try:
        cursor = conn.execute(query)
        rows = cursor.fetchmany(max_rows + 1)
    except sqlite3.ProgrammingError as exc:
        if "one statement" in str(exc):
            raise ToolError("only one SQL statement can be run at a time; send them one by one") from None
        raise ToolError(f"the query cannot be run: {exc}") from None
    except sqlite3.DatabaseError as exc:
        raise ToolError(_explain(exc, max_seconds)) from None
    except OverflowError:
        raise ToolError("a number in the query is too large") from None
    if cursor.description is None:
        return "The statement returned no rows."
    header = " | ".join(str(col[0]) for col in cursor.description)
    lines = [header, *(" | ".join(_cell(value) for value in row) for row in rows[:max_rows])]
    if not rows:
        lines.append("(no rows)")
    elif len(rows) > max_rows:
        context = current_or_none()
        outbox = context.files if context is not None else None
        if outbox is None:
            lines.append(_more_rows(cursor))
        else:
            lines.append(_post_csv(cursor, rows, outbox))
    return "\n".join(lines)


def _post_csv(cursor: sqlite3.Cursor, shown: list[tuple[object, ...]], outbox: Outbox) -> str:
    """Every row (up to COUNT_CAP, and as many as fit the reply's file limit) as a CSV file of the reply; the
    line the model reads says how many rows there are and where they went."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow([str(col[0]) for col in cursor.description])
    written = 0
    total = len(shown)
    for row in shown:
        writer.writerow([_csv_cell(v) for v in row])
        written += 1
    complete = True
    try:
        for row in itertools.islice(cursor, COUNT_CAP - total):
            total += 1
            if complete and out.tell() < outbox.max_bytes:
                writer.writerow([_csv_cell(v) for v in row])
                written += 1
            else:
                complete = False
    except sqlite3.Error:
        complete = False
    data = out.getvalue().encode()
    if len(data) > outbox.max_bytes:  # the last row passed the limit: the file ends before it
        data = data[: data.rfind(b"\n", 0, outbox.max_bytes) + 1]
        written = data.count(b"\n") - 1
        complete = False
    shown_rows = len(shown) - 1
    name = outbox.post_file("query-result.csv", data)
    at_least = "at least " if total >= COUNT_CAP else ""
    if name is None:
        return f"({at_least}{total - shown_rows:,} more rows not shown; too large to post as a file)"
    posted = f"all {total:,} rows" if complete else f"the first {written:,} of {at_least}{total:,} rows"
    more = f"{at_least}{total - shown_rows:,} more rows not shown here"
    return f"({more}; {posted} are posted with your answer as {name})"


def _csv_cell(value: object) -> object:
    if value is None:
        return ""
    if isinstance(value, bytes):
        return f"<blob {len(value)} bytes>"
    return value


def _more_rows(cursor: sqlite3.Cursor) -> str:
    """How many rows were left out, counted up to a cap and within the same deadline."""
    more = 1
    try:
        for _ in itertools.islice(cursor, COUNT_CAP):
            more += 1
    except sqlite3.Error:
        return f"(at least {more:,} more rows not shown; add LIMIT or filters)"
    at_least = "at least " if more > COUNT_CAP else ""
    return f"({at_least}{more:,} more rows not shown)"


def _explain(exc: sqlite3.DatabaseError, max_seconds: float) -> str:
    message = str(exc)
    if message == "interrupted":
        return f"the query ran longer than {max_seconds:g} s and was stopped; make it simpler or add LIMIT"
    if "not authorized" in message or "authorization denied" in message or "readonly" in message:
        return f"{message}: only read-only SELECT queries are allowed"
    if "too many attached" in message:
        return "attaching databases is not allowed: only read-only SELECT queries are allowed"
    return message


def _cell(value: object) -> str:
    if value is None:
        return "NULL"
    if isinstance(value, bytes):
        return f"<blob {len(value)} bytes>"
    text = str(value).replace("\n", "\\n").replace("|", "\\|")
    return text if len(text) <= MAX_CELL_CHARS else text[: MAX_CELL_CHARS - 3] + "..."
