"""What every adapter's edge shares: text made safe, and warnings about bad input that cannot flood the log.

Everything from outside passes one validating step at the edge (STYLE.md 9): the platform's pydantic models
take `CleanStr` for every text they keep, so nothing past the adapter can fail on an encoding.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Annotated

from pydantic import AfterValidator, ValidationError

from agent.messages import clean_text

# A string from outside, repaired on the way in (see `clean_text`).
CleanStr = Annotated[str, AfterValidator(clean_text)]


def describe(exc: BaseException) -> str:
    """An exception in one short line for a warning: its type and the start of its message (no traceback)."""
    text = str(exc).replace("\n", " ")
    return f"{type(exc).__name__}: {text[:120]}" if text else type(exc).__name__


def problems(exc: ValidationError) -> str:
    """Where a model failed and why, without the values (they are user content)."""
    return "; ".join(
        f"{'.'.join(str(part) for part in error['loc']) or 'value'}: {error['msg']}"
        for error in exc.errors(include_url=False, include_input=False)[:5]
    )


class QuietLog:
    """At most one log line per source per interval: an anonymous sender of bad requests cannot fill the log.

    Sources are remembered in a bounded table (oldest forgotten first), so many sources cannot fill memory.
    """

    def __init__(
        self,
        logger: logging.Logger,
        *,
        interval_s: float = 60.0,
        max_sources: int = 4096,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.logger = logger
        self.interval_s = interval_s
        self.max_sources = max_sources
        self.clock = clock
        self._last: OrderedDict[str, float] = OrderedDict()
        self.suppressed = 0

    def warning(self, source: str, message: str, *args: object) -> bool:
        """Log the warning unless this source was logged within the interval; True when it was logged."""
        now = self.clock()
        last = self._last.get(source)
        if last is not None and now - last < self.interval_s:
            self.suppressed += 1
            return False
        self._last[source] = now
        self._last.move_to_end(source)
        while len(self._last) > self.max_sources:
            self._last.popitem(last=False)
        self.logger.warning(message, *args)
        return True


__all__ = ("CleanStr", "QuietLog", "describe", "problems")
