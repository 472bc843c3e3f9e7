"""MCP call overhead benchmark (not a test).

One tool call through Parley's runner (argument validation, approval gate, timeout, output cap, an execution
record written to SQLite), for a built-in tool and for the same kind of trivial tool on an MCP server written
with the `mcp` SDK: over stdio (a child process) and over streamable HTTP on 127.0.0.1. The SDK's own call
without the runner is timed too, so the table separates what the protocol costs from what Parley adds.
Prints median and p95 per call and the overhead over the built-in call. Run with `make bench`.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from agent.mcp import McpServers, McpServerSpec
from agent.storage import open_storage
from agent.tools import BUILTIN_TOOLS, ToolRegistry, ToolRunner
from tests.fakes.mcp_servers import NOTES_ENV, REPO, McpHttpServer, stdio_command


def spec(
    name: str,
    *,
    command: str | None = None,
    args: tuple[str, ...] = (),
    env: dict[str, str] | None = None,
    cwd: str | None = None,
    url: str | None = None,
) -> McpServerSpec:
    return McpServerSpec(
        name=name,
        command=command,
        args=args,
        env=env or {},
        cwd=cwd,
        url=url,
        headers={},
        include=(),
        exclude=(),
        approval=None,
        timeout_s=10.0,
        connect_timeout_s=30.0,
        required=False,
    )


async def timed(call: Callable[[], Awaitable[object]], calls: int) -> list[float]:
    for _ in range(20):  # warm-up
        await call()
    samples = []
    for _ in range(calls):
        started = time.perf_counter()
        await call()
        samples.append((time.perf_counter() - started) * 1000)
    return samples


async def bench(calls: int, workdir: Path) -> list[tuple[str, list[float]]]:
    notes = workdir / "notes.txt"
    command, args = stdio_command()
    storage = await open_storage(path=workdir / "bench.db")
    registry = ToolRegistry.of(*BUILTIN_TOOLS)
    runner = ToolRunner(registry, storage.executions)
    with McpHttpServer(notes) as http:
        specs = [
            spec("notes", command=command, args=tuple(args), env={NOTES_ENV: str(notes)}, cwd=str(REPO)),
            spec("docs", url=http.url),
        ]
        async with McpServers(specs, registry) as servers:
            paths: dict[str, Callable[[], Awaitable[object]]] = {
                "built-in calculator, runner": lambda: runner.run("calculator", {"expression": "12*7"}),
                "MCP stdio, runner": lambda: runner.run("notes__search", {"query": "q"}),
                "MCP stdio, SDK call only": lambda: servers.connections["notes"].call("search", {"query": "q"}),
                "MCP HTTP, runner": lambda: runner.run("docs__search", {"query": "q"}),
                "MCP HTTP, SDK call only": lambda: servers.connections["docs"].call("search", {"query": "q"}),
            }
            samples: dict[str, list[float]] = {name: [] for name in paths}
            # Interleave rounds so drift (CPU frequency, the other processes on the machine) hits every path.
            for _ in range(5):
                for name, call in paths.items():
                    samples[name] += await timed(call, calls // 5)
    runner.close()
    await storage.close()
    return list(samples.items())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--calls", type=int, default=500, help="calls per path")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        rows = asyncio.run(bench(args.calls, Path(tmp)))
    builtin = statistics.median(rows[0][1])
    print(f"{'path':<28} {'median ms':>10} {'p95 ms':>8} {'over built-in ms':>17}")
    for name, ms in rows:
        median = statistics.median(ms)
        p95 = statistics.quantiles(ms, n=20)[-1]
        print(f"{name:<28} {median:>10.2f} {p95:>8.2f} {median - builtin:>17.2f}")
    print("per call, through one connection held open; the runner rows include the execution record")


if __name__ == "__main__":
    main()
