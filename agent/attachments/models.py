"""What a shared file is to the agent, whatever platform it came from, and what the agent keeps of it.

An `Attachment` is a description (name, media type, declared size, where the platform serves it) plus a `fetch`
bound by the adapter that knows the platform's auth and its file hosts. The description is plain data, stored
with the message in the inbox; the fetcher is not (it holds a session and a token), so after a restart the
platform binds it again (`agent.ports.SharesFiles`). The agent never downloads anything itself.
"""

from __future__ import annotations

import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, fields, replace
from typing import Any

# Given the most bytes Parley will take, the file's bytes; raises AttachmentRefused (a reason to tell the user).
Fetch = Callable[[int], Awaitable[bytes]]

# Where an attachment was found: on the message itself, or on an earlier message of its thread (Slack) or the
# message it replies to (Discord).
ORIGINS = ("message", "thread")


class AttachmentRefused(Exception):
    """The file could not be had or used; `str(exc)` is the reason, worded for the person who shared it."""


@dataclass(frozen=True)
class Attachment:
    """One shared file as the agent sees it."""

    name: str
    media_type: str = "application/octet-stream"
    # As the platform declared it; None when it did not say. The download is checked again, byte by byte.
    size: int | None = None
    url: str = ""
    origin: str = "message"
    fetch: Fetch | None = field(default=None, compare=False, repr=False)

    def bound(self, fetch: Fetch) -> Attachment:
        return replace(self, fetch=fetch)

    def as_dict(self) -> dict[str, Any]:
        """What the inbox keeps: everything but the fetcher."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name != "fetch"}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Attachment:
        known = {f.name for f in fields(cls)} - {"fetch"}
        return cls(**{k: v for k, v in data.items() if k in known})


@dataclass(frozen=True)
class OutFile:
    """A file the reply carries (a query result too long for chat): posted with the reply by the platform."""

    name: str
    content: bytes
    media_type: str = "text/csv"


@dataclass(frozen=True)
class AttachmentRecord:
    """What the reasoning chain keeps of a file: never its content.

    `direction` is `in` (shared with the question) or `out` (posted with the reply); `outcome` is `used`, `cut`
    (only its beginning fitted), `skipped` (not used: `detail` says why), `unseen` (an image the model could not
    look at) or `posted`."""

    name: str
    media_type: str
    size: int | None
    sha256: str
    outcome: str
    detail: str = ""
    direction: str = "in"


@dataclass(frozen=True)
class Limits:
    """How much of what people share reaches the model (`[attachments]` in the settings derive from these)."""

    # Files read per message (its own first, then earlier ones of the thread, newest first).
    max_files: int = 5
    # Bytes per file: a larger declared size is not downloaded, a download that grows past it is stopped.
    max_bytes: int = 10_000_000
    # Characters of converted text given to the model, all files together.
    max_chars: int = 40_000
    # Seconds one download and one conversion may each take.
    timeout_s: float = 30.0
    # Bytes of files one reply may post; they are stored with the reply until delivered.
    max_out_bytes: int = 1_000_000


class Outbox:
    """The files a reply will carry, collected while the agent answers (a tool posts into it; see
    `agent.tools.context.ToolContext.files`). Bounded: a file that would pass `max_bytes` in all is refused."""

    def __init__(self, max_bytes: int = Limits.max_out_bytes) -> None:
        self.max_bytes = max_bytes
        self._files: list[OutFile] = []
        # Tools run on worker threads; the byte count and the list change together.
        self._lock = threading.Lock()

    def post_file(self, name: str, content: bytes, media_type: str = "text/csv") -> str | None:
        """Add a file to the reply; returns the name it goes out under (unique in the reply), or None when it
        would pass the reply's byte limit (the caller says so instead). The same content twice is posted once."""
        with self._lock:
            if any(f.content == content for f in self._files):
                return next(f.name for f in self._files if f.content == content)
            if sum(len(f.content) for f in self._files) + len(content) > self.max_bytes:
                return None
            taken = {f.name for f in self._files}
            stem, dot, ext = name.rpartition(".") if "." in name else (name, "", "")
            unique, n = name, 1
            while unique in taken:
                n += 1
                unique = f"{stem}-{n}{dot}{ext}"
            self._files.append(OutFile(unique, content, media_type))
            return unique

    @property
    def files(self) -> tuple[OutFile, ...]:
        with self._lock:
            return tuple(self._files)
