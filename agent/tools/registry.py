"""The tool registry: each tool is a typed Python function plus metadata, registered once by name.

The parameter schema comes from the function's type hints through pydantic, so the schema the model sees and
the validation the runner applies are the same thing. Names are unique: DSPy would silently keep the last
of two tools with one name, so a duplicate is an error at start-up.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal, TypeVar, get_type_hints, overload

from pydantic import BaseModel, ConfigDict, create_model

# Who must say yes before a call runs; enforced by the runner's approval gate, never by the prompt.
Policy = Literal["allow", "confirm", "approve", "deny"]
DEFAULT_TIMEOUT_S = 10.0
SPEC_ATTRIBUTE = "__parley_tool__"


class ToolError(ValueError):
    """A failure whose message is safe to show the model (and so the user): no paths, no internals."""


class ToolRegistryError(Exception):
    """A registry that cannot be built: a duplicate name, settings for a tool that does not exist."""


@dataclass(frozen=True)
class ToolSpec:
    """A tool and everything the agent, the runner and `parley tools` need to know about it."""

    name: str
    fn: Callable[..., Any]
    description: str
    args_model: type[BaseModel]
    returns: str = ""
    examples: tuple[str, ...] = ()
    timeout_s: float = DEFAULT_TIMEOUT_S
    approval: Policy = "allow"
    enabled: bool = True
    # Called with the validated arguments before approval is asked; raises ToolError for a call the tool
    # would refuse anyway (a host off the allowlist, a path outside the root), so no approver is bothered.
    check: Callable[..., object] | None = None
    # The MCP server that provides the tool; empty for tools that run in this process.
    server: str = ""

    @property
    def is_async(self) -> bool:
        return inspect.iscoroutinefunction(self.fn)

    @property
    def parameters(self) -> dict[str, Any]:
        """The JSON schema of the arguments (an object schema)."""
        return self.args_model.model_json_schema()

    @property
    def args(self) -> dict[str, dict[str, Any]]:
        """Per-argument schemas, the shape `dspy.Tool.args` uses."""
        props: dict[str, dict[str, Any]] = self.parameters.get("properties", {})
        return {name: {k: v for k, v in schema.items() if k != "title"} for name, schema in props.items()}

    @property
    def required(self) -> list[str]:
        return list(self.parameters.get("required", []))


@dataclass(frozen=True)
class ToolOverride:
    """What settings may change about a registered tool (`[tools.NAME]`)."""

    enabled: bool | None = None
    timeout_s: float | None = None
    approval: Policy | None = None


def args_model_for(name: str, fn: Callable[..., Any]) -> type[BaseModel]:
    """A pydantic model of the function's parameters; unknown arguments are rejected, not ignored."""
    hints = get_type_hints(fn, include_extras=True)
    fields: dict[str, Any] = {}
    for param in inspect.signature(fn).parameters.values():
        if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            raise ToolRegistryError(f"tool {name}: *args and **kwargs cannot be described to the model")
        if param.name not in hints:
            raise ToolRegistryError(f"tool {name}: parameter {param.name!r} needs a type hint")
        default = ... if param.default is inspect.Parameter.empty else param.default
        fields[param.name] = (hints[param.name], default)
    model: type[BaseModel] = create_model(f"{name}_args", __config__=ConfigDict(extra="forbid"), **fields)
    return model


F = TypeVar("F", bound=Callable[..., Any])


@overload
def tool(fn: F) -> F: ...


@overload
def tool(
    *,
    name: str | None = None,
    returns: str = "",
    examples: tuple[str, ...] = (),
    timeout_s: float = DEFAULT_TIMEOUT_S,
    approval: Policy = "allow",
    enabled: bool = True,
    check: Callable[..., object] | None = None,
) -> Callable[[F], F]: ...


