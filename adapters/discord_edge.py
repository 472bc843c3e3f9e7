"""Discord's edge: what the gateway sends is checked before Parley acts on it, and an event discord.py cannot
parse no longer ends the connection.

discord.py parses each gateway dispatch in a `ConnectionState.parse_*` method, called from the websocket's
receive loop (`DiscordWebSocket.received_message`). An exception there (a MESSAGE_CREATE without `author`,
`attachments` given as a string) escaped `Client.connect()` and ended the bot's only connection without a word.
`guard_parsers` wraps those methods: a dispatch discord.py cannot parse is dropped with one quiet warning naming
its event type, and the connection goes on. Slash commands are checked by `ParleyTree.interaction_check` (the
tree's own hook, run before it reads the command) so the few errors discord.py's tree does not catch cannot
escape its task either. (A frame discord.py cannot even decode still ends its connection task: the adapter's
`_connect` then opens a new connection.)

What discord.py did parse is read through pydantic models of the fields Parley uses, from the library's objects
(`from_attributes`, so everything else on them is ignored): ids must be positive 64-bit integers, flags booleans,
text a string, repaired by `clean_text`. A message that fails is dropped with a quiet warning.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any, Literal

import discord
from discord import app_commands
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    StrictStr,
    ValidationError,
    model_validator,
)

from adapters.edge import CleanStr, QuietLog, describe, problems

Parser = Callable[[Any], None]

# discord.py has already turned ids into ints; one that is not positive or does not fit Discord's 64 bits is
# not Discord's.
Snowflake = Annotated[StrictInt, Field(gt=0, lt=1 << 64)]
# Ids as they come in a raw payload, which discord.py turns into ints with `int(...)`.
RawSnowflake = Annotated[StrictStr, Field(pattern=r"^[0-9]{1,20}$")] | Snowflake


# Gateway events ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class GuardedParser:
    """One of discord.py's parsers, made unable to raise: what it cannot parse is dropped and warned about."""

    event: str
    parse: Parser
    warn: QuietLog

    def __call__(self, data: Any) -> None:
        try:
            self.parse(data)
        except Exception as exc:
            self.warn.warning(
                f"event:{self.event}",
                "dropped a Discord %s event that discord.py could not parse (%s)",
                self.event,
                describe(exc),
            )


def guard_parsers(parsers: dict[str, Parser], warn: QuietLog) -> None:
    """Wrap every parser in the table in place. discord.py's websocket uses this very dict (it takes
    `client._connection.parsers` when it connects), so every connection, reconnects included, is guarded.
    tests/test_discord_fuzz.py pins that assumption against the installed discord.py."""
    for event, parse in list(parsers.items()):
        if not isinstance(parse, GuardedParser):
            parsers[event] = GuardedParser(event, parse, warn)


# Messages ------------------------------------------------------------------------------------------------


class _Read(BaseModel):
    """Read from a discord.py object's attributes: only the fields named, each checked."""

    model_config = ConfigDict(from_attributes=True, frozen=True)


class DiscordUser(_Read):
    id: Snowflake
    bot: StrictBool = False


class DiscordRole(_Read):
    id: Snowflake


# A guild has at most 250 roles.
MAX_ROLES = 250


class DiscordAuthor(DiscordUser):
    """A message's author: a guild member has roles (approvers may be named by role), a DM's author none."""

    roles: list[DiscordRole] = Field(default_factory=list, max_length=MAX_ROLES)


class DiscordGuild(_Read):
    id: Snowflake


class DiscordChannel(_Read):
    id: Snowflake
    # Only a channel discord.py has no guild for (a `PartialMessageable`) carries it; a DM channel has none.
    guild_id: Snowflake | None = None
    # Only a thread (discord.py's `Thread`) has one: the channel it belongs to, whose settings apply in it.
    parent_id: Snowflake | None = None


class DiscordAttachment(_Read):
    """A file on a message (discord.py's `Attachment`): its CDN URL is signed, so it is fetched without a token."""

    id: Snowflake
    filename: CleanStr
    size: Annotated[StrictInt, Field(ge=0)]
    url: StrictStr
    content_type: StrictStr | None = None


# Discord allows 10 files on a message.
MAX_ATTACHMENTS = 10


class RepliedTo(_Read):
    """The message a message replies to (`message.reference.resolved`): only its files are used."""

    attachments: list[DiscordAttachment] = Field(default_factory=list, max_length=MAX_ATTACHMENTS)


