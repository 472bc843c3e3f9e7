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

from agent.storage.base import Storage
from agent.tools import BUILTIN_TOOLS
from agent.tools.files import file_tools
from agent.tools.hooks import LoggingHook, MetricsHook
from agent.tools.registry import SPEC_ATTRIBUTE, ToolOverride, ToolRegistry, ToolRegistryError
from agent.tools.runner import ApprovalGate, PolicyGate, ToolHook, ToolRunner
from agent.tools.sql import sql_tool
from agent.tools.web import http_get_tool, weather_tool, web_search_tool
from bot.config import Settings
from bot.mcp import is_mcp_tool

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


def missing_settings(settings: Settings) -> dict[str, str]:
    """Built-in tools that lack their configuration, each with what to set: the one place that decides."""
    t = settings.tools
    checks = {
        "read_file": (t.read_file.root is not None, "set tools.read_file.root"),
        "list_dir": (t.list_dir.root is not None, "set tools.list_dir.root"),
        "sql_query": (t.sql_query.database is not None, "set tools.sql_query.database"),
        "http_get": (bool(t.http_get.allow_hosts), "set tools.http_get.allow_hosts"),
        "web_search": (bool(t.web_search.base_url and t.web_search.api_key), "set tools.web_search.api_key"),
        "weather": (bool(t.weather.base_url and t.weather.api_key), "set tools.weather.api_key"),
    }
    return {name: hint for name, (ready, hint) in checks.items() if not ready}


def build_registry(settings: Settings) -> ToolRegistry:
    """Register every tool and apply the `[tools.NAME]` tables. Raises ToolRegistryError on a conflict."""
    tables = settings.tools
    read_file, _ = file_tools(tables.read_file.root or Path("."), tables.read_file.max_bytes)
    _, list_dir = file_tools(tables.list_dir.root or Path("."), tables.list_dir.max_bytes)
    search, weather = tables.web_search, tables.weather
    registry = ToolRegistry.of(
        *BUILTIN_TOOLS,
        read_file,
        list_dir,
        sql_tool(tables.sql_query.database or Path("missing.db"), tables.sql_query.max_rows),
        http_get_tool(
            tables.http_get.allow_hosts, allow_http=tables.http_get.allow_http, max_bytes=tables.http_get.max_bytes
        ),
        web_search_tool(search.base_url or "", search.api_key.get_secret_value() if search.api_key else ""),
        weather_tool(weather.base_url or "", weather.api_key.get_secret_value() if weather.api_key else ""),
        *plugin_tools(settings.agent.tool_modules),
    )
    missing = missing_settings(settings)
    registry.configure(
        {
            name: ToolOverride(
                enabled=table.enabled and name not in missing, timeout_s=table.timeout_s, approval=table.approval
            )
            for name, table in tables.tables().items()
            # An MCP server's tools are registered when it answers, with their tables (bot/mcp.py).
            if not is_mcp_tool(settings, name)
        }
    )
    return registry


def build_runner(
    settings: Settings, storage: Storage, hooks: Sequence[ToolHook] | None = None, gate: ApprovalGate | None = None
) -> ToolRunner:
    return ToolRunner(
        build_registry(settings),
        storage.executions,
        hooks=list(hooks) if hooks is not None else [LoggingHook(), metrics_hook()],
        gate=gate or PolicyGate(),
        max_output_chars=settings.agent.max_tool_output_chars,
    )


def unconfigured_reason(settings: Settings, name: str) -> str:
    """Why a tool is hidden, for `parley tools`."""
    table = settings.tools.tables().get(name)
    if table is not None and not table.enabled:
        return "disabled in settings"
    return missing_settings(settings).get(name, "disabled")
