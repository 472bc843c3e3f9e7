"""Channel settings: how the bot behaves in a thread, a channel or a workspace, and where each value comes from.

A scope is a workspace (`slack:T1`, `discord:G1`), a channel (its memory key: `slack:T1/C2`, `discord:G1/C2`, or
the console's plain channel name) or a thread (the channel key, "/", the thread id). A message's settings are
resolved from its thread, then its channel, then its workspace, then the global settings: the most specific
scope that sets a key decides it. At each scope a value set from chat (or `parley channel set`, kept in storage
with an audit of every change) wins over the TOML file's `[channels."KEY"]`.

A Discord thread has a channel id of its own; its scope is the thread scope of its parent channel
(`discord:G1/C2/THREAD`), so the parent's settings, budgets and rate limit apply in it as a Slack channel's do in
its threads (its memory stays the thread's own, under `discord:G1/THREAD`). A Discord direct message belongs to no
server and so to no scope: the global settings apply there, and its settings cannot be changed from chat.

The keys are one table (`KEYS`): their parsing and canonical text serve the TOML file, chat and the CLI alike
(what each does is said once, by `ChannelTable` in bot/config.py, and so in the README). Stored values are text;
one that no longer parses (a model removed from the settings) is ignored with a warning, never a crash.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol, get_args

from agent.messages import IncomingMessage
from agent.options import ModeName
from agent.profile import DEFAULT_PROFILE, ChannelProfile
from bot.budgets import BUDGET_KEYS, OFF, Budgets, parse_budget

if TYPE_CHECKING:
    from agent.storage.base import Storage
    from agent.storage.models import SettingChange
    from bot.config import Settings

log = logging.getLogger("parley.channels")

MODES: tuple[str, ...] = get_args(ModeName)
MAX_INSTRUCTIONS = 2000
PLATFORMS = ("slack", "discord")
# A part of a scope: an id or a console channel name, without the separators.
_PART = r"[^\s:/]+"
_PLATFORM_SCOPE = re.compile(rf"^(?P<platform>{'|'.join(PLATFORMS)}):{_PART}(?:/{_PART}){{0,2}}$")
_CONSOLE_SCOPE = re.compile(rf"^{_PART}(?:/{_PART})?$")


class InvalidSetting(ValueError):
    """A channel setting that cannot be set (an unknown key, a bad value, an unknown model or tool); the message
    is one sentence for the person who tried."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def scope_chain(scope: str) -> list[str]:
    """The scope and the wider ones it sits in, most specific first: `slack:T1/C2/17.1` -> [`slack:T1/C2/17.1`,
    `slack:T1/C2`, `slack:T1`]; a console thread `team/7` -> [`team/7`, `team`]. InvalidSetting otherwise."""
    text = scope.strip()
    if _PLATFORM_SCOPE.fullmatch(text) is None and _CONSOLE_SCOPE.fullmatch(text) is None:
        raise InvalidSetting(
            f"{scope!r} is not a scope: a workspace (slack:T1), a channel (slack:T1/C2, or a console channel name) "
            "or a thread (slack:T1/C2/THREAD)"
        )
    parts = text.split("/")
    return ["/".join(parts[:n]) for n in range(len(parts), 0, -1)]


def message_scopes(message: IncomingMessage) -> list[str]:
    """The scopes a message is in, most specific first: its thread (if any), its channel, its workspace. A message
    outside any workspace (a Discord DM) is in none: the global settings apply to it."""
    conversation = message.conversation
    if message.platform != "console":
        if not message.workspace:
            return []
        channel = conversation.settings_channel
        # A thread with a channel id of its own (Discord) is a thread of its parent channel.
        thread = conversation.thread or (message.channel if conversation.parent else "")
        scopes = [f"{channel}/{thread}"] if thread else []
        return [*scopes, channel, f"{message.platform}:{message.workspace}"]
    scopes = [f"{conversation.channel}/{conversation.thread}"] if conversation.thread else []
    # The console may speak as a platform's channel (`parley ask --channel slack:T1/C2`): its workspace applies.
    platform_channel = _PLATFORM_SCOPE.fullmatch(conversation.channel)
    return [*scopes, *(scope_chain(conversation.channel) if platform_channel else [conversation.channel])]


@dataclass(frozen=True)
class Known:
    """What a value may name: the named models, and (when checked) the tools."""

    models: Collection[str] = ()
    # None: tool names are not checked (resolution: a tool missing now, an MCP server down, is just left out).
    tools: Collection[str] | None = None
    # The tool names a refusal lists (the enabled ones); None: `tools`.
    listed: Collection[str] | None = None


def _instructions(text: str, known: Known) -> str:
    value = text.strip()
    if len(value) > MAX_INSTRUCTIONS:
        raise ValueError(f"instructions are at most {MAX_INSTRUCTIONS:,} characters (these are {len(value):,})")
    return value


def _model(text: str, known: Known) -> str | None:
    name = text.strip()
    if name.lower() == "default":
        return None
    if name not in known.models:
        named = ", ".join(sorted(known.models)) or "none are configured"
        raise ValueError(f"no model named {name!r} (named models: {named}; add one as [models.NAME]), or default")
    return name


