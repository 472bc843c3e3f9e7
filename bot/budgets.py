"""Budgets: how much model use a person or a channel may have per day and per month, in tokens or dollars.

A budget is checked before the agent is asked (so an answer over budget costs no model call): the usage the
storage recorded since the period began (00:00 UTC today, the 1st of the month at 00:00 UTC) against the limit.
Over a budget, the person is told which budget, how much was used and when it resets; or, with `step_down`
configured, the answer runs on that cheaper model instead.

A person's budget set for a channel (or a thread of it) counts what they used in that channel; one set for a
workspace or in `[budgets]` counts what they used anywhere. A channel's budget counts everyone's use of it, its
threads included (a Discord thread's use counts in its parent channel).
"""

from __future__ import annotations

import logging
import math
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Literal

from agent.messages import IncomingMessage, Reply
from agent.profile import ChannelProfile

if TYPE_CHECKING:
    from agent.storage.base import Usage
    from agent.storage.models import UsageTotal

log = logging.getLogger("parley.budgets")

OFF = ("", "off", "none")
_TOKENS = re.compile(r"^(?P<n>\d[\d,_]*)\s*(?:tokens?)$", re.I)
# "$1,500.00" is how a dollar budget is shown (`Budget.figure`): it must read back as what it shows.
_DOLLARS = re.compile(r"^(?:\$\s*(?P<a>\d[\d,_]*(?:\.\d+)?)|(?P<b>\d[\d,_]*(?:\.\d+)?)\s*(?:usd|\$))$", re.I)
Unit = Literal["tokens", "usd"]
# Each form a budget is written in, its unit, and the smallest amount it can be (a dollar budget shows cents).
_FORMS: tuple[tuple[re.Pattern[str], Unit, float], ...] = ((_TOKENS, "tokens", 1.0), (_DOLLARS, "usd", 0.01))


@dataclass(frozen=True)
class Budget:
    """A limit on the usage of one period: `amount` tokens, or `amount` US dollars of model cost."""

    amount: float
    unit: Unit

    def __str__(self) -> str:
        return self.quantity(self.amount)

    def quantity(self, value: float) -> str:
        """A figure in this budget's unit: "51,200 tokens", "$2.61"."""
        return f"{self.figure(value)} tokens" if self.unit == "tokens" else self.figure(value)

    def figure(self, value: float) -> str:
        """A figure as a reply puts it beside the budget: "51,200", "$2.61"."""
        return f"{value:,.0f}" if self.unit == "tokens" else f"${value:,.2f}"

    def used(self, total: UsageTotal) -> float:
        """What a usage total counts against this budget. Answers whose price is unknown cost nothing here:
        a dollar budget limits only what the model client could price."""
        return float(total.tokens) if self.unit == "tokens" else float(total.cost or 0.0)


def parse_budget(text: str) -> Budget | None:
    """ "50000 tokens" (or 50,000 / 50_000), "$2.50" (or "2.50 usd"), or off; ValueError with the forms."""
    value = text.strip()
    if value.lower() in OFF:
        return None
    for pattern, unit, smallest in _FORMS:
        found = pattern.match(value)
        if found:
            number = next(group for group in found.groups() if group)
            amount = float(number.replace(",", "").replace("_", ""))
            if math.isfinite(amount) and amount >= smallest:
                return Budget(amount, unit)
    raise ValueError(f"{text!r} is not a budget such as 50000 tokens or $2.50 (or off)")


def budget_text(text: str) -> str:
    """A budget as settings keep it: its canonical text ("50,000 tokens", "$2.50", "off")."""
    budget = parse_budget(text)
    return "off" if budget is None else str(budget)


Period = Literal["daily", "monthly"]
Whose = Literal["user", "channel"]
# The budget keys of settings and channel settings, in the order they are checked.
BUDGET_KEYS: tuple[tuple[str, Whose, Period], ...] = (
    ("user_daily", "user", "daily"),
    ("user_monthly", "user", "monthly"),
    ("channel_daily", "channel", "daily"),
    ("channel_monthly", "channel", "monthly"),
)


@dataclass(frozen=True)
class Budgets:
    """The budgets in force for one message (after channel settings), and what happens over one."""

    user_daily: Budget | None = None
    user_monthly: Budget | None = None
    channel_daily: Budget | None = None
    channel_monthly: Budget | None = None
    # A named model (`[models.NAME]`) the answer runs on over budget; None: the answer is refused.
    step_down: str | None = None
    exempt_approvers: bool = False
    # The user budgets (`user_daily`, `user_monthly`) set for the message's channel or a thread of it: they count
    # the person's use of that channel only.
    in_channel: frozenset[str] = frozenset()

    @property
    def any(self) -> bool:
        return any(getattr(self, key) is not None for key, _, _ in BUDGET_KEYS)


