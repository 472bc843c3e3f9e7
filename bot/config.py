"""Settings: the `PARLEY_*` contract of DESIGN.md as pydantic models.

Sources, highest priority first: init arguments, `PARLEY_*` env vars (nested with `__`), conventional env
names (`SLACK_BOT_TOKEN`, ...), the TOML file (`PARLEY_CONFIG` or `./parley.toml`), defaults.
"""

from __future__ import annotations

import os
import re
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic.fields import FieldInfo
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from adapters.options import DiscordConfig, SlackConfig
from agent.approvals.models import ApprovalPolicy
from agent.attachments.models import Limits
from agent.options import UNAVAILABLE_REPLY, AgentOptions, BreakerOptions, ModelConfig, ModeName
from bot.budgets import budget_text
from bot.channels import InvalidSetting, parse_rate, scope_chain, validate_table

ENV_PREFIX = "PARLEY_"
CONFIG_ENV = "PARLEY_CONFIG"
DEFAULT_CONFIG_FILE = "parley.toml"

# Conventional variable names accepted as aliases: name -> path in the settings tree.
ENV_ALIASES: dict[str, tuple[str, ...]] = {
    "SLACK_BOT_TOKEN": ("slack", "bot_token"),
    "SLACK_SIGNING_SECRET": ("slack", "signing_secret"),
    "SLACK_APP_TOKEN": ("slack", "app_token"),
    "DISCORD_BOT_TOKEN": ("discord", "token"),
    "SENTRY_DSN": ("sentry", "dsn"),
}


# The defaults of the options the code runs with: each settings default below that has an option is read from it,
# so a value is written once (the settings add the limits and descriptions).
AGENT = AgentOptions()
MODEL = ModelConfig()
BREAKER = BreakerOptions()
APPROVALS = ApprovalPolicy()

# The scheduler's own jobs; `[[schedules]]` entries may not take these names.
BUILTIN_JOBS = ("prune", "export_chains", "metrics_summary")


class Section(BaseModel):
    """A settings table: unknown keys are errors, so a typo never silently does nothing."""

    model_config = ConfigDict(extra="forbid")


class LMSettings(Section):
    model: str = Field(
        MODEL.model,
        min_length=1,
        description="`local` (the embedded model) or any dspy.LM id: openai/gpt-4o-mini, ...",
    )
    api_base: str | None = Field(None, description="the provider's base URL (a proxy, a local server)")
    api_key: SecretStr | None = Field(None, description="the provider's key (or its own variable: OPENAI_API_KEY)")
    timeout_s: float = Field(MODEL.timeout_s, gt=0, description="the wait for each response of one model call")
    max_tokens: int = Field(MODEL.max_tokens, gt=0, description="most tokens the model writes per call")
    temperature: float = Field(MODEL.temperature, ge=0, le=2, description="sampling temperature")
    vision: bool | None = Field(
        None, description="the model takes images (shared pictures are shown to it); unset: as litellm knows the model"
    )
    stream: bool = Field(
        MODEL.stream, description="ask the provider to stream answers, shown as they are written (off: shown whole)"
    )


class FallbackSettings(Section):
    model: str | None = Field(None, description="a second model tried when the first fails or its breaker is open")
    api_base: str | None = Field(None, description="the fallback provider's base URL")
    api_key: SecretStr | None = Field(None, description="the fallback provider's key")
    reply: str = Field(UNAVAILABLE_REPLY, min_length=1, description="sent (with an error id) when no model can answer")


NAMED_MODEL = r"^[a-z0-9_-]+$"


class ModelSettings(Section):
    """`[models.NAME]`: a model that channel settings can choose by name; unset fields take `[lm]`'s."""

    model: str = Field(min_length=1, description="`local` or any dspy.LM id, as in [lm] model")
    api_base: str | None = Field(None, description="the provider's base URL; unset: [lm] api_base")
    api_key: SecretStr | None = Field(None, description="the provider's key; unset: [lm] api_key")
    timeout_s: float | None = Field(None, gt=0, description="the wait for each response; unset: [lm] timeout_s")
    max_tokens: int | None = Field(None, gt=0, description="most tokens written per call; unset: [lm] max_tokens")
    temperature: float | None = Field(None, ge=0, le=2, description="sampling temperature; unset: [lm] temperature")
    vision: bool | None = Field(None, description="the model takes images; unset: [lm] vision")
    stream: bool | None = Field(None, description="ask the provider to stream answers; unset: [lm] stream")


