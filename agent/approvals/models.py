"""What an approval is: the request bound to one exact call, who may decide it, and the outcome of a decision."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any


class ApprovalState(StrEnum):
    PENDING = "pending"
    APPROVED = "approved"
    DENIED = "denied"
    EXPIRED = "expired"


def args_hash(tool: str, args: Mapping[str, Any]) -> str:
    """The fingerprint a decision must carry: the tool and its arguments, canonically encoded."""
    canonical = json.dumps({"tool": tool, "args": args}, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()


@dataclass(frozen=True)
class PromptLocation:
    """Where a request's prompt was posted. It is stored with the request, so whichever process settles the
    request (or expires it after a restart) can take the buttons off that prompt."""

    platform: str
    channel: str  # the platform's own channel id
    message: str  # Slack's message ts, Discord's message id


@dataclass(frozen=True)
class ApprovalRequest:
    """One call waiting for a person. `id` is unguessable: it is what a button or a prompt carries."""

    id: str
    tool: str
    args: dict[str, Any]
    args_hash: str
    level: str  # confirm | approve
    platform: str
    channel: str
    thread: str
    requester: str
    created_at: float
    expires_at: float
    run_id: str = ""
    state: ApprovalState = ApprovalState.PENDING
    decided_by: str | None = None
    reason: str = ""
    prompt: PromptLocation | None = None

    @property
    def outcome(self) -> str:
        """How the request ended, as its prompt shows it afterwards: "approved by slack:U1", "expired (restart)"."""
        if self.state in (ApprovalState.APPROVED, ApprovalState.DENIED):
            return f"{self.state.value} by {self.decided_by}"
        if self.state is ApprovalState.EXPIRED:
            return f"expired ({self.reason})" if self.reason else "expired"
        return "waiting for a decision"

    def describe_call(self) -> str:
        """`tool(name=value, ...)` as shown to the person deciding."""
        shown = ", ".join(f"{k}={v!r}" for k, v in self.args.items())
        return f"{self.tool}({shown})"


@dataclass(frozen=True)
class Decision:
    """One person's answer to an approval prompt, as the platform's click carried it: passed unchanged from the
    adapter through the dispatcher to the broker, which checks every field before it settles anything.

    `args_hash` is the fingerprint the prompt showed (all of it, or where a button id is short, its start);
    `always` also grants the tool in the channel from now on; `roles` are the person's role ids (Discord).
    `channel` is the memory key of the channel the click came from and `parent` the key of the channel that one is
    a thread of (Discord), so a thread's prompt is decided by its parent channel's approvers."""

    request_id: str
    platform: str
    user: str
    approve: bool
    args_hash: str
    always: bool = False
    roles: tuple[str, ...] = ()
    channel: str = ""
    parent: str = ""

    @property
    def actor(self) -> str:
        """Who decided, as the audit names them: `platform:user`."""
        return f"{self.platform}:{self.user}"


@dataclass(frozen=True)
class Verdict:
    """What a person's decision came to: `accepted` when it settled the request, else `reason` says why not."""

    accepted: bool
    reason: str
    state: ApprovalState | None = None

    @property
    def refusal(self) -> str:
        """What the person who clicked is told when their decision did not count."""
        return f"You cannot do that: {self.reason}."


@dataclass(frozen=True)
class ApprovalPolicy:
    """Who may decide, from settings.

    `approvers` lists user ids per platform; `channel_approvers` lists them for one channel (its memory key),
    and where a channel has a list only those people approve there. `confirm` calls may be decided by the
    person who asked or an approver; `approve` calls only by an approver, never by the person who asked
    unless `allow_self_approval`. On the console the person at the terminal is the operator: an approver
    who may approve their own calls.
    """

    approvers: Mapping[str, Sequence[str]] = field(default_factory=dict)
    # Role ids whose members approve, per platform (Discord roles).
    approver_roles: Mapping[str, Sequence[str]] = field(default_factory=dict)
    channel_approvers: Mapping[str, Sequence[str]] = field(default_factory=dict)
    allow_self_approval: bool = False
    expiry_s: float = 300.0
    # How many of one person's answers may wait for approvals at once; a further one is refused (parked runs
    # hold no slot, so without a cap one person could keep any number of them open).
    max_waiting_per_user: int = 3

    def is_approver(
        self, platform: str, channel: str, user: str, roles: Sequence[str] = (), *, parent: str = ""
    ) -> bool:
        """A channel's list (user or role ids) decides there; in a thread-channel without a list of its own, its
        `parent` channel's list; elsewhere the platform's users and roles."""
        if platform == "console":
            return True
        listed = self.channel_approvers.get(channel)
        if listed is None and parent:
            listed = self.channel_approvers.get(parent)
        if listed is not None:
            return user in listed or any(role in listed for role in roles)
        return user in self.approvers.get(platform, ()) or any(
            role in self.approver_roles.get(platform, ()) for role in roles
        )

    def may_decide(
        self, request: ApprovalRequest, platform: str, user: str, roles: Sequence[str] = (), *, parent: str = ""
    ) -> str | None:
        """None when `user` (holding `roles`) may decide the request, else the reason they may not. `parent` is
        the channel the request's channel is a thread of, when it is one."""
        if platform != request.platform:
            return "decisions come from the platform the request was made on"
        approver = self.is_approver(platform, request.channel, user, roles, parent=parent)
        own = user == request.requester
        if request.level == "confirm":
            return None if own or approver else "only the person who asked, or an approver, can decide this"
        if not approver:
            return "you are not an approver for this channel"
        if own and not (self.allow_self_approval or platform == "console"):
            return "you asked for this call, so another approver must decide it"
        return None
