"""The adapters' options: what each platform's adapter is built with, and their defaults.

They live apart from the adapters (which import slack-bolt and discord.py) so the settings can take their defaults
from here cheaply: each default is written once, here, and `bot/config.py` reads it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

# Discord's REST API and gateway.
DEFAULT_API = "https://discord.com/api/v10"
DEFAULT_GATEWAY = "wss://gateway.discord.gg/"


@dataclass(frozen=True)
class SlackConfig:
    bot_token: str
    signing_secret: str
    app_token: str | None = None
    api_url: str = "https://slack.com/api/"
    command: str = "/parley"
    progress_reaction: str = "eyes"
    # The reaction appears only when an answer takes longer than this: a quick answer needs no sign of
    # progress, and two fewer calls per message keep Parley inside Slack's rate limit for reactions.
    progress_after_s: float = 1.0
    # Answer an edited DM as a new message (edits are otherwise ignored, like deletions).
    answer_edits: bool = False
    # Also show "is thinking..." as the assistant thread status (apps with the assistant:write scope).
    assistant_status: bool = False
    # Stream replies in their thread while they are produced, tool steps as task cards (adapters/slack_stream.py).
    stream: bool = True


@dataclass(frozen=True)
class DiscordConfig:
    token: str
    api_url: str = DEFAULT_API
    gateway_url: str = DEFAULT_GATEWAY
    # Prefix commands (`!ask ...`) in guild channels; None turns them off.
    prefix: str | None = "!"
    # Sync the slash commands to this guild only (instant, for development) instead of globally.
    command_guild: int | None = None
    # How long discord.py waits for the guilds after READY before `on_ready` (its default is 2 s).
    ready_timeout_s: float = 2.0
    # Where the fingerprint of the last synced command set is kept: commands are synced when it changes.
    command_state: Path | None = None
    # When discord.py's connection task ends on an error it does not handle, a new connection is opened after
    # this delay, doubled with each failure in a row up to `reconnect_max_s`.
    reconnect_delay_s: float = 1.0
    reconnect_max_s: float = 60.0
    # Sharding: this process runs `shard_ids` (all of them when None) of `shard_count` shards.
    shard_count: int | None = None
    shard_ids: tuple[int, ...] | None = None
    # Edit the reply while it is produced, tool steps as a status line (adapters/discord_stream.py).
    stream: bool = True