class BreakerSettings(Section):
    failure_threshold: int = Field(
        BREAKER.failure_threshold, ge=1, description="failed answers in a row that open a model's breaker"
    )
    reset_timeout_s: float = Field(
        BREAKER.reset_timeout_s, gt=0, description="how long an open breaker waits before one trial call"
    )
    success_threshold: int = Field(BREAKER.success_threshold, ge=1, description="successful trials that close it again")


class AgentSettings(Section):
    max_iters: int = Field(AGENT.max_iters, ge=1, le=50, description="most ReAct steps (tool calls) per answer")
    mode: ModeName = Field(
        AGENT.mode, description="react; decompose (split, answer each part, combine); vote (several agents, majority)"
    )
    max_message_chars: int = Field(
        AGENT.max_message_chars, ge=1, description="a longer message gets a clear reply, no model call"
    )
    answer_timeout_s: float = Field(
        AGENT.answer_timeout_s,
        gt=0,
        description="deadline for one answer per model, retries and their backoff included",
    )
    concurrency: int = Field(
        AGENT.concurrency,
        ge=1,
        description="messages answered at once: the dispatcher's global limit and the agent pool",
    )
    max_tool_output_chars: int = Field(4000, ge=100, description="longer tool output is cut before the model")
    max_subquestions: int = Field(
        AGENT.max_subquestions, ge=2, le=10, description="decompose mode: most parts a question is split into"
    )
    voters: int = Field(AGENT.voters, ge=2, le=9, description="vote mode: agents run side by side")
    vote_threshold: float = Field(
        AGENT.vote_threshold, gt=0, le=1, description="vote mode: share the majority answer needs"
    )
    tool_modules: list[str] = Field(default_factory=list, description="modules whose @tool functions to add")


Policy = Literal["allow", "confirm", "approve", "deny"]


class ToolSettings(Section):
    """`[tools.NAME]`: switch a tool off, change its timeout or its approval policy."""

    enabled: bool = Field(True, description="false hides the tool from the model")
    timeout_s: float | None = Field(None, gt=0, description="a call running longer is stopped (default: the tool's)")
    approval: Policy | None = Field(None, description="who must say yes before it runs (default: the tool's)")


class FileToolSettings(ToolSettings):
    root: Path | None = Field(None, description="the only directory the tool may read; unset hides the tool")
    max_bytes: int = Field(64_000, ge=1, description="most bytes read from one file")


class SQLToolSettings(ToolSettings):
    database: Path | None = Field(None, description="SQLite file opened read-only; unset hides the tool")
    max_rows: int = Field(50, ge=1, description="most rows a query returns")


class HTTPGetSettings(ToolSettings):
    allow_hosts: list[str] = Field(default_factory=list, description="hosts (or *.domain) the tool may fetch")
    allow_http: bool = Field(False, description="also allow plain http:// URLs")
    max_bytes: int = Field(200_000, ge=1, description="most bytes read from one response")


class ProviderToolSettings(ToolSettings):
    """A tool backed by a web API: hidden from the model until its base URL and key are set."""

    base_url: str | None = Field(None, description="the provider's API base URL")
    api_key: SecretStr | None = Field(None, description="the provider's key; unset hides the tool")


class ToolsSettings(Section):
    """Every `[tools.NAME]` table. Built-in tools have typed tables; any other name is a plain ToolSettings."""

    model_config = ConfigDict(extra="allow")
    __pydantic_extra__: dict[str, ToolSettings] = Field(init=False)

    calculator: ToolSettings = ToolSettings()
    current_time: ToolSettings = ToolSettings()
    remember_fact: ToolSettings = ToolSettings()
    recall_facts: ToolSettings = ToolSettings()
    read_file: FileToolSettings = FileToolSettings()
    list_dir: FileToolSettings = FileToolSettings()
    sql_query: SQLToolSettings = SQLToolSettings()
    http_get: HTTPGetSettings = HTTPGetSettings()
    web_search: ProviderToolSettings = ProviderToolSettings(base_url="https://api.search.brave.com/res/v1")
    weather: ProviderToolSettings = ProviderToolSettings(base_url="https://api.openweathermap.org/data/2.5")

    def tables(self) -> dict[str, ToolSettings]:
        """Every table by tool name, built-in and custom."""
        tables: dict[str, ToolSettings] = {name: getattr(self, name) for name in type(self).model_fields}
        tables.update(self.__pydantic_extra__ or {})
        return tables


