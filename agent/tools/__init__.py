"""Tools the agent can call: the registry, the runner every call goes through, and the built-ins."""

from agent.tools.builtins import BUILTIN_TOOLS
from agent.tools.registry import ToolError, ToolRegistry, ToolSpec, tool
from agent.tools.runner import ToolResult, ToolRunner

__all__ = ["BUILTIN_TOOLS", "ToolError", "ToolRegistry", "ToolResult", "ToolRunner", "ToolSpec", "tool"]