def tool(
    fn: Callable[..., Any] | None = None,
    *,
    name: str | None = None,
    returns: str = "",
    examples: tuple[str, ...] = (),
    timeout_s: float = DEFAULT_TIMEOUT_S,
    approval: Policy = "allow",
    enabled: bool = True,
    check: Callable[..., object] | None = None,
) -> Any:
    """Mark a function as a tool (`@tool` or `@tool(timeout_s=5, approval="approve")`); the function is unchanged."""

    def mark(func: Callable[..., Any]) -> Callable[..., Any]:
        tool_name = name or func.__name__
        doc = inspect.getdoc(func) or ""
        if not doc:
            raise ToolRegistryError(f"tool {tool_name}: the docstring is what the model reads; it cannot be empty")
        spec = ToolSpec(
            name=tool_name,
            fn=func,
            description=doc,
            args_model=args_model_for(tool_name, func),
            returns=returns,
            examples=examples,
            timeout_s=timeout_s,
            approval=approval,
            enabled=enabled,
            check=check,
        )
        setattr(func, SPEC_ATTRIBUTE, spec)
        return func

    return mark(fn) if fn is not None else mark


def spec_of(fn: Callable[..., Any] | ToolSpec) -> ToolSpec:
    """The spec of a tool: the one `@tool` attached, or one made from the plain function with defaults."""
    if isinstance(fn, ToolSpec):
        return fn
    spec = getattr(fn, SPEC_ATTRIBUTE, None)
    if isinstance(spec, ToolSpec):
        return spec
    marked = tool(fn)
    result: ToolSpec = getattr(marked, SPEC_ATTRIBUTE)
    return result


@dataclass
class ToolRegistry:
    """Tools by name, built at start-up; an MCP server's tools are replaced whenever its tool list changes.
    The runner and the agent read it."""

    _tools: dict[str, ToolSpec] = field(default_factory=dict)
    # Bumped by every change, so whoever built something from the tool set (the agent) knows to rebuild it.
    revision: int = 0

    @classmethod
    def of(cls, *tools: Callable[..., Any] | ToolSpec) -> ToolRegistry:
        registry = cls()
        for fn in tools:
            registry.register(fn)
        return registry

    def register(self, fn: Callable[..., Any] | ToolSpec) -> ToolSpec:
        spec = spec_of(fn)
        if spec.name in self._tools:
            raise ToolRegistryError(f"two tools are named {spec.name!r}; tool names must be unique")
        if spec.name == "finish":
            raise ToolRegistryError("'finish' is reserved: the agent calls it to end its reasoning")
        self._tools[spec.name] = spec
        self.revision += 1
        return spec

    def replace_server(self, server: str, specs: Sequence[ToolSpec]) -> list[str]:
        """Make `specs` the tools of MCP server `server`, whose tool list may change while Parley runs.

        Returns the names left out because another tool (a built-in, another server's) already has them.
        """
        kept = {name: spec for name, spec in self._tools.items() if spec.server != server}
        clashes = [spec.name for spec in specs if spec.name in kept or spec.name == "finish"]
        kept.update({spec.name: spec for spec in specs if spec.name not in clashes})
        self._tools = kept
        self.revision += 1
        return clashes

    def configure(self, overrides: Mapping[str, ToolOverride]) -> None:
        """Apply `[tools.NAME]` settings; a table naming no registered tool is a typo and an error."""
        for name, override in overrides.items():
            spec = self._tools.get(name)
            if spec is None:
                raise ToolRegistryError(f"settings name tool {name!r}, which does not exist (known: {self.names()})")
            changes = {k: v for k, v in vars(override).items() if v is not None}
            self._tools[name] = replace(spec, **changes)
        self.revision += 1

    def get(self, name: str) -> ToolSpec | None:
        return self._tools.get(name)

    def names(self) -> str:
        return ", ".join(sorted(self._tools))

    def enabled(self) -> list[ToolSpec]:
        """The tools the model may call, in registration order."""
        return [spec for spec in self._tools.values() if spec.enabled]

    def __iter__(self) -> Iterator[ToolSpec]:
        return iter(self._tools.values())

    def __len__(self) -> int:
        return len(self._tools)