class McpServerSettings(Section):
    """`[mcp.servers.NAME]`: a server started as a child process (`command`) or reached over HTTP (`url`)."""

    command: str | None = Field(None, min_length=1, description="the program of a stdio server, e.g. npx")
    args: list[str] = Field(default_factory=list, description="its arguments")
    env: dict[str, SecretStr] = Field(
        default_factory=dict, description="the child's environment: only these (and PATH, HOME, ...), never Parley's"
    )
    cwd: Path | None = Field(None, description="the child's working directory (default: Parley's)")
    url: str | None = Field(None, pattern=r"^https?://", description="the endpoint of a streamable HTTP server")
    headers: dict[str, SecretStr] = Field(default_factory=dict, description="sent with every HTTP request")
    include: list[str] = Field(
        default_factory=list, description="only these of the server's tools (names or patterns like get_*)"
    )
    exclude: list[str] = Field(default_factory=list, description="never these of its tools")
    approval: Policy | None = Field(
        None, description="policy of all its tools (default: allow for read-only hints, else approve)"
    )
    timeout_s: float = Field(30.0, gt=0, description="a call running longer is stopped")
    connect_timeout_s: float = Field(20.0, gt=0, description="how long starting or reaching the server may take")
    required: bool = Field(False, description="/readyz fails while this server is not connected")
    enabled: bool = Field(True, description="false leaves the server out")

    @model_validator(mode="after")
    def _one_transport(self) -> McpServerSettings:
        if (self.command is None) == (self.url is None):
            raise ValueError("set either command (a stdio server) or url (a streamable HTTP server), not both")
        if self.url is not None and (self.args or self.env or self.cwd):
            raise ValueError("args, env and cwd are for stdio servers; an HTTP server takes headers")
        if self.command is not None and self.headers:
            raise ValueError("headers are for HTTP servers; a stdio server takes env")
        return self


class McpSettings(Section):
    servers: dict[str, McpServerSettings] = Field(
        default_factory=dict, description="MCP servers whose tools the agent may call, by name"
    )

    @field_validator("servers")
    @classmethod
    def _names(cls, value: dict[str, McpServerSettings]) -> dict[str, McpServerSettings]:
        # A server's name prefixes its tools (`tracker__search`), so `__` inside it would make names ambiguous.
        for name in value:
            if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_-]*", name) or "__" in name or name.endswith("_"):
                raise ValueError(f"{name!r}: a server name is letters, digits, - and single _ (e.g. issue-tracker)")
        return value


class MemorySettings(Section):
    max_turns: int = Field(100, ge=1, description="turns kept per channel; older ones are deleted")
    context_turns: int = Field(AGENT.context_turns, ge=0, description="recent turns given to the model")
    facts_k: int = Field(AGENT.facts_k, ge=0, description="relevant facts given to the model")
    fact_max_age_days: int = Field(30, ge=1, description="prune facts not touched for this long")


class ApprovalSettings(Section):
    """`[approvals]`: who may approve risky tool calls, and for how long a request waits."""

    approvers: dict[str, list[str]] = Field(
        default_factory=dict, description="user ids per platform, e.g. {slack = ['U123'], discord = ['4567']}"
    )
    roles: dict[str, list[str]] = Field(
        default_factory=dict, description="role ids whose members approve, per platform, e.g. {discord = ['123']}"
    )
    channels: dict[str, list[str]] = Field(
        default_factory=dict,
        description="approvers (user or role ids) of one channel (its memory key); they replace the platform's",
    )
    allow_self_approval: bool = Field(
        APPROVALS.allow_self_approval, description="an approver may approve a call they asked for"
    )
    expiry_s: float = Field(APPROVALS.expiry_s, gt=0, description="a request not decided in this time is denied")
    max_waiting_per_user: int = Field(
        APPROVALS.max_waiting_per_user,
        ge=1,
        description="answers of one person that may wait for approvals at once; more are refused",
    )
    console_auto_approve: bool = Field(False, description="approve every call when the console has no terminal")


