"""Tools the agent can call. `BUILTIN_TOOLS` is the default set."""

from agent.tools.builtins import BUILTIN_TOOLS

__all__ = ["BUILTIN_TOOLS"]
