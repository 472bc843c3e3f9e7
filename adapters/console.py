"""The console adapter: chat in a terminal, or answer piped stdin one line at a time."""

from __future__ import annotations

import asyncio
import getpass
import sys
from collections.abc import Awaitable, Callable
from typing import TextIO

from agent.messages import IncomingMessage, Reply

Handler = Callable[[IncomingMessage], Awaitable[Reply]]
QUIT_WORDS = frozenset({"/quit", "/exit"})


class ConsoleAdapter:
    """Reads lines, hands each to the handler as a console message, prints the reply.

    On a terminal it shows prompts; with piped input it prints exactly one answer per input line.
    """

    def __init__(
        self,
        handler: Handler,
        *,
        channel: str = "general",
        user: str | None = None,
        stdin: TextIO | None = None,
        stdout: TextIO | None = None,
    ) -> None:
        self.handler = handler
        self.channel = channel
        self.user = user or _login_name()
        self.stdin = stdin or sys.stdin
        self.stdout = stdout or sys.stdout
        self.interactive = self.stdin.isatty() and self.stdout.isatty()
        self._count = 0

    def message(self, text: str) -> IncomingMessage:
        self._count += 1
        return IncomingMessage(
            platform="console",
            channel=self.channel,
            user=self.user,
            text=text,
            message_id=str(self._count),
            is_dm=True,
            mentioned=True,
        )

    async def run(self) -> None:
        if self.interactive:
            self._write(f"Parley console, channel #{self.channel}. Type /quit to leave.\n")
        while True:
            if self.interactive:
                self._write("you> ")
            line = await asyncio.to_thread(self.stdin.readline)
            if not line:
                break
            text = line.rstrip("\n")
            if text.strip() in QUIT_WORDS:
                break
            reply = await self.handler(self.message(text))
            self._write(f"parley> {reply.text}\n" if self.interactive else f"{reply.text}\n")

    def _write(self, text: str) -> None:
        self.stdout.write(text)
        self.stdout.flush()


def _login_name() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "console"
