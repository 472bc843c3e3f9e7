"""Building the tool registry and runner from settings: built-ins, configured tools, plugin modules.

A tool that needs configuration (a root, a database, an allowlist, a provider key) is registered either way,
so `parley tools` can show it, but stays disabled, and hidden from the model, until it is configured.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from agent.store import Store
from agent.tools import BUILTIN_TOOLS
from agent.tools.executions import ExecutionLog
from agent.tools.files import file_tools
from agent.tools.hooks import LoggingHook, MetricsHook
from agent.tools.registry import SPEC_ATTRIBUTE, ToolOverride, ToolRegistry, ToolRegistryError
from agent.tools.runner import ToolHook, ToolRunner
from agent.tools.sql import sql_tool
from agent.tools.web import http_get_tool, weather_tool, web_search_tool
from bot.config import Settings, ToolSettings

_metrics_hook: MetricsHook | None = None


def metrics_hook() -> MetricsHook:
    """One metrics hook per process: Prometheus refuses to register the same metric twice."""
    global _metrics_hook
    if _metrics_hook is None:
        _metrics_hook = MetricsHook()
    return _metrics_hook


def plugin_tools(module_names: Sequence[str]) -> list[Callable[..., Any]]:
    """Every `@tool` function of the listed modules, in definition order."""
    found: list[Callable[..., Any]] = []
    for name in module_names:
        try:
            module = importlib.import_module(name)
        except ImportError as exc:
            raise ToolRegistryError(f"tool module {name!r} cannot be imported: {exc}") from None
        for _, member in inspect.getmembers(module, inspect.isfunction):
            if hasattr(member, SPEC_ATTRIBUTE):
                found.append(member)
    return found


def build_registry(settings: Settings) -> ToolRegistry:
    """Register every tool and apply the `[tools.NAME]` tables. Raises ToolRegistryError on a conflict."""
    tables = settings.tools
    read_file, _ = file_tools(tables.read_file.root or Path("."), tables.read_file.max_bytes)
    _, list_dir = file_tools(tables.list_dir.root or Path("."), tables.list_dir.max_bytes)
    search, weather = tables.web_search, tables.weather
    configured: list[tuple[Callable[..., Any], bool]] = [
        *((fn, True) for fn in BUILTIN_TOOLS),
        (read_file, tables.read_file.root is not None),
        (list_dir, tables.list_dir.root is not None),
        (
            sql_tool(tables.sql_query.database or Path("missing.db"), tables.sql_query.max_rows),
            tables.sql_query.database is not None,
        ),
        (
            http_get_tool(
                tables.http_get.allow_hosts,
                allow_http=tables.http_get.allow_http,
                max_bytes=tables.http_get.max_bytes,
            ),
            bool(tables.http_get.allow_hosts),
        ),
        (
            web_search_tool(search.base_url or "", search.api_key.get_secret_value() if search.api_key else ""),
            bool(search.base_url and search.api_key),
        ),
        (
            weather_tool(weather.base_url or "", weather.api_key.get_secret_value() if weather.api_key else ""),
            bool(weather.base_url and weather.api_key),
        ),
        *((fn, True) for fn in plugin_tools(settings.agent.tool_modules)),
    ]
    registry = ToolRegistry()
    unconfigured = set()
    for fn, ready in configured:
        spec = registry.register(fn)
        if not ready:
            unconfigured.add(spec.name)
    registry.configure({name: _override(table, name in unconfigured) for name, table in tables.tables().items()})
    return registry


def _override(table: ToolSettings, unconfigured: bool) -> ToolOverride:
    return ToolOverride(
        enabled=False if unconfigured else table.enabled, timeout_s=table.timeout_s, approval=table.approval
    )


def build_runner(settings: Settings, store: Store, hooks: Sequence[ToolHook] | None = None) -> ToolRunner:
    return ToolRunner(
        build_registry(settings),
        ExecutionLog(store),
        hooks=list(hooks) if hooks is not None else [LoggingHook(), metrics_hook()],
        max_output_chars=settings.agent.max_tool_output_chars,
    )


def unconfigured_reason(settings: Settings, name: str) -> str:
    """Why a built-in tool is hidden, for `parley tools`."""
    reasons = {
        "read_file": "set tools.read_file.root",
        "list_dir": "set tools.list_dir.root",
        "sql_query": "set tools.sql_query.database",
        "http_get": "set tools.http_get.allow_hosts",
        "web_search": "set tools.web_search.api_key",
        "weather": "set tools.weather.api_key",
    }
    table = settings.tools.tables().get(name)
    if table is not None and not table.enabled:
        return "disabled in settings"
    return reasons.get(name, "disabled")
