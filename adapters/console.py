"""The console adapter: chat in a terminal, or answer piped stdin one line at a time.

Like every adapter it hands messages to the dispatcher (`submit`) and gets replies back through `deliver`. A line
starting with `/` is a command (`/facts`, `/forget`, `/help`, ...) for the command set, its reply printed; a
confirmation is asked as `[y/N]` and answered by the next line, on a terminal or from piped input alike.
Files given with `--attach` go with every message of the session; files a reply posts are written to a
directory, each under a name of its own, and their paths printed.
"""

from __future__ import annotations

import asyncio
import getpass
import mimetypes
import sys
import threading
import time
import uuid
from collections.abc import Iterable, Sequence
from functools import partial
from pathlib import Path
from typing import TextIO

from agent.approvals import ApprovalRequest, Decision, PromptLocation
from agent.attachments.models import Attachment, AttachmentRefused
from agent.commands import CommandCall, Commands, ConfirmClick
from agent.messages import IncomingMessage, Reply
from agent.ports import Decide, Handlers

ANSWERS = {"y": (True, False), "yes": (True, False), "a": (True, True), "always": (True, True)}
YES = frozenset({"y", "yes"})
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
        attach: Sequence[Path] = (),
        files_dir: Path = Path("data/files"),
    ) -> None:
        self.channel = channel
        self.attach = tuple(Path(p) for p in attach)
        self.files_dir = files_dir
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

    def _next_event_id(self) -> str:
        """Unique across sessions: the inbox drops an event key it has seen before."""
        self._count += 1
        return f"{self._session}-{self._count}"

    def message(self, text: str) -> IncomingMessage:
        event_id = self._next_event_id()
        return IncomingMessage(
            platform=self.name,
            channel=self.channel,
            user=self.user,
            text=text,
            message_id=str(self._count),
            event_id=event_id,
            is_dm=True,
            mentioned=True,
            attachments=local_attachments(self.attach),
        )

    async def attachments(self, message: IncomingMessage) -> tuple[Attachment, ...]:
        """The files given with --attach, read from their paths: only those paths, whatever the message says."""
        return local_attachments(
            p for p in self.attach if p.absolute().as_uri() in {a.url for a in message.attachments}
        )

    async def run(self, handlers: Handlers) -> None:
        """Read until end of input or /quit: questions go to `handlers.submit`, `/` lines to its commands, and
        the answers to approval prompts to its `decide`."""
        self._decide = handlers.decide
        if self.interactive:
            self._write(f"Parley console, channel #{self.channel}. Type /help for commands, /quit to leave.\n")
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
            if text.startswith("/") and handlers.commands is not None:
                # After the answers still due, so a command sees what the lines before it did (piped input).
                await asyncio.gather(*self._waiting.values())
                await self._command(handlers.commands, text[1:], lines)
                continue
            message = self.message(text)
            answered = self._expect(message.event_id)
            await handlers.submit(message)
            if self.interactive:
                await answered
        await asyncio.gather(*self._waiting.values())

    def _expect(self, event_id: str) -> asyncio.Future[None]:
        """A future `deliver` resolves when the answer to `event_id` is printed."""
        answered = self._waiting[event_id] = asyncio.get_running_loop().create_future()
        return answered

    async def _command(self, commands: Commands, typed: str, lines: asyncio.Queue[str]) -> None:
        """`/NAME TEXT` through the command set; a confirmation is asked as [y/N] and read from the next line."""
        name, _, text = typed.strip().partition(" ")
        call = CommandCall(
            platform=self.name,
            channel=self.channel,
            user=self.user,
            name=name,
            text=text.strip(),
            event_id=self._next_event_id(),
            is_dm=True,
        )
        # An `ask` is answered through `deliver` like any question: expected before it can arrive.
        answered = self._expect(call.event_id)
        reply = await commands.run(call)
        if not reply.answer_follows:
            self._waiting.pop(call.event_id, None)
        if reply.confirm is None:
            self._say(reply.text)
            if reply.answer_follows and self.interactive:
                await answered
            return
        # Piped input is not echoed: the answer read from it does not end the prompt's line.
        self._say(f"{reply.text} [y/N] ", end="" if self.interactive else "\n")
        answer = await lines.get()
        if not answer:  # the end of input answers no, and still ends the chat
            lines.put_nowait(answer)
        if answer.strip().lower() not in YES:
            self._say("Cancelled: nothing changed.")
            return
        click = ConfirmClick(self.name, self.channel, self.user, reply.confirm.action, reply.confirm.value)
        self._say((await commands.confirm(click)).text)

    def _say(self, text: str, end: str = "\n") -> None:
        self._write(f"parley> {text}{end}" if self.interactive else f"{text}{end}")

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
        self._say(reply.text)
        for path in await asyncio.to_thread(write_files, reply, self.files_dir):
            self._write(f"(file written to {path})\n")
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
            await self._decide(Decision(request.id, self.name, self.user, self.auto_approve, request.args_hash))
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
        verdict = await decide(Decision(request.id, self.name, self.user, approve, request.args_hash, always))
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


def local_attachments(paths: Iterable[Path]) -> tuple[Attachment, ...]:
    """Files on this machine (`--attach PATH`) as attachments, each bound to a read of that path."""
    found = []
    for path in paths:
        media_type = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        size = path.stat().st_size if path.is_file() else None
        attachment = Attachment(path.name, media_type, size, path.absolute().as_uri())
        found.append(attachment.bound(partial(_read_local, path)))
    return tuple(found)


async def _read_local(path: Path, max_bytes: int) -> bytes:
    def read() -> bytes:
        try:
            with path.open("rb") as file:
                data = file.read(max_bytes + 1)
        except OSError as exc:
            raise AttachmentRefused(f"it could not be opened ({exc.strerror or type(exc).__name__})") from None
        if len(data) > max_bytes:
            raise AttachmentRefused(f"it is larger than the {max_bytes:,}-byte limit")
        return data

    return await asyncio.to_thread(read)


def write_files(reply: Reply, directory: Path) -> list[Path]:
    """Write the reply's files into `directory` (made if missing), never over an existing file; their paths."""
    if not reply.files:
        return []
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for out in reply.files:
        name = Path(out.name).name or "file"  # a name, never a path
        stem, suffix = Path(name).stem, Path(name).suffix
        target, n = directory / name, 1
        while True:
            try:
                with target.open("xb") as file:
                    file.write(out.content)
                break
            except FileExistsError:
                n += 1
                target = directory / f"{stem}-{n}{suffix}"
        written.append(target)
    return written