class DispatchSettings(Section):
    """The dispatcher: per-user limits, shutdown, retries. Its global limit is `agent.concurrency`."""

    rate_limit: str | None = Field(
        "10/minute", description="messages per user, e.g. 10/minute or 100/hour; off (or empty) for none"
    )
    shutdown_grace_s: float = Field(10.0, ge=0, description="how long running messages may finish on shutdown")
    max_attempts: int = Field(3, ge=1, description="interrupted attempts at a message before it is given up")
    delivery_attempts: int = Field(5, ge=1, description="tries to post a reply when the platform fails")
    claim_ttl_s: float = Field(
        10.0,
        ge=1,
        le=600,
        description="replicas on PostgreSQL: how long a replica's claim on a conversation outlives its last "
        "heartbeat, so how soon another replica takes over the conversations of one that died",
    )
    poll_s: float = Field(
        1.0, gt=0, le=60, description="how often a replica looks for conversations that no replica answers"
    )

    @field_validator("rate_limit")
    @classmethod
    def _parse_rate(cls, value: str | None) -> str | None:
        return None if value is None else parse_rate(value)


# "50000 tokens", "$2.50" or off, kept as its canonical text.
BudgetText = Annotated[str, AfterValidator(budget_text)]


class BudgetSettings(Section):
    """`[budgets]`: model use allowed per person and per channel; channel settings may override the four limits."""

    user_daily: BudgetText | None = Field(None, description="each person's model use per UTC day: 50000 tokens, $2.50")
    user_monthly: BudgetText | None = Field(None, description="each person's model use per calendar month (UTC)")
    channel_daily: BudgetText | None = Field(None, description="a channel's model use per UTC day")
    channel_monthly: BudgetText | None = Field(None, description="a channel's model use per calendar month (UTC)")
    step_down: str | None = Field(
        None, description="a [models.NAME] that answers over budget; unset: over budget gets a reply saying so"
    )
    exempt_approvers: bool = Field(False, description="approvers ([approvals]) are not held to the budgets")


class ChannelTable(Section):
    """`[channels."KEY"]`: settings of a workspace (slack:T1), a channel (slack:T1/C2, or a console channel name)
    or a thread (slack:T1/C2/THREAD); chat's `/parley channel set` overrides them at the same scope."""

    instructions: str | None = Field(None, description="added to the agent's instructions")
    model: str | None = Field(None, description="a [models.NAME] the answers use (default: [lm])")
    tools: list[str] | None = Field(None, description="the only tools the agent is offered and may call")
    mode: ModeName | None = Field(None, description="how the agent reasons")
    rate_limit: str | None = Field(
        None, description="messages per user in this channel (replaces [dispatch] rate_limit), or off"
    )
    user_daily: BudgetText | None = Field(None, description="overrides [budgets] user_daily here (or off)")
    user_monthly: BudgetText | None = Field(None, description="overrides [budgets] user_monthly here (or off)")
    channel_daily: BudgetText | None = Field(None, description="overrides [budgets] channel_daily here (or off)")
    channel_monthly: BudgetText | None = Field(None, description="overrides [budgets] channel_monthly here (or off)")

    @field_validator("rate_limit")
    @classmethod
    def _rate(cls, value: str | None) -> str | None:
        if value is None:
            return None
        return parse_rate(value) or "off"


class AttachmentSettings(Section):
    """`[attachments]`: how much of what people share reaches the model, and the files a reply posts."""

    max_files: int = Field(
        Limits.max_files, ge=0, le=50, description="files read per message (own first, then its thread's)"
    )
    max_bytes: int = Field(Limits.max_bytes, ge=1, description="a larger file is not downloaded (named in the reply)")
    max_chars: int = Field(
        Limits.max_chars, ge=100, description="characters of all files' text given to the model; the rest is cut"
    )
    timeout_s: float = Field(Limits.timeout_s, gt=0, description="seconds one download, and one conversion, may take")
    max_out_bytes: int = Field(
        Limits.max_out_bytes, ge=1000, description="bytes of files one reply may post (kept with it until delivered)"
    )
    files_dir: Path = Field(Path("data/files"), description="where the console writes the files a reply posts")

    def limits(self) -> Limits:
        return Limits(self.max_files, self.max_bytes, self.max_chars, self.timeout_s, self.max_out_bytes)


