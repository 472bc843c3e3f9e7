"""Built-in file, SQL and web tools: each guarantee is attacked, through the real runner where it matters.

Every call through the runner must leave exactly one execution row with the runner's outcome, so the
harness checks that on every call. Escapes are judged by what matters: a canary file outside the shared
folder never shows up, the database file's bytes never change, a refused host never sees a request, and
a provider key never appears in an observation, an execution row or a log line.
"""

from __future__ import annotations

import hashlib
import logging
import os
import socket
import sqlite3
import string
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pytest
import stamina
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.storage import Storage
from agent.storage.base import Executions
from agent.tools.files import file_tools
from agent.tools.registry import ToolError, ToolRegistry, spec_of
from agent.tools.runner import ToolResult, ToolRunner
from agent.tools.sql import sql_tool
from agent.tools.web import HostRules, html_to_text, http_get_tool, weather_tool, web_search_tool
from tests.fakes.http_server import FakeHTTPServer, huge, json_body, raw, redirect, slow, status, text

CANARY = "CANARY-3f9a1c-do-not-leak"
KEY = "sk-test-SECRET-provider-key-0451"


# ---------------------------------------------------------------- harness


@dataclass
class Harness:
    """A real runner writing to a real execution log; `run` checks the row each call leaves."""

    runner: ToolRunner
    log: Executions

    async def run(self, name: str, **args: Any) -> ToolResult:
        before = len(await self.log.recent(10_000))
        result = await self.runner.run(name, args)
        rows = await self.log.recent(10_000)
        assert len(rows) == before + 1, "every call leaves exactly one execution row"
        last = rows[-1]
        assert (last.tool, last.outcome, last.args) == (name, result.outcome, args)
        return result


@dataclass
class HarnessFactory:
    storage: Storage
    made: list[ToolRunner] = field(default_factory=list)

    def __call__(self, *tools: Callable[..., Any], timeout_s: float | None = None, **runner: Any) -> Harness:
        """A harness for `tools`, each allowed without approval (approvals are tested elsewhere)."""
        specs = []
        for fn in tools:
            spec = replace(spec_of(fn), approval="allow")
            specs.append(replace(spec, timeout_s=timeout_s) if timeout_s is not None else spec)
        made = ToolRunner(ToolRegistry.of(*specs), executions=self.storage.executions, **runner)
        self.made.append(made)
        return Harness(made, self.storage.executions)


@pytest.fixture
async def harness(storage: Storage) -> AsyncIterator[HarnessFactory]:
    factory = HarnessFactory(storage)
    yield factory
    for made in factory.made:
        made.close()


def test_default_policies_and_contract_names(tmp_path: Path) -> None:
    read_file, list_dir = file_tools(tmp_path)
    specs = {
        s.name: s
        for s in map(
            spec_of,
            [
                read_file,
                list_dir,
                sql_tool(tmp_path / "x.db"),
                http_get_tool([]),
                web_search_tool("https://search.invalid", KEY),
                weather_tool("https://weather.invalid", KEY),
            ],
        )
    }
    assert {name: s.approval for name, s in specs.items()} == {
        "read_file": "approve",
        "list_dir": "allow",
        "sql_query": "approve",
        "http_get": "approve",
        "web_search": "allow",
        "weather": "allow",
    }
    assert {name: s.required for name, s in specs.items()} == {
        "read_file": ["path"],
        "list_dir": [],
        "sql_query": ["query"],
        "http_get": ["url"],
        "web_search": ["query"],
        "weather": ["location"],
    }
    assert all(s.description and "\n" not in s.description for s in specs.values())


async def test_read_file_needs_approval_by_default(tmp_path: Path, storage: Storage) -> None:
    read_file, _ = file_tools(tmp_path)
    runner = ToolRunner(ToolRegistry.of(read_file), executions=storage.executions)
    try:
        result = await runner.run("read_file", {"path": "x"})
    finally:
        runner.close()
    assert result.outcome == "denied"


# ---------------------------------------------------------------- files


@dataclass(frozen=True)
class Tree:
    root: Path
    outside: Path
    contents: dict[str, str]


