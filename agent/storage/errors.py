"""The one error hierarchy of the storage seam: callers catch these, never an engine's own exceptions."""

from __future__ import annotations


class StoreError(Exception):
    """The database cannot be used: corrupted, locked, unreachable, refused, or newer than this code. The
    message says which, in one line, without the password."""


class TransientStoreError(StoreError):
    """A failure that may pass if the operation is tried again: a lock, a busy server, a dropped connection.
    Callers retry these (the dispatcher does, with backoff); anything else is a bug or a broken database."""


class ClaimLost(StoreError):
    """This replica no longer holds the conversation's claim (it expired, another replica took it): what it was
    about to write or deliver for that conversation must not happen. Not retried: the new owner goes on."""


class StoreMisconfigured(StoreError):
    """The settings point at a database that refuses them: a wrong password, an unknown user or database. Start-up
    stops with exit code 2, like any invalid setting; retrying cannot help."""