def _tools(text: str, known: Known) -> frozenset[str] | None:
    value = text.strip()
    if value.lower() in ("all", "*"):
        return None
    names = frozenset(n for n in re.split(r"[\s,]+", value) if n)
    if value.lower() == "none" or not names:
        return frozenset()
    if known.tools is not None:
        unknown = sorted(names - set(known.tools))
        if unknown:
            listed = known.listed if known.listed is not None else known.tools
            tools = ", ".join(sorted(listed)) or "none are enabled"
            raise ValueError(f"there is no tool named {unknown[0]!r}; tools: {tools}")
    return names


def _mode(text: str, known: Known) -> str:
    value = text.strip().lower()
    if value not in MODES:
        raise ValueError(f"{text!r} is not a mode: use {', '.join(MODES)}")
    return value


def parse_rate(text: str) -> str | None:
    """A rate in the `limits` notation (10/minute, 100/hour), or None for off; ValueError otherwise."""
    value = text.strip()
    if value.lower() in OFF:
        return None
    # Imported here: `limits` pulls in its async storage backends (~55 ms) for every command otherwise.
    import limits

    try:
        limits.parse(value)
    except ValueError:
        raise ValueError(f"{text!r} is not a rate such as 10/minute or 100/hour (or off)") from None
    return value


def _rate(text: str, known: Known) -> str | None:
    return parse_rate(text)


def _budget(text: str, known: Known) -> Any:
    return parse_budget(text)


def _show(value: Any) -> str:
    """A parsed value (not None: see `key_text`) as its canonical text (what `set` stores and `show` prints)."""
    if isinstance(value, frozenset):
        return ", ".join(sorted(value)) if value else "none"
    return str(value)


@dataclass(frozen=True)
class Key:
    """One channel setting: its name and how its text is read (ValueError with the reason)."""

    name: str
    parse: Callable[[str, Known], Any]
    # The canonical text of a parsed value; None is shown by `none_text`.
    none_text: str = "off"


KEYS: tuple[Key, ...] = (
    Key("instructions", _instructions),
    Key("model", _model, none_text="default"),
    Key("tools", _tools, none_text="all"),
    Key("mode", _mode),
    Key("rate_limit", _rate),
    Key("user_daily", _budget),
    Key("user_monthly", _budget),
    Key("channel_daily", _budget),
    Key("channel_monthly", _budget),
)
KEY_NAMES = tuple(key.name for key in KEYS)
_BY_NAME = {key.name: key for key in KEYS}


def key_text(key: Key, value: Any) -> str:
    """The canonical text of a key's parsed value."""
    return key.none_text if value is None else _show(value)


def toml_text(value: Any) -> str | None:
    """A `[channels."KEY"]` value as the text a key parses (a tool list joined; None: not set there)."""
    if value is None:
        return None
    if isinstance(value, list):
        return ", ".join(value) if value else "none"
    return str(value)


def validate_table(table: Mapping[str, Any], models: Collection[str]) -> None:
    """Check a `[channels."KEY"]` table's values with the keys' own parsers; ValueError naming the key."""
    known = Known(models=models)
    for name, value in table.items():
        text = toml_text(value)
        if text is None or name not in _BY_NAME:
            continue
        try:
            _BY_NAME[name].parse(text, known)
        except ValueError as exc:
            raise ValueError(f"{name}: {exc}") from None


class Shown(NamedTuple):
    """A key's effective value in a scope and where it came from."""

    key: str
    value: str
    source: str


@dataclass(frozen=True)
class Resolved:
    """What a message's channel settings resolved to."""

    profile: ChannelProfile = DEFAULT_PROFILE
    # The rate in force for the sender (the `limits` notation); None: no limit.
    rate_limit: str | None = None
    # Set by channel settings: the rate replaces the global one and is counted per user and channel.
    channel_rate: bool = False
    budgets: Budgets = field(default_factory=Budgets)


def _workspace(scope: str) -> bool:
    """Whether a scope is a platform's workspace (`slack:T1`), not a channel or thread in one."""
    return ":" in scope and "/" not in scope


class ChannelResolver(Protocol):
    """What resolves a message's channel settings (the dispatcher's view of `ChannelConfig`)."""

    async def resolve(self, message: IncomingMessage) -> Resolved: ...