@pytest.fixture
def tree(tmp_path: Path) -> Tree:
    """A shared folder with a canary next to it and symlinks that point out of it."""
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_text(CANARY)
    (outside / "inner.txt").write_text(CANARY)
    root = tmp_path / "root"
    (root / "sub").mkdir(parents=True)
    (root / "hello.txt").write_text("hello, world\n")
    (root / "sub" / "inner.txt").write_text("inner text\n")
    (root / "link_out").symlink_to(outside / "secret.txt")
    (root / "rel_link_out").symlink_to(Path("..") / "outside" / "secret.txt")
    (root / "dir_out").symlink_to(outside, target_is_directory=True)
    (root / "link_in").symlink_to("hello.txt")
    return Tree(root, outside, {"hello.txt": "hello, world\n", "sub/inner.txt": "inner text\n"})


def assert_clean(observation: str, tree: Tree) -> None:
    assert CANARY not in observation
    assert str(tree.root) not in observation and str(tree.root.parent) not in observation


async def test_read_and_list_inside_the_root(tree: Tree, harness: HarnessFactory) -> None:
    h = harness(*file_tools(tree.root))
    assert (await h.run("read_file", path="hello.txt")).observation == "hello, world\n"
    assert (await h.run("read_file", path="sub/inner.txt")).observation == "inner text\n"
    assert (await h.run("read_file", path="./sub//inner.txt")).observation == "inner text\n"
    assert (await h.run("read_file", path="link_in")).observation == "hello, world\n"
    assert (await h.run("read_file", path=str(tree.root / "hello.txt"))).observation == "hello, world\n"

    listing = await h.run("list_dir", path=".")
    assert listing.ok
    lines = listing.observation.splitlines()
    assert [line.split()[0] for line in lines] == sorted(line.split()[0] for line in lines)
    assert "sub/" in lines
    assert "hello.txt  (13 bytes)" in lines
    assert "link_in  [symlink to hello.txt]" in lines
    assert "dir_out  [symlink leading outside the shared folder; not followed]" in lines
    assert "link_out  [symlink leading outside the shared folder; not followed]" in lines
    assert_clean(listing.observation, tree)
    assert (await h.run("list_dir")).observation == listing.observation
    assert (await h.run("list_dir", path="")).observation == listing.observation
    assert (await h.run("list_dir", path="sub")).observation == "inner.txt  (11 bytes)"


@pytest.mark.parametrize(
    ("path", "reason"),
    [
        ("../outside/secret.txt", "'..' is not allowed"),
        ("/etc/passwd", "outside the shared folder"),
        ("sub/../../outside/secret.txt", "'..' is not allowed"),
        ("sub/../hello.txt", "'..' is not allowed"),
        ("link_out", "leads outside the shared folder"),
        ("rel_link_out", "leads outside the shared folder"),
        ("dir_out/secret.txt", "leads outside the shared folder"),
        ("hello.txt\x00.png", "NUL byte"),
        ("missing.txt", "does not exist"),
        ("sub", "is a directory; use list_dir"),
        (".", "is a directory; use list_dir"),
        ("hello.txt/x", "not a directory"),
    ],
)
async def test_read_file_refuses_escapes(tree: Tree, harness: HarnessFactory, path: str, reason: str) -> None:
    h = harness(*file_tools(tree.root))
    result = await h.run("read_file", path=path)
    assert result.outcome == "error"
    assert reason in result.observation
    assert_clean(result.observation, tree)


async def test_read_file_refuses_an_absolute_path_outside(tree: Tree, harness: HarnessFactory) -> None:
    h = harness(*file_tools(tree.root))
    result = await h.run("read_file", path=str(tree.outside / "secret.txt"))
    assert result.outcome == "error" and "outside the shared folder" in result.observation
    assert CANARY not in result.observation


@pytest.mark.parametrize(
    ("path", "reason"),
    [
        ("..", "'..' is not allowed"),
        ("dir_out", "leads outside the shared folder"),
        ("/tmp", "outside the shared folder"),
        ("hello.txt", "is a file, not a directory"),
        ("a\x00", "NUL byte"),
    ],
)
async def test_list_dir_refuses_escapes(tree: Tree, harness: HarnessFactory, path: str, reason: str) -> None:
    h = harness(*file_tools(tree.root))
    result = await h.run("list_dir", path=path)
    assert result.outcome == "error" and reason in result.observation
    assert "secret.txt" not in result.observation
    assert_clean(result.observation, tree)


async def test_fifo_is_refused_without_blocking(tree: Tree, harness: HarnessFactory) -> None:
    os.mkfifo(tree.root / "pipe")
    # No writer ever opens the FIFO: a blocking open would hang until the runner's timeout.
    h = harness(*file_tools(tree.root), timeout_s=5)
    result = await h.run("read_file", path="pipe")
    assert result.outcome == "error" and "not a regular file" in result.observation
    assert "pipe  [special file]" in (await h.run("list_dir", path=".")).observation