class DBSettings(Section):
    url: SecretStr | None = Field(
        None,
        description="a PostgreSQL server, e.g. postgresql://parley:secret@db:5432/parley; unset uses the SQLite file",
    )
    path: Path = Field(Path("data/parley.db"), description="the SQLite file (created with its directory)")
    busy_timeout_ms: int = Field(5000, ge=0, description="how long a write waits for another process's lock")
    pool_size: int = Field(10, ge=1, le=200, description="PostgreSQL connections this process may open")

    @field_validator("url")
    @classmethod
    def _url(cls, value: SecretStr | None) -> SecretStr | None:
        """A URL this code can use, checked before anything connects; the message never repeats the password."""
        if value is None or not value.get_secret_value().strip():
            return None
        from yarl import URL

        text = value.get_secret_value().strip()
        try:
            url = URL(text)
        except ValueError:
            raise ValueError("is not a URL; use postgresql://user:password@host:5432/database") from None
        if url.scheme not in ("postgresql", "postgres"):
            raise ValueError(f"scheme {url.scheme or '(none)'!r} is not postgresql://")
        if not (url.host or url.query.get("host")) or not url.path.strip("/"):
            raise ValueError("needs a host and a database: postgresql://user:password@host:5432/database")
        return SecretStr(text)

    @property
    def url_value(self) -> str | None:
        return self.url.get_secret_value() if self.url is not None else None


class HTTPSettings(Section):
    host: str = Field("127.0.0.1", description="where the HTTP server listens (0.0.0.0 in a container)")
    port: int = Field(8080, ge=0, le=65535, description="its port: Slack events, health, readiness, metrics")