def period_bounds(period: Period, now: float) -> tuple[float, float]:
    """When the period holding `now` began and when it ends, in UTC: the day, or the calendar month."""
    moment = datetime.fromtimestamp(now, UTC)
    day = moment.replace(hour=0, minute=0, second=0, microsecond=0)
    if period == "daily":
        return day.timestamp(), day.timestamp() + 86400
    start = day.replace(day=1)
    end = start.replace(year=start.year + 1, month=1) if start.month == 12 else start.replace(month=start.month + 1)
    return start.timestamp(), end.timestamp()


def wait_text(seconds: float) -> str:
    """A wait as people say it: "12 min", "3 h 12 min", "12 d 4 h"."""
    minutes = max(1, int(seconds // 60))
    if minutes < 60:
        return f"{minutes} min"
    hours, minutes = divmod(minutes, 60)
    if hours < 24:
        return f"{hours} h {minutes} min" if minutes else f"{hours} h"
    days, hours = divmod(hours, 24)
    return f"{days} d {hours} h" if hours else f"{days} d"


@dataclass(frozen=True)
class Standing:
    """Where a message stands against one budget: which, its limit, the usage so far, and when the period ends."""

    whose: Whose
    period: Period
    budget: Budget
    used: float
    resets_at: float
    # A person's budget for this channel only.
    in_channel: bool = False

    @property
    def over(self) -> bool:
        return self.used >= self.budget.amount

    def reply_text(self, now: float) -> str:
        owner = "your" if self.whose == "user" else "this channel's"
        where = " in this channel" if self.in_channel else ""
        reset = datetime.fromtimestamp(self.resets_at, UTC)
        when = "at 00:00 UTC" if self.period == "daily" else f"on {reset.day} {reset:%B} at 00:00 UTC"
        return (
            f"You've used {owner} {self.period} budget{where} of {self.budget} ({self.budget.figure(self.used)} used). "
            f"It resets {when}, in {wait_text(self.resets_at - now)}."
        )


class BudgetGuard:
    """Checks a message's budgets against the usage recorded in storage, before the agent is asked."""

    def __init__(
        self,
        usage: Usage,
        *,
        is_approver: Callable[[IncomingMessage], bool] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.usage = usage
        self.is_approver = is_approver
        self.clock = clock

    async def standing(self, message: IncomingMessage, budgets: Budgets, whose: Whose | None = None) -> list[Standing]:
        """Each budget in force (of `whose` only, when given), with what the sender, or the message's channel,
        used of it this period. A person's budget set for the channel counts only their use of the channel."""
        now = self.clock()
        user = f"{message.platform}:{message.user}"
        channel = message.conversation.settings_channel
        found: list[Standing] = []
        for key, owner, period in BUDGET_KEYS:
            budget: Budget | None = getattr(budgets, key)
            if budget is None or whose not in (None, owner):
                continue
            start, end = period_bounds(period, now)
            in_channel = owner == "user" and key in budgets.in_channel
            if owner == "user":
                total = await self.usage.spent(since=start, user=user, channel=channel if in_channel else None)
            else:
                total = await self.usage.spent(since=start, channel=channel)
            found.append(Standing(owner, period, budget, budget.used(total), end, in_channel))
        return found

    async def exceeded(self, message: IncomingMessage, budgets: Budgets) -> Standing | None:
        """The used-up budget that resets last (the one that decides when the person can go on), or None."""
        over = [s for s in await self.standing(message, budgets) if s.over]
        return max(over, key=lambda s: s.resets_at) if over else None

    async def check(
        self, message: IncomingMessage, budgets: Budgets, profile: ChannelProfile
    ) -> ChannelProfile | Reply:
        """The profile to answer with (on the step-down model when over budget and one is set), or the reply
        that refuses the message (status "limited")."""
        if not budgets.any:
            return profile
        if budgets.exempt_approvers and self.is_approver is not None and self.is_approver(message):
            return profile
        over = await self.exceeded(message, budgets)
        if over is None:
            return profile
        if budgets.step_down is not None:
            log.info("over the %s %s budget; answering on %s", over.whose, over.period, budgets.step_down)
            return replace(profile, model=budgets.step_down)
        return Reply(over.reply_text(self.clock()), status="limited")