@dataclass
class ChannelConfig:
    """Resolves, shows and changes channel settings: the TOML file's `[channels]` under the stored values."""

    settings: Settings
    storage: Storage
    # The names of the tools there are (the registry's), for checking a `tools` value being set; None: unchecked.
    tool_names: Callable[[], Collection[str]] | None = None
    # The names of the enabled tools, which a refused `tools` value lists; None: every one of `tool_names`.
    enabled_tool_names: Callable[[], Collection[str]] | None = None
    clock: Callable[[], float] = time.time
    # Stored values already warned about: a bad value is reported once, not on every message.
    _warned: set[tuple[str, str, str]] = field(default_factory=set, repr=False)

    @property
    def known(self) -> Known:
        return Known(models=tuple(self.settings.models))

    def _default(self, key: str) -> tuple[Any, str]:
        """A key's global value and where it is set."""
        s = self.settings
        if key == "mode":
            return s.agent.mode, "[agent] mode"
        if key == "rate_limit":
            return s.dispatch.rate_limit, "[dispatch] rate_limit"
        if key in _BUDGET_NAMES:
            return parse_budget(getattr(s.budgets, key) or "off"), f"[budgets] {key}"
        return {"instructions": "", "model": None, "tools": None}[key], "default"

    def _effective(
        self, key: Key, scopes: Sequence[str], stored: Mapping[str, Mapping[str, str]]
    ) -> tuple[Any, str, str | None]:
        """A key's value, its source, and the scope that set it (None: the global settings)."""
        known = self.known
        for scope in scopes:
            text = stored.get(scope, {}).get(key.name)
            if text is not None:
                try:
                    return key.parse(text, known), f"set at {scope}", scope
                except ValueError as exc:
                    if (scope, key.name, text) not in self._warned:
                        self._warned.add((scope, key.name, text))
                        log.warning("ignoring the stored %s of %s (%r): %s", key.name, scope, text, exc)
            table = self.settings.channels.get(scope)
            configured = toml_text(getattr(table, key.name)) if table is not None else None
            if configured is not None:
                try:
                    return key.parse(configured, known), f'[channels."{scope}"]', scope
                except ValueError as exc:  # validated at start-up; only a bug gets here
                    log.warning("ignoring %s of [channels.%r]: %s", key.name, scope, exc)
        value, source = self._default(key.name)
        return value, source, None

    async def _stored(self, scopes: Sequence[str]) -> dict[str, dict[str, str]]:
        if not scopes:
            return {}
        return await self.storage.channel_settings.values(list(scopes))

    async def resolve(self, message: IncomingMessage) -> Resolved:
        """The message's profile, rate limit and budgets: thread, channel, workspace, then the global settings."""
        scopes = message_scopes(message)
        # One indexed query per message: cheap next to the model call it precedes.
        stored = await self._stored(scopes)
        values: dict[str, Any] = {}
        set_at: dict[str, str | None] = {}
        for key in KEYS:
            values[key.name], _, set_at[key.name] = self._effective(key, scopes, stored)
        b = self.settings.budgets
        profile = ChannelProfile(
            instructions=values["instructions"], model=values["model"], tools=values["tools"], mode=values["mode"]
        )
        # A person's budget set for this channel (or a thread of it) counts their use of this channel only.
        in_channel = frozenset(
            name
            for name, whose, _ in BUDGET_KEYS
            if whose == "user" and (scope := set_at[name]) is not None and not _workspace(scope)
        )
        budgets = Budgets(
            **{name: values[name] for name in _BUDGET_NAMES},
            step_down=b.step_down,
            exempt_approvers=b.exempt_approvers,
            in_channel=in_channel,
        )
        return Resolved(profile, values["rate_limit"], set_at["rate_limit"] is not None, budgets)

    async def show(self, scope: str) -> list[Shown]:
        """Every key's effective value in `scope` and where it comes from."""
        scopes = scope_chain(scope)
        stored = await self._stored(scopes)
        shown = []
        for key in KEYS:
            value, source, _ = self._effective(key, scopes, stored)
            shown.append(Shown(key.name, key_text(key, value), source))
        return shown

    def _key(self, name: str) -> Key:
        key = _BY_NAME.get(name.strip().lower())
        if key is None:
            raise InvalidSetting(f"there is no channel setting {name!r}; settings: {', '.join(KEY_NAMES)}")
        return key

    async def set(self, scope: str, key: str, value: str, actor: str) -> str | None:
        """Set a key at a scope (audited); returns the value it replaced there. InvalidSetting for an unknown
        key, a bad value, or a model or tool that does not exist."""
        scope = scope_chain(scope)[0]
        found = self._key(key)
        tools = tuple(self.tool_names()) if self.tool_names is not None else None
        listed = tuple(self.enabled_tool_names()) if self.enabled_tool_names is not None else None
        known = Known(models=tuple(self.settings.models), tools=tools, listed=listed)
        try:
            parsed = found.parse(value, known)
        except ValueError as exc:
            raise InvalidSetting(f"{found.name}: {exc}") from None
        text = key_text(found, parsed)
        return await self.storage.channel_settings.set(scope, found.name, text, actor=actor, now=self.clock())

    async def reset(self, scope: str, key: str, actor: str) -> str | None:
        """Remove the value set from chat at a scope (audited); the TOML file's or a wider scope's applies again.
        Returns the value removed, None when none was set."""
        scope = scope_chain(scope)[0]
        found = self._key(key)
        return await self.storage.channel_settings.reset(scope, found.name, actor=actor, now=self.clock())

    async def history(self, scope: str | None = None, since: float = 0.0) -> list[SettingChange]:
        """The audit of changes, oldest first: of one scope, or of every scope."""
        checked = scope_chain(scope)[0] if scope is not None else None
        return await self.storage.channel_settings.history(checked, since)


_BUDGET_NAMES = tuple(name for name, _, _ in BUDGET_KEYS)