class SlackSettings(Section):
    bot_token: SecretStr | None = Field(None, description="the bot token (xoxb-...); set, it turns Slack on")
    signing_secret: SecretStr | None = Field(None, description="verifies requests to /slack/events (HTTP mode)")
    app_token: SecretStr | None = Field(None, description="with an app token, Socket Mode is used instead of HTTP")
    api_url: str = Field(SlackConfig.api_url, description="Slack's Web API (a test server, a proxy)")
    command: str = Field(SlackConfig.command, pattern=r"^/[a-z0-9_-]+$", description="the slash command's name")
    progress_reaction: str = Field(
        SlackConfig.progress_reaction, description="the reaction on a question while it is answered"
    )
    progress_after_s: float = Field(
        SlackConfig.progress_after_s, ge=0, description="show the reaction only when an answer takes longer"
    )
    answer_edits: bool = Field(SlackConfig.answer_edits, description="answer an edited DM as a new message")
    assistant_status: bool = Field(
        SlackConfig.assistant_status, description="also set the assistant thread status (assistant:write)"
    )
    stream: bool = Field(
        SlackConfig.stream, description="stream answers in their thread as they are produced, tool steps live"
    )

    @field_validator("bot_token")
    @classmethod
    def _bot_token(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and not value.get_secret_value().startswith("xoxb-"):
            raise ValueError("a Slack bot token starts with xoxb-")
        return value

    @field_validator("app_token")
    @classmethod
    def _app_token(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and not value.get_secret_value().startswith("xapp-"):
            raise ValueError("a Slack app token starts with xapp-")
        return value

    @model_validator(mode="after")
    def _mode(self) -> SlackSettings:
        if self.bot_token is not None and self.app_token is None and self.signing_secret is None:
            raise ValueError("HTTP mode needs PARLEY_SLACK__SIGNING_SECRET (or set an app token for Socket Mode)")
        return self


class DiscordSettings(Section):
    token: SecretStr | None = Field(None, description="the bot token; set, it turns Discord on")
    api_url: str = Field(DiscordConfig.api_url, description="Discord's REST API (a test server, a proxy)")
    gateway_url: str = Field(DiscordConfig.gateway_url, description="Discord's gateway websocket")
    prefix: str = Field(
        DiscordConfig.prefix or "", max_length=5, description="prefix commands (!ask ...); empty turns them off"
    )
    command_guild: int | None = Field(None, description="sync slash commands to this guild only (development)")
    stream: bool = Field(
        DiscordConfig.stream, description="edit the reply as it is produced (about once a second), tool steps live"
    )
    # Unsharded, the replicas elect one to hold the gateway; sharded, each runs the shards it is given.
    shard_count: int | None = Field(
        None, ge=1, description="the bot's number of shards; set, this replica runs shard_ids of them (default all)"
    )
    # NoDecode: the environment gives `0,1`, not JSON; `_split_shard_ids` reads it.
    shard_ids: Annotated[list[int] | None, NoDecode] = Field(
        None, description="the shards this replica runs, e.g. 0,1 (each replica its own); needs shard_count"
    )

    @field_validator("shard_ids", mode="before")
    @classmethod
    def _split_shard_ids(cls, value: object) -> object:
        if not isinstance(value, str):
            return value
        text = value.strip().removeprefix("[").removesuffix("]").strip()
        if not text:
            return None
        parts = [part.strip() for part in text.split(",")]
        if not all(part.isdigit() for part in parts):
            raise ValueError(f"{value!r} is not a list of shard ids such as 0,1")
        return [int(part) for part in parts]

    @field_validator("shard_ids")
    @classmethod
    def _shard_ids(cls, value: list[int] | None, info: ValidationInfo) -> list[int] | None:
        if value is None:
            return None
        count = info.data.get("shard_count")
        if count is None:
            raise ValueError("needs PARLEY_DISCORD__SHARD_COUNT, the bot's number of shards")
        if not value:
            raise ValueError("lists no shard: give this replica's, e.g. 0,1")
        outside = [i for i in value if not 0 <= i < count]
        if outside:
            raise ValueError(f"shard {outside[0]} does not exist: shard_count {count} has ids 0 to {count - 1}")
        if len(set(value)) < len(value):
            raise ValueError("lists a shard twice")
        return value


class SentrySettings(Section):
    dsn: SecretStr | None = Field(None, description="send errors to this Sentry project; unset sends nothing")
    environment: str | None = Field(None, description="the Sentry environment of events (production, staging)")


class LogSettings(Section):
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field("WARNING", description="the lowest level logged")
    format: Literal["auto", "json", "console"] = Field(
        "auto", description="json off a terminal and readable on one (auto), or always one of them"
    )


def cron(value: str) -> str:
    """A five-field crontab line (minute hour day month day-of-week; day names such as mon-fri)."""
    fields = value.split()
    # APScheduler counts weekdays from Monday = 0 where crontab counts from Sunday = 0: `1-5` would run Tuesday
    # to Saturday. Names mean the same everywhere.
    if len(fields) == 5 and any(ch.isdigit() for ch in fields[4]):
        raise ValueError(f"{value!r}: write days of the week as names (mon-fri, sun), not numbers")
    # Imported here, like `limits`: only a cron line needs APScheduler.
    from apscheduler.triggers.cron import CronTrigger

    try:
        CronTrigger.from_crontab(value)
    except ValueError as exc:
        raise ValueError(f"{value!r} is not a cron line such as '0 9 * * mon-fri': {exc}") from None
    return " ".join(fields)


Cron = Annotated[str, AfterValidator(cron)]
# Where a post goes: a channel's memory key, `slack:T123/C456`, `discord:GUILD/CHANNEL` or `console:NAME`.
Target = Annotated[str, Field(pattern=r"^(slack|discord|console):\S+$")]


class SchedulerSettings(Section):
    """The job scheduler: one per deployment, so a second replica must set `enabled = false`."""

    enabled: bool = Field(True, description="run scheduled jobs in this process")
    timezone: str = Field("UTC", description="the time zone of every cron line, e.g. Europe/Paris")
    misfire_grace_s: int = Field(300, ge=1, description="a run this late still runs; later ones are skipped")
    prune_cron: Cron = Field("30 3 * * *", description="when old rows are pruned (see [retention])")

    @field_validator("timezone")
    @classmethod
    def _zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"{value!r} is not a time zone such as UTC or Europe/Paris") from None
        return value


class RetentionSettings(Section):
    """How long rows are kept before the prune job deletes them (facts follow `memory.fact_max_age_days`)."""

    turns_days: int = Field(90, ge=1, description="conversation turns")
    chains_days: int = Field(30, ge=1, description="reasoning chains with their steps, and tool executions")
    audit_days: int = Field(365, ge=1, description="the approval audit and decided approval requests")
    inbox_days: int = Field(7, ge=1, description="finished inbox rows (answered and delivered, or failed)")
    job_runs_days: int = Field(90, ge=1, description="the record of scheduled job runs")
    usage_days: int = Field(
        400, ge=1, description="model usage per answer (what budgets and `parley usage` count): a year of reports"
    )


class ExportSettings(Section):
    """The chain export job: new reasoning chains, redacted, to JSON Lines files."""

    enabled: bool = Field(True, description="run the export job")
    dir: Path = Field(Path("data/exports"), description="where the chains-*.jsonl files are written")
    cron: Cron = Field("15 * * * *", description="when new chains are exported")
    max_file_bytes: int = Field(10_000_000, ge=1000, description="a file this big is closed and a new one begun")
    keep_files: int = Field(30, ge=1, description="older export files are deleted")
    grace_s: float = Field(
        60.0,
        ge=0,
        description="chains whose answer ended this recently wait for the next run: with several replicas a "
        "chain can commit after a later one, and the export's mark must not pass it",
    )


class SummarySettings(Section):
    """The metrics summary post: what happened since the previous summary."""

    channels: list[Target] = Field(default_factory=list, description="where to post it; none turns the job off")
    cron: Cron = Field("0 9 * * mon", description="when it is posted")


class ScheduleSettings(Section):
    """A `[[schedules]]` entry: the agent answers `prompt` with the channel's memory, the answer is posted."""

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9_-]*$", description="the job name (parley jobs run NAME)")
    cron: Cron = Field(description="when, e.g. '0 9 * * mon-fri'")
    platform: Literal["slack", "discord", "console"] = Field(description="where the answer is posted")
    channel: str = Field(min_length=1, description="workspace/channel (slack T123/C456, discord GUILD/CHANNEL)")
    prompt: str = Field(min_length=1, description="what the agent is asked, e.g. summarise yesterday's open questions")


