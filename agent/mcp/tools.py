"""MCP tools as registry tools, so they take the runner's one path: validation, approval, timeout, output cap,
execution record, metrics.

Everything a server sends is outside input: names are reduced to safe characters, descriptions cleaned and cut,
schemas checked before use, results turned into plain text (never run, never parsed for instructions), and a
result the server marks as an error becomes an observation, as does a server that cannot be reached.
"""

from __future__ import annotations

import copy
import json
import logging
import re
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field, create_model, model_validator

from agent.mcp.client import McpConnection, McpUnavailable
from agent.mcp.spec import SEPARATOR, McpServerSpec
from agent.messages import clean_text
from agent.tools.registry import Policy, ToolError, ToolOverride, ToolSpec

if TYPE_CHECKING:
    from mcp.types import CallToolResult, Tool

log = logging.getLogger("parley.mcp")

# Characters kept in a registry name; anything else a server puts in a tool name becomes `_`.
_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]")
MAX_DESCRIPTION_CHARS = 1000
# An error's text is not cut by the runner's output cap (that applies to results), so it is cut here.
MAX_ERROR_CHARS = 1000


def registry_name(server: str, tool: str) -> str:
    return f"{server}{SEPARATOR}{_UNSAFE.sub('_', tool)}"


def default_policy(server: McpServerSpec, tool: Tool) -> Policy:
    """The server's `approval` when set; else the tool's own hints: read-only runs, anything else (destructive,
    additive, or saying nothing) waits for an approver. The hints are trusted because an operator chose the
    server; `approval` on the server, or `[tools.NAME]`, overrides them."""
    if server.approval is not None:
        return server.approval
    hints = tool.annotations
    return "allow" if hints is not None and hints.read_only_hint is True else "approve"


class _Unset:
    """An optional argument the model left out: not sent, so the server applies its own default."""

    def __deepcopy__(self, memo: object) -> _Unset:
        return self

    def __repr__(self) -> str:
        return "unset"


UNSET = _Unset()


class McpArguments(BaseModel):
    """Arguments of an MCP tool, checked against the tool's own JSON schema (jsonschema, not a translation of
    it into types). Fields are `a0, a1, ...` aliased to the property names, which need not be identifiers."""

    model_config = ConfigDict(extra="forbid", validate_by_name=False, validate_by_alias=True)
    mcp_schema: ClassVar[dict[str, Any]] = {}
    mcp_validator: ClassVar[Any] = None

    @classmethod
    def model_json_schema(cls, *args: Any, **kwargs: Any) -> dict[str, Any]:
        """The schema the model is shown: the server's, each property with its references resolved."""
        return copy.deepcopy(cls.mcp_schema)

    @model_validator(mode="before")
    @classmethod
    def _against_schema(cls, data: Any) -> Any:
        if cls.mcp_validator is not None and isinstance(data, dict):
            errors = sorted(cls.mcp_validator.iter_errors(data), key=lambda e: list(e.path))
            if errors:
                raise ValueError("; ".join(_schema_error(e) for e in errors[:3]))
        return data


def _schema_error(error: Any) -> str:
    where = ".".join(str(p) for p in error.path)
    message = " ".join(str(error.message).split())[:160]
    return f"{where}: {message}" if where else message


def arguments_model(name: str, schema: dict[str, Any]) -> tuple[type[McpArguments], dict[str, str]]:
    """A pydantic model for the runner (unknown arguments refused, the rest checked by the schema) and the map
    from its field names back to the server's property names. Raises ValueError for a schema that is not one."""
    from dspy.adapters.types.tool import convert_input_schema_to_tool_args
    from jsonschema import validators

    if schema.get("type", "object") != "object":
        raise ValueError("the input schema does not describe an object")
    checker = validators.validator_for(schema)
    checker.check_schema(schema)
    # DSPy's conversion resolves `$defs` into each argument's schema, as the model needs to see it.
    properties, _, _ = convert_input_schema_to_tool_args(schema)
    required = [p for p in schema.get("required", []) if p in properties]
    shown = {"type": "object", "properties": properties, "required": required}
    fields: dict[str, Any] = {}
    names: dict[str, str] = {}
    for i, prop in enumerate(properties):
        names[f"a{i}"] = prop
        fields[f"a{i}"] = (Any, Field(... if prop in required else UNSET, alias=prop))
    model = create_model(f"{name}_args", __base__=McpArguments, **fields)
    model.mcp_schema = shown
    model.mcp_validator = checker(schema)
    return model, names