async def test_big_file_is_capped_and_binary_refused(tree: Tree, harness: HarnessFactory) -> None:
    (tree.root / "big.txt").write_text("a" * 50_000)
    (tree.root / "image.png").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(256)))
    # "é" is two bytes: a cap in the middle of one must not leave half a character.
    (tree.root / "accents.txt").write_text("é" * 100)
    read_file, _ = file_tools(tree.root, max_bytes=1001)
    h = harness(read_file)
    big = await h.run("read_file", path="big.txt")
    assert big.ok and big.observation == "a" * 1001 + "\n[truncated at 1001 bytes]"
    binary = await h.run("read_file", path="image.png")
    assert binary.outcome == "error" and "binary" in binary.observation
    assert read_file("accents.txt") == "é" * 100
    (tree.root / "accents.txt").write_text("é" * 1000)
    assert read_file("accents.txt") == "é" * 500 + "\n[truncated at 1001 bytes]"
    (tree.root / "latin1.txt").write_bytes(b"caf\xe9")
    assert read_file("latin1.txt") == "caf\ufffd"


async def test_list_dir_caps_entries(tree: Tree, harness: HarnessFactory) -> None:
    many = tree.root / "many"
    many.mkdir()
    for i in range(250):
        (many / f"f{i:03}.txt").write_text("x")
    h = harness(*file_tools(tree.root), max_output_chars=100_000)
    lines = (await h.run("list_dir", path="many")).observation.splitlines()
    assert len(lines) == 201
    assert lines[0] == "f000.txt  (1 bytes)" and lines[199].startswith("f199.txt")
    assert lines[200] == "(50 more entries not shown)"


