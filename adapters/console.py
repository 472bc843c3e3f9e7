"""The console adapter: chat in a terminal, or answer piped stdin one line at a time.

Like every adapter it hands messages to the dispatcher (`submit`) and gets replies back through `deliver`.
"""

from __future__ import annotations

import asyncio
import getpass
import sys
import threading
import time
import uuid
from typing import TextIO

from agent.approvals import ApprovalRequest, PromptLocation
from agent.messages import IncomingMessage, Reply
from agent.ports import Decide, Submit

ANSWERS = {"y": (True, False), "yes": (True, False), "a": (True, True), "always": (True, True)}
QUIT_WORDS = frozenset({"/quit", "/exit"})


class ConsoleAdapter:
    """Reads lines, submits each as a console message, prints each reply as it is delivered.

    On a terminal it shows prompts and waits for each answer; with piped input it submits every line and
    prints exactly one answer per input line, in order, before it returns.
    """

    name = "console"
    # A reply cannot reach a terminal session that has ended.
    resumable = False

    def __init__(
        self,
        *,
        channel: str = "general",
        user: str | None = None,
        auto_approve: bool = False,
        stdin: TextIO | None = None,
        stdout: TextIO | None = None,
    ) -> None:
        self.channel = channel
        self.auto_approve = auto_approve
        self.user = user or _login_name()
        self.stdin = stdin or sys.stdin
        self.stdout = stdout or sys.stdout
        self.interactive = self.stdin.isatty() and self.stdout.isatty()
        self._session = uuid.uuid4().hex[:12]
        self._count = 0
        self._waiting: dict[str, asyncio.Future[None]] = {}
        self._lines: asyncio.Queue[str] | None = None
        self._decide: Decide | None = None
        self._prompts: dict[str, asyncio.Task[None]] = {}

    def message(self, text: str) -> IncomingMessage:
        self._count += 1
        return IncomingMessage(
            platform=self.name,
            channel=self.channel,
            user=self.user,
            text=text,
            message_id=str(self._count),
            # Unique across sessions: the inbox drops an event key it has seen before.
            event_id=f"{self._session}-{self._count}",
            is_dm=True,
            mentioned=True,
        )

    async def run(self, submit: Submit, decide: Decide | None = None) -> None:
        """Read until end of input or /quit; `decide` takes the answers to approval prompts."""
        self._decide = decide
        if self.interactive:
            self._write(f"Parley console, channel #{self.channel}. Type /quit to leave.\n")
        lines = self._lines = self._read_lines()
        while True:
            if self.interactive:
                self._write("you> ")
            line = await lines.get()
            if not line:
                break
            text = line.rstrip("\n")
            if text.strip() in QUIT_WORDS:
                break
            message = self.message(text)
            answered = self._waiting[message.event_id] = asyncio.get_running_loop().create_future()
            await submit(message)
            if self.interactive:
                await answered
        await asyncio.gather(*self._waiting.values())

    def _read_lines(self) -> asyncio.Queue[str]:
        """Lines of stdin ("" at the end), read by a daemon thread: a thread blocked in `readline` must not
        keep the process alive after SIGTERM, as a thread of asyncio's default executor would."""
        loop = asyncio.get_running_loop()
        lines: asyncio.Queue[str] = asyncio.Queue()

        def read() -> None:
            while True:
                line = self.stdin.readline()
                try:
                    loop.call_soon_threadsafe(lines.put_nowait, line)
                except RuntimeError:  # the loop has closed
                    return
                if not line:
                    return

        threading.Thread(target=read, name="console-stdin", daemon=True).start()
        return lines

    async def post(self, channel: str, text: str) -> None:
        """A scheduled post (a report, the metrics summary) printed in the terminal, named by its channel."""
        self._write(f"\n[#{channel.removeprefix('console:')}] {text}\n")

    async def deliver(self, message: IncomingMessage, reply: Reply, key: str) -> None:
        self._write(f"parley> {reply.text}\n" if self.interactive else f"{reply.text}\n")
        waiting = self._waiting.pop(message.event_id, None)
        if waiting is not None and not waiting.done():
            waiting.set_result(None)

    async def request_approval(self, request: ApprovalRequest) -> PromptLocation | None:
        """On a terminal, ask y/n/always; the next line typed is the answer (the chat waits for this message).
        Without a terminal nobody can answer: deny, unless settings auto-approve for local use. A terminal's
        prompt does not outlive its session, so there is no location to store."""
        if self._decide is None:
            raise RuntimeError("the console cannot take decisions before it runs")
        if not self.interactive or self._lines is None:
            approve = self.auto_approve
            await self._decide(
                request.id, platform=self.name, user=self.user, approve=approve, args_hash=request.args_hash
            )
            return None
        minutes = max(round((request.expires_at - time.time()) / 60), 1)
        self._write(
            f"parley> I want to run {request.describe_call()}. Allow it? "
            f"[y]es, [n]o, [a]lways in #{self.channel} (expires in {minutes} min): "
        )
        self._prompts[request.id] = asyncio.create_task(self._answer_prompt(request, self._lines, self._decide))
        return None

    async def _answer_prompt(self, request: ApprovalRequest, lines: asyncio.Queue[str], decide: Decide) -> None:
        answer = (await lines.get()).strip().lower()
        approve, always = ANSWERS.get(answer, (False, False))
        verdict = await decide(
            request.id, platform=self.name, user=self.user, approve=approve, args_hash=request.args_hash, always=always
        )
        if not verdict.accepted:
            self._write(f"parley> {verdict.reason}\n")

    async def approval_settled(self, request: ApprovalRequest) -> None:
        prompt = self._prompts.pop(request.id, None)
        if prompt is not None and not prompt.done():
            prompt.cancel()
            self._write(f"\nparley> The request to run {request.tool} {request.state.value}.\n")

    def _write(self, text: str) -> None:
        self.stdout.write(text)
        self.stdout.flush()


def _login_name() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "console"