def observation(result: CallToolResult) -> str:
    """A tool result as the text the model reads: text blocks as they are, other blocks named, not shown."""
    from mcp.types import EmbeddedResource, ImageContent, ResourceLink, TextContent, TextResourceContents

    parts: list[str] = []
    for block in result.content:
        if isinstance(block, TextContent):
            parts.append(block.text)
        elif isinstance(block, ResourceLink):
            parts.append(f"[resource {block.uri}]")
        elif isinstance(block, EmbeddedResource) and isinstance(block.resource, TextResourceContents):
            parts.append(block.resource.text)
        elif isinstance(block, EmbeddedResource):
            parts.append(f"[binary resource {block.resource.uri} not shown]")
        elif isinstance(block, ImageContent):
            parts.append(f"[image ({block.mime_type}) not shown]")
        else:
            parts.append(f"[{block.type} content not shown]")
    if not parts and result.structured_content is not None:
        parts.append(json.dumps(result.structured_content, ensure_ascii=False, default=str))
    return clean_text("\n".join(parts))


def _caller(connection: McpConnection, tool: str, names: dict[str, str]) -> Callable[..., Awaitable[str]]:
    from mcp import MCPError

    shown = registry_name(connection.name, tool)

    async def call(**arguments: Any) -> str:
        sent = {names[k]: v for k, v in arguments.items() if v is not UNSET}
        try:
            result = await connection.call(tool, sent)
        except McpUnavailable as exc:
            raise ToolError(str(exc)) from None
        except MCPError as exc:
            raise ToolError(f"{shown} was refused by its server: {_cut(exc.message)}") from None
        text = observation(result)
        if result.is_error:
            raise ToolError(f"{shown} reported an error: {_cut(text) or 'no details given'}")
        return text or "(the tool returned nothing)"

    return call


def _cut(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= MAX_ERROR_CHARS else text[:MAX_ERROR_CHARS] + "..."


def _description(server: str, tool: Tool) -> str:
    text = clean_text(tool.description or tool.title or "").strip()
    if len(text) > MAX_DESCRIPTION_CHARS:
        text = text[:MAX_DESCRIPTION_CHARS] + "..."
    return text or f"The {tool.name} tool of the {server} MCP server."


def tool_specs(connection: McpConnection, tools: Sequence[Tool]) -> list[ToolSpec]:
    """Registry tools for the server's offered tools, with the policy rules and `[tools.NAME]` applied."""
    server = connection.spec
    specs: dict[str, ToolSpec] = {}
    for tool in tools:
        if not server.offers(tool.name):
            continue
        name = registry_name(server.name, tool.name)
        if name in specs:
            log.warning("MCP server %s: two tools are named %s once cleaned; keeping the first", server.name, name)
            continue
        try:
            model, names = arguments_model(name, dict(tool.input_schema))
        except Exception as exc:
            log.warning("MCP server %s: tool %s left out, its input schema is unusable: %s", server.name, name, exc)
            continue
        override = server.overrides.get(name, ToolOverride())
        specs[name] = ToolSpec(
            name=name,
            fn=_caller(connection, tool.name, names),
            description=_description(server.name, tool),
            args_model=model,
            timeout_s=override.timeout_s or server.timeout_s,
            approval=override.approval or default_policy(server, tool),
            enabled=override.enabled if override.enabled is not None else True,
            server=server.name,
        )
    return list(specs.values())
