"""Downloading a shared file from a chat platform, safely: only from the platform's own file hosts, with its
auth, never following a redirect, and never more than the limit (checked against the declared length before
the body is read, and again while it is read).

A redirect is refused rather than followed: the request carries the bot token (Slack), and a redirect to
another host would either leak it or fetch something that is not the platform's file. Both adapters bind
`download` into each `Attachment`'s fetcher (agent/attachments/models.py).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import aiohttp
from yarl import URL

from agent.attachments.models import AttachmentRefused

CHUNK = 64 * 1024


def same_origin(url: URL, allowed: URL) -> bool:
    return (url.scheme, url.host, url.port) == (allowed.scheme, allowed.host, allowed.port)


async def download(
    session: aiohttp.ClientSession,
    url: str,
    max_bytes: int,
    *,
    platform: str,
    allowed: Callable[[URL], bool],
    headers: Mapping[str, str] | None = None,
    timeout_s: float = 60.0,
) -> bytes:
    """The file at `url`, or AttachmentRefused saying why not (in words for the person who shared it)."""
    try:
        target = URL(url)
    except ValueError:
        raise AttachmentRefused(f"{platform} gave no usable address for it") from None
    if not target.is_absolute() or not allowed(target):
        raise AttachmentRefused(f"it is not on {platform}'s own file servers, so Parley did not download it")
    try:
        async with session.get(
            target,
            headers=dict(headers or {}),
            allow_redirects=False,
            timeout=aiohttp.ClientTimeout(total=timeout_s),
        ) as response:
            if 300 <= response.status < 400:
                where = URL(response.headers.get("Location", "")).host or "another address"
                raise AttachmentRefused(
                    f"{platform} sent the download elsewhere ({where}); Parley only downloads from {platform}'s "
                    "own file servers"
                )
            if response.status in (401, 403):
                raise AttachmentRefused(f"{platform} refused Parley access to it (HTTP {response.status})")
            if response.status != 200:
                raise AttachmentRefused(f"{platform} did not serve it (HTTP {response.status})")
            declared = response.content_length
            if declared is not None and declared > max_bytes:
                raise AttachmentRefused(f"it is larger than the {max_bytes:,}-byte limit")
            body = bytearray()
            async for chunk in response.content.iter_chunked(CHUNK):
                body += chunk
                if len(body) > max_bytes:
                    raise AttachmentRefused(f"it is larger than the {max_bytes:,}-byte limit")
            return bytes(body)
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise AttachmentRefused(f"the download from {platform} failed ({type(exc).__name__})") from None
