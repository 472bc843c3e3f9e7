"""Parking: a run that waits for a person gives back the capacity it holds, and takes it again to go on.

A run holds capacity in layers (a dispatcher slot, an agent slot), each a `Lease` on a semaphore. While an
approval is pending the run needs neither: `parked()` releases every lease of the current run, so a few
pending approvals cannot freeze every other conversation, and takes them back (waiting in line like any new
message) once the decision lands. The run's own state (its trajectory so far) stays where it is, in the
suspended coroutine.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from contextvars import ContextVar


class Lease:
    """One run's hold on one semaphore; giving or taking twice does nothing, so branches of one run (vote
    mode's voters) may park and resume in any order without the semaphore being released or taken twice:
    the run holds its slot while any branch is running, as it did before parking."""

    def __init__(self, semaphore: asyncio.Semaphore) -> None:
        self.semaphore = semaphore
        self.held = False

    async def take(self) -> None:
        if not self.held:
            await self.semaphore.acquire()
            self.held = True

    def give(self) -> None:
        if self.held:
            self.held = False
            self.semaphore.release()


_leases: ContextVar[tuple[Lease, ...]] = ContextVar("parley_leases", default=())


@asynccontextmanager
async def held(lease: Lease) -> AsyncIterator[Lease]:
    """`async with held(Lease(slots)):` hold a slot for the block, one that `parked()` inside can give back."""
    await lease.take()
    token = _leases.set((*_leases.get(), lease))
    try:
        yield lease
    finally:
        _leases.reset(token)
        lease.give()


@asynccontextmanager
async def parked() -> AsyncIterator[None]:
    """Give back every slot the current run holds for the block; take them back, in order, after it.

    A run cancelled while parked takes nothing back; one cancelled while it waits to take a slot back does not
    hold the slots it did not get; either way nothing is released twice when it unwinds.
    """
    leases = _leases.get()
    for lease in leases:
        lease.give()
    cancelled = False
    try:
        yield
    except asyncio.CancelledError:
        cancelled = True  # the run is unwinding: it needs no slot
        raise
    finally:
        if not cancelled:
            for lease in leases:
                await lease.take()


__all__ = ("Lease", "held", "parked")