class DiscordMessage(_Read):
    """The fields of a discord.py `Message` that become an `IncomingMessage`."""

    id: Snowflake
    channel: DiscordChannel
    guild: DiscordGuild | None
    author: DiscordAuthor
    content: CleanStr
    mentions: list[DiscordUser]
    attachments: list[DiscordAttachment] = Field(default_factory=list, max_length=MAX_ATTACHMENTS)

    @property
    def guild_id(self) -> int | None:
        """The guild, also when discord.py does not know it (its GUILD_CREATE was dropped): such a message is
        not a DM, even though `message.guild` is None."""
        return self.guild.id if self.guild is not None else self.channel.guild_id

    def mentions_user(self, user_id: int) -> bool:
        return any(user.id == user_id for user in self.mentions)


# Slash commands ------------------------------------------------------------------------------------------


class DiscordInteraction(_Read):
    """The fields of a command's `Interaction` that Parley uses: checked for every command, since its token goes
    into the URL of every answer."""

    id: Snowflake
    application_id: Snowflake
    # Goes into the follow-up webhook's URL path.
    token: Annotated[StrictStr, Field(pattern=r"^[A-Za-z0-9._-]{1,512}$")]
    guild_id: Snowflake | None
    channel_id: Snowflake | None
    # The channel as discord.py knows it (from its cache or the interaction's own data): a thread's parent.
    channel: DiscordChannel | None = None
    user: DiscordUser


class SlashCommand(_Read):
    """A slash command: the interaction and its options' text (`/ask`'s question, `/channel`'s action, key and
    value), which discord.py passes on as it came."""

    interaction: DiscordInteraction
    text: CleanStr


class _Payload(BaseModel):
    """Part of a raw payload: tolerant of the fields Discord adds, strict about the ones read."""

    model_config = ConfigDict(frozen=True)


# The option types Parley's commands use: subcommands and plain values. None takes a user, role, channel or
# file, whose `resolved` data discord.py would parse in the tree's task, outside any error handler.
_VALUE_TYPES: dict[int, tuple[type, ...]] = {3: (str,), 4: (int,), 5: (bool,), 10: (int, float)}


class CommandOption(_Payload):
    name: StrictStr
    type: Literal[1, 2, 3, 4, 5, 10]
    value: StrictStr | StrictBool | StrictInt | StrictFloat | None = None
    focused: StrictBool = False
    options: list[CommandOption] = []

    @model_validator(mode="after")
    def _value_fits_type(self) -> CommandOption:
        expected = _VALUE_TYPES.get(self.type)
        if expected is not None and (
            not isinstance(self.value, expected) or (isinstance(self.value, bool) and self.type != 5)
        ):
            raise ValueError(f"an option of type {self.type} needs a value of that type")
        return self


class CommandData(_Payload):
    """An application command's `data`, as discord.py's tree reads it before any error handler is in place."""

    name: StrictStr
    type: Literal[1] = 1  # slash commands: Parley registers no context menus
    guild_id: RawSnowflake | None = None
    options: list[CommandOption] = []
    resolved: dict[str, Any] = Field(default_factory=dict, max_length=0)


# The errors a command meets because of what it was sent or how late it came, not because of a bug of ours.
_INPUT_ERRORS = (
    app_commands.CommandNotFound,
    app_commands.CommandSignatureMismatch,
    app_commands.TransformerError,
    discord.HTTPException,
    discord.InteractionResponded,
)


class ParleyTree(app_commands.CommandTree[discord.Client]):
    """The slash command tree, through discord.py's own hooks: a command whose data does not fit is refused
    before the tree reads it, and what a sender (or a late acknowledgement) causes is one quiet warning, not a
    traceback. A bug of ours still goes to discord.py's handler, traceback and all."""

    def __init__(self, client: discord.Client, *, warn: QuietLog) -> None:
        super().__init__(client)
        self.warn = warn

    async def interaction_check(self, interaction: discord.Interaction, /) -> bool:
        if interaction.type is not discord.InteractionType.application_command:  # autocomplete: we offer none
            self.warn.warning("command:type", "refused a Discord %s interaction", interaction.type)
            return False
        try:
            DiscordInteraction.model_validate(interaction)
            CommandData.model_validate(interaction.data)
        except ValidationError as exc:
            self.warn.warning("command:data", "refused a Discord command that does not validate (%s)", problems(exc))
            return False
        return True

    async def on_error(self, interaction: discord.Interaction, error: app_commands.AppCommandError, /) -> None:
        cause = error.original if isinstance(error, app_commands.CommandInvokeError) else error
        if isinstance(cause, _INPUT_ERRORS):
            self.warn.warning(
                f"command:{type(cause).__name__}", "a Discord command was not answered (%s)", describe(cause)
            )
            return
        await super().on_error(interaction, error)