def test_a_directory_swapped_for_a_symlink_after_the_check_is_not_followed(
    tree: Tree, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The check sees a real directory; by the time of the open it is a symlink out: O_NOFOLLOW refuses it."""
    read_file, list_dir = file_tools(tree.root)
    (tree.root / "sub" / "inner.txt").unlink()
    (tree.root / "sub").rmdir()
    (tree.root / "sub").symlink_to(tree.outside, target_is_directory=True)
    # Resolution as it was before the swap: the path still looks like a plain directory inside.
    monkeypatch.setattr(os.path, "realpath", os.path.abspath)
    with pytest.raises(ToolError, match="symlink") as refused:
        read_file("sub/inner.txt")
    assert CANARY not in str(refused.value)
    with pytest.raises(ToolError, match="symlink"):
        list_dir("sub")


def test_a_file_swapped_for_a_symlink_after_the_check_is_not_followed(
    tree: Tree, monkeypatch: pytest.MonkeyPatch
) -> None:
    read_file, _ = file_tools(tree.root)
    (tree.root / "hello.txt").unlink()
    (tree.root / "hello.txt").symlink_to(tree.outside / "secret.txt")
    monkeypatch.setattr(os.path, "realpath", os.path.abspath)
    with pytest.raises(ToolError, match="symlink"):
        read_file("hello.txt")


PATH_PIECES = ["..", ".", "", "/", "sub", "hello.txt", "inner.txt", "link_out", "link_in", "rel_link_out"]
PATH_PIECES += ["dir_out", "outside", "secret.txt", "root", "\x00", "é", "~", "//", "\\", " ", "..."]


def path_strategy(tree: Tree) -> st.SearchStrategy[str]:
    pieces = [*PATH_PIECES, str(tree.root), str(tree.outside), str(tree.root.parent)]
    joined = st.lists(st.sampled_from(pieces), max_size=8).map("/".join)
    return st.one_of(st.text(max_size=40), joined, st.text(alphabet="./\x00ab", max_size=12))


@given(data=st.data())
@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_property_no_path_reads_outside_the_root(tree: Tree, data: st.DataObject) -> None:
    read_file, list_dir = file_tools(tree.root)
    path = data.draw(path_strategy(tree))
    try:
        content = read_file(path)
    except ToolError as refused:
        assert CANARY not in str(refused)
        assert str(tree.root.parent) not in str(refused) or str(tree.root.parent) in path
    else:
        assert content in tree.contents.values()
    try:
        listing = list_dir(path)
    except ToolError:
        pass
    else:
        assert "secret.txt" not in listing and CANARY not in listing


# ---------------------------------------------------------------- sql


@pytest.fixture
def database(tmp_path: Path) -> Path:
    folder = tmp_path / "sql"
    folder.mkdir()
    path = folder / "shop.db"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT, price REAL)")
    conn.execute("CREATE INDEX items_by_name ON items (name)")
    conn.executemany("INSERT INTO items VALUES (?, ?, ?)", [(i, f"item {i}", i * 1.5) for i in range(1, 121)])
    conn.commit()
    conn.close()
    return path


def fingerprint(database: Path) -> tuple[str, list[str]]:
    """The database's bytes and the folder's file names: a write or a new file changes one of them."""
    return hashlib.sha256(database.read_bytes()).hexdigest(), sorted(os.listdir(database.parent))


async def test_select_answers_and_caps_rows(database: Path, harness: HarnessFactory) -> None:
    h = harness(sql_tool(database, max_rows=50), max_output_chars=100_000)
    before = fingerprint(database)
    result = await h.run("sql_query", query="SELECT id, name FROM items ORDER BY id")
    lines = result.observation.splitlines()
    assert result.ok and lines[0] == "id | name" and lines[1] == "1 | item 1" and lines[50] == "50 | item 50"
    assert lines[51:] == ["(70 more rows not shown)"]
    count = await h.run("sql_query", query="SELECT count(*) AS n, max(price) AS top FROM items;")
    assert count.observation == "n | top\n120 | 180.0"
    empty = await h.run("sql_query", query="SELECT * FROM items WHERE id < 0")
    assert empty.observation == "id | name | price\n(no rows)"
    shapes = await h.run("sql_query", query="SELECT x'00ff' AS b, NULL AS n, 'a|b' AS p")
    assert shapes.observation == "b | n | p\n<blob 2 bytes> | NULL | a\\|b"
    schema = await h.run("sql_query", query="SELECT name FROM sqlite_master WHERE type = 'table'")
    assert schema.observation == "name\nitems"
    info = await h.run("sql_query", query="PRAGMA table_info(items)")
    assert info.ok and "price" in info.observation
    assert fingerprint(database) == before


WRITES = [
    "INSERT INTO items VALUES (999, 'x', 1)",
    "REPLACE INTO items VALUES (1, 'x', 1)",
    "UPDATE items SET name = 'x'",
    "DELETE FROM items",
    "CREATE TABLE t2 (a)",
    "CREATE TEMP TABLE t2 (a)",
    "CREATE VIEW v AS SELECT 1",
    "CREATE INDEX i2 ON items (price)",
    "DROP TABLE items",
    "DROP INDEX items_by_name",
    "ALTER TABLE items ADD COLUMN c",
    "ATTACH '{folder}/other.db' AS other",
    "PRAGMA journal_mode=WAL",
    "PRAGMA journal_mode=DELETE",
    "PRAGMA user_version=5",
    "PRAGMA query_only=OFF",
    "PRAGMA writable_schema=ON",
    "VACUUM INTO '{folder}/copy.db'",
    "VACUUM",
    "REINDEX",
    "ANALYZE",
    "BEGIN IMMEDIATE",
    "SAVEPOINT s",
    "SELECT load_extension('{folder}/evil')",
    "WITH x AS (SELECT 1) INSERT INTO items SELECT 1000, 'y', 2 FROM x",
    "WITH x AS (SELECT 1) DELETE FROM items",
    "WITH x AS (SELECT 1) UPDATE items SET price = 0",
]


@pytest.mark.parametrize("statement", WRITES)
async def test_writes_are_refused_and_leave_the_file_unchanged(
    database: Path, harness: HarnessFactory, statement: str
) -> None:
    h = harness(sql_tool(database))
    before = fingerprint(database)
    result = await h.run("sql_query", query=statement.format(folder=database.parent))
    assert result.outcome == "error", result.observation
    assert "only read-only SELECT queries are allowed" in result.observation
    assert fingerprint(database) == before


async def test_multiple_statements_long_queries_and_big_values(database: Path, harness: HarnessFactory) -> None:
    h = harness(sql_tool(database, max_seconds=0.3), timeout_s=10)
    before = fingerprint(database)
    two = await h.run("sql_query", query="SELECT 1; DELETE FROM items")
    assert two.outcome == "error" and "only one SQL statement" in two.observation
    counting = "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 1000000000) "
    long = await h.run("sql_query", query=counting + "SELECT count(*) FROM c")
    assert long.outcome == "error" and "ran longer than 0.3 s and was stopped" in long.observation
    assert long.duration_ms < 3000
    join = await h.run("sql_query", query="SELECT count(*) FROM items a, items b, items c, items d, items e")
    assert join.outcome == "error" and "was stopped" in join.observation
    blob = await h.run("sql_query", query="SELECT length(zeroblob(100000000))")
    assert blob.outcome == "error" and "too big" in blob.observation
    missing = await h.run("sql_query", query="SELECT * FROM nowhere")
    assert missing.outcome == "error" and "no such table: nowhere" in missing.observation
    assert fingerprint(database) == before
    # The handler's deadline is per call: the next query runs normally.
    assert (await h.run("sql_query", query="SELECT 42 AS answer")).observation == "answer\n42"


async def test_missing_database_is_an_error_and_is_not_created(tmp_path: Path, harness: HarnessFactory) -> None:
    target = tmp_path / "sql" / "nothing here.db"
    h = harness(sql_tool(target))
    result = await h.run("sql_query", query="SELECT 1")
    assert result.outcome == "error" and "database is not available" in result.observation
    assert str(tmp_path) not in result.observation
    assert not target.exists()


identifiers = st.sampled_from(["items", "t", "sqlite_master", "main.items", "temp.t", '"items"', "[items]"])
values = st.one_of(st.integers(-5, 5).map(str), st.text(string.ascii_letters, max_size=5).map(lambda s: f"'{s}'"))
write_statements = st.one_of(
    st.builds("INSERT INTO {} VALUES ({}, {}, {})".format, identifiers, values, values, values),
    st.builds("INSERT OR REPLACE INTO {} (id) VALUES ({})".format, identifiers, values),
    st.builds("UPDATE {} SET name = {} WHERE id = {}".format, identifiers, values, values),
    st.builds("DELETE FROM {} WHERE id > {}".format, identifiers, values),
    st.builds("DROP TABLE IF EXISTS {}".format, st.sampled_from(["items", "main.items", '"items"', "[items]"])),
    st.builds("CREATE TABLE IF NOT EXISTS {}_{} (a)".format, identifiers, st.integers(0, 9)),
    st.builds("PRAGMA {} = {}".format, st.sampled_from(["user_version", "journal_mode", "query_only"]), values),
)
prefixes = st.sampled_from(["", "WITH x AS (SELECT 1) ", "  ", "/* c */ ", "with recursive r(n) as (select 1) "])


@given(statement=write_statements, prefix=prefixes)
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_property_generated_writes_never_change_the_file(database: Path, statement: str, prefix: str) -> None:
    before = fingerprint(database)
    with pytest.raises(ToolError):
        sql_tool(database)(prefix + statement)
    assert fingerprint(database) == before


# ---------------------------------------------------------------- web


@pytest.fixture(autouse=True)
def fast_retries() -> Iterator[None]:
    """Three attempts, no backoff sleeps: the retry logic runs, the test does not wait."""
    with stamina.set_testing(True, attempts=3, cap=True):
        yield


@pytest.fixture
async def server() -> AsyncIterator[FakeHTTPServer]:
    async with FakeHTTPServer() as running:
        yield running


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def local_get(server: FakeHTTPServer, **options: Any) -> Callable[[str], Awaitable[str]]:
    return http_get_tool([server.netloc], allow_http=True, **options)


async def test_http_get_allowed_host(server: FakeHTTPServer, harness: HarnessFactory) -> None:
    server.on("/hello", text("hello there"))
    server.on("/data", json_body({"a": 1}))
    server.on("/gone", status(404, "no such page"))
    h = harness(local_get(server))
    assert (await h.run("http_get", url=f"{server.url}/hello")).observation == "HTTP 200 text/plain\n\nhello there"
    assert (await h.run("http_get", url=f"{server.url}/data#frag")).observation == (
        'HTTP 200 application/json\n\n{"a": 1}'
    )
    gone = await h.run("http_get", url=f"{server.url}/gone")
    assert gone.ok and gone.observation.startswith("HTTP 404") and server.hits("/gone") == 1
    assert server.requests[0].headers.get("User-Agent", "").startswith("Parley")


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("http://localhost:{port}/x", "localhost is not on the list of allowed hosts"),
        ("http://127.0.0.2:{port}/x", "127.0.0.2 is not on the list"),
        ("http://127.0.0.1:{other}/x", "port"),
        ("http://user:pw@127.0.0.1:{port}/x", "user name or password"),
        ("http://@127.0.0.1:{port}/x", "user name or password"),
        ("ftp://127.0.0.1:{port}/x", "only https and http URLs"),
        ("file:///etc/passwd", "absolute"),
        ("/x", "absolute"),
        ("http://127.0.0.1:99999/x", "not a valid URL"),
        ("http://127.0.0.1\\@evil.com/", "not a valid URL"),
    ],
)
async def test_http_get_refuses_before_any_request(
    server: FakeHTTPServer, harness: HarnessFactory, url: str, reason: str
) -> None:
    h = harness(local_get(server))
    result = await h.run("http_get", url=url.format(port=server.port, other=free_port()))
    assert result.outcome == "error" and reason in result.observation, result.observation
    assert server.hits() == 0


async def test_http_get_https_only_by_default(server: FakeHTTPServer, harness: HarnessFactory) -> None:
    server.on("/x", text("never"))
    h = harness(http_get_tool([server.netloc]))
    result = await h.run("http_get", url=f"{server.url}/x")
    assert result.outcome == "error" and "only https URLs are allowed" in result.observation
    assert server.hits() == 0


async def test_http_get_redirects_are_checked_at_every_hop(server: FakeHTTPServer, harness: HarnessFactory) -> None:
    server.on("/hop", redirect("/final"))
    server.on("/final", text("arrived"))
    server.on("/out", redirect(f"http://localhost:{server.port}/target"))
    server.on("/sneaky", redirect(f"http://user:pw@{server.netloc}/target"))
    server.on("/target", text("should never be fetched"))
    server.on("/loop", redirect("/loop"))
    h = harness(local_get(server))
    assert (await h.run("http_get", url=f"{server.url}/hop")).observation.endswith("arrived")
    out = await h.run("http_get", url=f"{server.url}/out")
    assert out.outcome == "error" and "localhost is not on the list" in out.observation
    sneaky = await h.run("http_get", url=f"{server.url}/sneaky")
    assert sneaky.outcome == "error" and "user name or password" in sneaky.observation
    assert server.hits("/target") == 0
    loop = await h.run("http_get", url=f"{server.url}/loop")
    assert loop.outcome == "error" and "redirected more than 3 times" in loop.observation
    assert server.hits("/loop") == 4


async def test_http_get_caps_the_body(server: FakeHTTPServer, harness: HarnessFactory) -> None:
    server.on("/huge", huge(20_000_000))
    get = local_get(server, max_bytes=10_000)
    h = harness(get, max_output_chars=100_000)
    result = await h.run("http_get", url=f"{server.url}/huge")
    assert result.ok
    head, body = result.observation.split("\n\n", 1)
    assert head == "HTTP 200 text/plain"
    assert body == "x" * 10_000 + "\n[truncated at 10000 bytes]"


async def test_http_get_timeouts(server: FakeHTTPServer, harness: HarnessFactory) -> None:
    server.on("/slow", slow(5))
    by_runner = harness(local_get(server), timeout_s=0.3)
    assert (await by_runner.run("http_get", url=f"{server.url}/slow")).outcome == "timeout"
    own = harness(local_get(server, timeout_s=0.3))
    result = await own.run("http_get", url=f"{server.url}/slow")
    assert result.outcome == "error" and "did not answer within 0.3 s" in result.observation


async def test_http_get_retries_transient_failures(server: FakeHTTPServer, harness: HarnessFactory) -> None:
    server.on("/flaky", status(503), status(502), text("third time lucky"))
    server.on("/limited", status(429, headers={"Retry-After": "0"}), text("ok now"))
    server.on("/down", status(503))
    h = harness(local_get(server))
    assert (await h.run("http_get", url=f"{server.url}/flaky")).observation.endswith("third time lucky")
    assert server.hits("/flaky") == 3
    assert (await h.run("http_get", url=f"{server.url}/limited")).observation.endswith("ok now")
    assert server.hits("/limited") == 2
    down = await h.run("http_get", url=f"{server.url}/down")
    assert down.outcome == "error" and "could not be reached after 3 attempts (HTTP 503)" in down.observation
    assert server.hits("/down") == 3
    closed = free_port()
    refused = harness(http_get_tool([f"127.0.0.1:{closed}"], allow_http=True))
    result = await refused.run("http_get", url=f"http://127.0.0.1:{closed}/")
    assert result.outcome == "error" and "could not be reached after 3 attempts" in result.observation


async def test_http_get_reduces_html_and_refuses_binary(server: FakeHTTPServer, harness: HarnessFactory) -> None:
    page = (
        "<html><head><title>The  Title</title><style>.x { color: red }</style>"
        "<script>alert('x')</script></head><body><h1>Hello</h1><p>Fish &amp; chips<br>today</p>"
        "<noscript>enable js</noscript></body></html>"
    )
    server.on("/page", text(page, "text/html"))
    server.on("/image", raw(b"\x89PNG\r\n\x1a\n" + bytes(100), "image/png"))
    h = harness(local_get(server))
    result = await h.run("http_get", url=f"{server.url}/page")
    assert result.observation == "HTTP 200 text/html\n\nThe Title\n\nHello\nFish & chips\ntoday"
    image = await h.run("http_get", url=f"{server.url}/image")
    assert image.outcome == "error" and "image/png, which is not text" in image.observation


async def test_http_get_ignores_proxy_variables(
    server: FakeHTTPServer, harness: HarnessFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy", "ALL_PROXY"):
        monkeypatch.setenv(name, dead)
    server.on("/x", text("direct"))
    h = harness(local_get(server))
    assert (await h.run("http_get", url=f"{server.url}/x")).observation.endswith("direct")


def test_host_rules() -> None:
    rules = HostRules(["*.example.com", "docs.python.org", "10.0.0.5", "[::1]:8443", "Bücher.de"])
    for url in [
        "https://a.example.com/",
        "https://a.b.example.com/x?y=1",
        "https://A.EXAMPLE.COM./",
        "https://docs.python.org:443/3/",
        "https://10.0.0.5/",
        "https://[::1]:8443/",
        "https://[::1]/",
        "https://bücher.de/",
        "https://xn--bcher-kva.de/",
    ]:
        rules.check(url)
    for url, reason in [
        ("https://example.com/", "not on the list"),
        ("https://evilexample.com/", "not on the list"),
        ("https://example.com.evil.org/", "not on the list"),
        ("https://docs.python.org.evil.org/", "not on the list"),
        ("https://docs.python.org:8443/", "port 8443"),
        ("https://10.0.0.6/", "not on the list"),
        ("https://2130706433/", "not on the list"),
        ("https://0x7f.example.com.0x1/", "not on the list"),
        ("https://1.2.3.4.example.com.5/", "not on the list"),
        ("http://docs.python.org/", "only https"),
        ("https://u@docs.python.org/", "user name"),
    ]:
        with pytest.raises(ToolError, match=reason):
            rules.check(url)
    ported = HostRules(["example.org:8443"])
    ported.check("https://example.org/")
    ported.check("https://example.org:8443/")
    with pytest.raises(ToolError, match=r"port 8080 of example\.org is not allowed"):
        ported.check("https://example.org:8080/")
    with pytest.raises(ValueError, match="wildcards apply to names"):
        HostRules(["*.10.0.0.5"])
    with pytest.raises(ValueError, match="must be a host"):
        HostRules(["example.com/path"])


def test_html_to_text_keeps_only_readable_text() -> None:
    assert html_to_text("<b>bold</b> and <i>it</i>") == "bold and it"
    assert html_to_text("<svg><text>no</text></svg><p>yes</p>") == "yes"
    assert html_to_text("plain &lt;tag&gt;") == "plain <tag>"


# ---------------------------------------------------------------- providers


def assert_no_key(*texts: str) -> None:
    for text_ in texts:
        assert KEY not in text_


async def provider_logs(h: Harness) -> str:
    rows = await h.log.recent(10_000)
    return "\n".join(f"{r.args} {r.observation}" for r in rows)


def logged(caplog: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture[str]) -> str:
    """Everything logged: stdlib records and what structlog (stamina's retry log) printed."""
    out, err = capfd.readouterr()
    return "\n".join([caplog.text, out, err])


BRAVE = {
    "web": {
        "results": [
            {"title": "Parley <strong>docs</strong>", "url": "https://parley.dev/", "description": "The <b>bot</b>."},
            {"title": "Second", "url": "https://example.com/2", "description": ""},
        ]
    }
}


async def test_web_search_parses_results_and_sends_the_key(
    server: FakeHTTPServer, harness: HarnessFactory, caplog: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture[str]
) -> None:
    caplog.set_level(logging.DEBUG)
    server.on("/res/v1/web/search", json_body(BRAVE))
    h = harness(web_search_tool(f"{server.url}/res/v1/", KEY))
    result = await h.run("web_search", query="parley bot")
    assert result.observation == (
        "1. Parley docs\n   https://parley.dev/\n   The bot.\n2. Second\n   https://example.com/2"
    )
    sent = server.requests[-1]
    assert sent.headers["X-Subscription-Token"] == KEY and sent.headers["Accept"] == "application/json"
    assert sent.query == {"q": "parley bot", "count": "5"}
    server.on("/res/v1/web/search", json_body({"web": {"results": []}}))
    assert (await h.run("web_search", query="nothing")).observation == "No results."
    server.on("/res/v1/web/search", json_body({"type": "search"}))
    assert (await h.run("web_search", query="no web section")).observation == "No results."
    assert_no_key(logged(caplog, capfd), await provider_logs(h))


@pytest.mark.parametrize(
    ("responder", "reason"),
    [
        (status(401, f"bad key {KEY}"), "the search provider refused the API key"),
        (status(403), "the search provider refused the API key"),
        (status(503), "the search provider could not be reached after 3 attempts (HTTP 503)"),
        (text("<html>oops</html>", "text/html"), "not JSON"),
        (redirect("http://localhost:1/steal"), "redirected to another site"),
    ],
)
async def test_web_search_failures_never_show_the_key(
    server: FakeHTTPServer,
    harness: HarnessFactory,
    caplog: pytest.LogCaptureFixture,
    capfd: pytest.CaptureFixture[str],
    responder: Callable[..., Any],
    reason: str,
) -> None:
    caplog.set_level(logging.DEBUG)
    server.on("/web/search", responder)
    h = harness(web_search_tool(server.url, KEY))
    result = await h.run("web_search", query="anything")
    assert result.outcome == "error" and reason in result.observation
    assert_no_key(result.observation, logged(caplog, capfd), await provider_logs(h))


WEATHER = {
    "name": "Paris",
    "sys": {"country": "FR"},
    "weather": [{"main": "Rain", "description": "light rain"}],
    "main": {"temp": 14.2, "feels_like": 13.1, "humidity": 81},
    "wind": {"speed": 4.1},
}


async def test_weather_answers_and_sends_the_key(
    server: FakeHTTPServer, harness: HarnessFactory, caplog: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture[str]
) -> None:
    caplog.set_level(logging.DEBUG)
    server.on("/data/2.5/weather", json_body(WEATHER))
    h = harness(weather_tool(f"{server.url}/data/2.5", KEY))
    result = await h.run("weather", location="Paris")
    assert result.observation == "Paris, FR: light rain, 14.2 °C (feels like 13.1 °C), humidity 81%, wind 4.1 m/s"
    assert server.requests[-1].query == {"q": "Paris", "appid": KEY, "units": "metric"}
    assert_no_key(logged(caplog, capfd), await provider_logs(h))


@pytest.mark.parametrize(
    ("responder", "reason"),
    [
        (json_body({"cod": "404", "message": "city not found"}, status=404), "unknown location 'Atlantis'"),
        (status(401, f"Invalid API key {KEY}"), "the weather provider refused the API key"),
        (status(500), "the weather provider could not be reached after 3 attempts (HTTP 500)"),
        (slow(5), "the weather provider did not answer within 0.3 s"),
        (huge(2_000_000, "application/json"), "too large"),
        (redirect("/weather?again=1"), "redirected more than 3 times"),
    ],
)
async def test_weather_failures_never_show_the_key(
    server: FakeHTTPServer,
    harness: HarnessFactory,
    caplog: pytest.LogCaptureFixture,
    capfd: pytest.CaptureFixture[str],
    responder: Callable[..., Any],
    reason: str,
) -> None:
    caplog.set_level(logging.DEBUG)
    server.on("/weather", responder)
    h = harness(weather_tool(server.url, KEY, timeout_s=0.3))
    result = await h.run("weather", location="Atlantis")
    assert result.outcome == "error" and reason in result.observation, result.observation
    assert_no_key(result.observation, logged(caplog, capfd), await provider_logs(h))


async def test_unconfigured_providers_say_so() -> None:
    for tool_fn, arg in ((web_search_tool("", ""), "q"), (weather_tool("", ""), "Paris")):
        with pytest.raises(ToolError, match="is not configured"):
            await tool_fn(arg)


async def test_weather_provider_down_hides_the_url(
    harness: HarnessFactory, caplog: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture[str]
) -> None:
    caplog.set_level(logging.DEBUG)
    h = harness(weather_tool(f"http://127.0.0.1:{free_port()}", KEY))
    result = await h.run("weather", location="Paris")
    assert result.outcome == "error" and "could not be reached after 3 attempts" in result.observation
    assert "appid" not in result.observation
    assert_no_key(result.observation, logged(caplog, capfd), await provider_logs(h))