class Settings(BaseSettings):
    """Every setting of the service; see the table in DESIGN.md."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter="__",
        case_sensitive=False,
        extra="ignore",
    )

    lm: LMSettings = LMSettings()
    fallback: FallbackSettings = FallbackSettings()
    models: dict[str, ModelSettings] = Field(default_factory=dict)
    breaker: BreakerSettings = BreakerSettings()
    agent: AgentSettings = AgentSettings()
    tools: ToolsSettings = ToolsSettings()
    memory: MemorySettings = MemorySettings()
    approvals: ApprovalSettings = ApprovalSettings()
    dispatch: DispatchSettings = DispatchSettings()
    budgets: BudgetSettings = BudgetSettings()
    channels: dict[str, ChannelTable] = Field(default_factory=dict)
    db: DBSettings = DBSettings()
    http: HTTPSettings = HTTPSettings()
    slack: SlackSettings = SlackSettings()
    discord: DiscordSettings = DiscordSettings()
    sentry: SentrySettings = SentrySettings()
    log: LogSettings = LogSettings()
    scheduler: SchedulerSettings = SchedulerSettings()
    retention: RetentionSettings = RetentionSettings()
    export: ExportSettings = ExportSettings()
    summary: SummarySettings = SummarySettings()
    schedules: list[ScheduleSettings] = Field(default_factory=list)
    mcp: McpSettings = McpSettings()
    attachments: AttachmentSettings = AttachmentSettings()

    @field_validator("models")
    @classmethod
    def _model_names(cls, value: dict[str, ModelSettings]) -> dict[str, ModelSettings]:
        for name in value:
            if not re.fullmatch(NAMED_MODEL, name):
                raise ValueError(f"[models.{name}]: a model name is lowercase letters, digits, - and _ (e.g. fast)")
        return value

    @field_validator("budgets")
    @classmethod
    def _step_down(cls, value: BudgetSettings, info: ValidationInfo) -> BudgetSettings:
        models = info.data.get("models")
        if value.step_down is not None and models is not None and value.step_down not in models:
            raise ValueError(f"[budgets] step_down: {_no_model(value.step_down, models)}")
        return value

    @field_validator("channels")
    @classmethod
    def _channels(cls, value: dict[str, ChannelTable], info: ValidationInfo) -> dict[str, ChannelTable]:
        models = info.data.get("models")
        if models is None:  # invalid themselves: that error is the one reported
            return value
        for scope, table in value.items():
            try:
                scope_chain(scope)
            except InvalidSetting as exc:
                raise ValueError(f"[channels.{scope!r}]: {exc.message}") from None
            if table.model is not None and table.model not in models:
                raise ValueError(f'[channels."{scope}"] model: {_no_model(table.model, models)}')
            try:
                validate_table(table.model_dump(exclude_none=True), models)
            except ValueError as exc:
                raise ValueError(f'[channels."{scope}"] {exc}') from None
        return value

    @field_validator("schedules")
    @classmethod
    def _unique_names(cls, value: list[ScheduleSettings]) -> list[ScheduleSettings]:
        names = [s.name for s in value]
        taken = {n for n in names if names.count(n) > 1} | (set(names) & set(BUILTIN_JOBS))
        if taken:
            raise ValueError(f"schedule names must be unique and not a built-in job: {', '.join(sorted(taken))}")
        return value

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (
            init_settings,
            env_settings,
            AliasEnvSource(settings_cls),
            TomlConfigSettingsSource(settings_cls, toml_file=config_file()),
        )

    @property
    def platforms(self) -> list[str]:
        """The chat platforms that have credentials; empty means the console."""
        found = []
        if self.slack.bot_token:
            found.append("slack")
        if self.discord.token:
            found.append("discord")
        return found


def _no_model(name: str, models: dict[str, ModelSettings]) -> str:
    named = ", ".join(sorted(models)) or "none"
    return f"{name!r} names no [models.{name}] (named models: {named})"


class AliasEnvSource(PydanticBaseSettingsSource):
    """Reads the conventional names (`SLACK_BOT_TOKEN`, ...) below `PARLEY_*` and above the file."""

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        values: dict[str, Any] = {}
        for name, (section, key) in ENV_ALIASES.items():
            value = os.environ.get(name)
            if value:
                values.setdefault(section, {})[key] = value
        return values


def config_file() -> Path | None:
    """The TOML file in force: `PARLEY_CONFIG`, else `./parley.toml` when it exists."""
    explicit = os.environ.get(CONFIG_ENV)
    if explicit:
        return Path(explicit)
    default = Path(DEFAULT_CONFIG_FILE)
    return default if default.is_file() else None


def secret_values(settings: Settings) -> list[str]:
    """Every secret in the settings, so logs, error reports and exports can mask it wherever it appears."""
    found = []

    def walk(value: object) -> None:
        if isinstance(value, SecretStr):
            found.append(value.get_secret_value())
            # A URL's password shows up alone in drivers' messages; it is masked on its own too.
            password = _url_password(value.get_secret_value())
            if password:
                found.append(password)
        elif isinstance(value, dict | list):
            for item in value.values() if isinstance(value, dict) else value:
                walk(item)
        elif isinstance(value, BaseModel):
            for name in type(value).model_fields:
                walk(getattr(value, name))
            for extra in (value.model_extra or {}).values():
                walk(extra)

    walk(settings)
    return found


class SettingsError(Exception):
    """Invalid settings, with a one-line message that names the field."""


def env_name(loc: tuple[str | int, ...]) -> str:
    """The env var that sets a field, e.g. ('lm', 'timeout_s') -> PARLEY_LM__TIMEOUT_S."""
    return ENV_PREFIX + "__".join(str(part).upper() for part in loc)


def load_settings() -> Settings:
    """Load settings, turning every failure into a `SettingsError` with one line naming the field."""
    path = config_file()
    if path is not None and not path.is_file():
        raise SettingsError(f"invalid setting {CONFIG_ENV}: no such file {path}")
    try:
        return Settings()
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = tuple(first["loc"])
        raise SettingsError(
            f"invalid setting {env_name(loc)} ({'.'.join(map(str, loc))}): {first['msg']}"
            + (f" (and {exc.error_count() - 1} more)" if exc.error_count() > 1 else "")
        ) from None
    except tomllib.TOMLDecodeError as exc:
        raise SettingsError(f"invalid settings file {path}: {exc}") from None


def _url_password(text: str) -> str | None:
    if "://" not in text or "@" not in text:
        return None
    from yarl import URL

    try:
        return URL(text).password
    except ValueError:
        return None


def masked(settings: Settings) -> dict[str, Any]:
    """Effective settings as plain data with every secret masked (a database URL keeps all but its password)."""
    data = settings.model_dump(mode="json")
    if settings.db.url is not None:
        from agent.storage import mask_url

        data["db"]["url"] = mask_url(settings.db.url.get_secret_value())
    return data
