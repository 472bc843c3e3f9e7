"""`read_file` and `list_dir`: read-only access to one configured directory, and nothing outside it.

The model chooses the path, so every path is hostile: `..`, absolute paths, NUL bytes and symlinks that lead
out are refused. The checked path is resolved once (symlinks followed) and must stay under the resolved
root; it is then opened one component at a time from a descriptor of the root with O_NOFOLLOW, so a symlink
swapped in after the check makes the open fail instead of escaping. Messages show the path as the model
gave it, never the host's absolute root.
"""

from __future__ import annotations

import codecs
import errno
import os
import stat
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path, PurePosixPath

from agent.tools.registry import ToolError, tool

DEFAULT_MAX_BYTES = 64_000
MAX_ENTRIES = 200
# A NUL byte in the first chunk means a binary file: the model can do nothing useful with it.
BINARY_SNIFF_BYTES = 8192
READ_CHUNK = 65_536

_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_DIRECTORY = getattr(os, "O_DIRECTORY", 0)
_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
# Opening a FIFO for reading blocks until a writer appears; non-blocking lets fstat refuse it first.
_NONBLOCK = getattr(os, "O_NONBLOCK", 0)


def file_tools(root: Path, max_bytes: int = DEFAULT_MAX_BYTES) -> tuple[Callable[[str], str], Callable[[str], str]]:
    """`read_file` and `list_dir` confined to `root` (resolved now, so a later change of the link is ignored)."""
    base = Path(os.path.realpath(root))
    spellings = (base, Path(os.path.abspath(root)))

    def read_file(path: str) -> str:
        """Read a text file from the shared folder; the path is relative to that folder, e.g. "notes/todo.txt"."""
        with _open_confined(spellings, path, want_dir=False) as (fd, _):
            return _read_text(fd, path, max_bytes)

    def list_dir(path: str = ".") -> str:
        """List a directory of the shared folder ("." is the folder itself); directories end with "/"."""
        with _open_confined(spellings, path, want_dir=True) as (fd, here):
            return _listing(base, here, fd, path)

    # Registered by call, not as decorators: `tool` is untyped, and the factories return typed functions.
    def inside(path: str = ".") -> None:
        """Refuse a path outside the root before anyone is asked to approve reading it."""
        _resolve_inside(spellings, path)

    tool(name="read_file", approval="approve", returns="the text of the file", check=inside)(read_file)
    tool(name="list_dir", approval="allow", returns="one entry per line; directories end with /", check=inside)(
        list_dir
    )

    return read_file, list_dir


def _show(path: str) -> str:
    """The path as the model gave it, quoted and kept short."""
    text = repr(path)
    return text if len(text) <= 80 else text[:77] + "...'"


def _relative_parts(spellings: tuple[Path, ...], path: str) -> tuple[str, ...]:
    """The components of `path` under the root, after the checks that need no file system."""
    if "\x00" in path:
        raise ToolError("the path contains a NUL byte")
    try:
        os.fsencode(path)
    except UnicodeError:
        raise ToolError(f"the path {_show(path)} cannot be used on this system") from None
    text = path.strip()
    pure = PurePosixPath(text) if text else PurePosixPath(".")
    if ".." in pure.parts:
        raise ToolError(f"{_show(path)}: '..' is not allowed; paths are relative to the shared folder")
    if pure.is_absolute():
        root = next((r for r in spellings if pure.is_relative_to(r)), None)
        if root is None:
            raise ToolError(f"{_show(path)} is outside the shared folder; use a path relative to it")
        pure = pure.relative_to(root)
    return tuple(part for part in pure.parts if part not in ("", "."))


def _resolve_inside(spellings: tuple[Path, ...], path: str) -> tuple[str, ...]:
    """Follow symlinks once and return the real components under the root; refuse anything that leaves it."""
    base = spellings[0]
    parts = _relative_parts(spellings, path)
    try:
        real = Path(os.path.realpath(base.joinpath(*parts)))
    except (OSError, ValueError):
        raise ToolError(f"{_show(path)} cannot be resolved") from None
    if not real.is_relative_to(base):
        raise ToolError(f"{_show(path)} leads outside the shared folder (through a symlink)")
    return real.relative_to(base).parts


@contextmanager
def _open_confined(spellings: tuple[Path, ...], path: str, *, want_dir: bool) -> Iterator[tuple[int, Path]]:
    """A descriptor for `path` (and its real path) opened beneath the root without following any symlink."""
    base = spellings[0]
    parts = _resolve_inside(spellings, path)
    fds: list[int] = []
    try:
        try:
            fds.append(os.open(base, os.O_RDONLY | _DIRECTORY | _NOFOLLOW | _CLOEXEC))
        except OSError:
            raise ToolError("the shared folder is not available") from None
        for part in parts[:-1]:
            fds.append(_open_at(fds[-1], part, os.O_RDONLY | _DIRECTORY | _NOFOLLOW | _CLOEXEC, path))
        if parts:
            fds.append(_open_final(fds[-1], parts[-1], path, want_dir=want_dir))
        elif not want_dir:
            raise ToolError(f"{_show(path)} is a directory; use list_dir")
        yield fds[-1], base.joinpath(*parts)
    finally:
        for fd in fds:
            os.close(fd)


def _open_final(dir_fd: int, name: str, path: str, *, want_dir: bool) -> int:
    """Check the kind of the last component before opening it, then check that the opened file is that one."""
    try:
        before = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except OSError as exc:
        raise ToolError(_os_message(exc, path)) from None
    _check_kind(before.st_mode, path, want_dir=want_dir)
    flags = os.O_RDONLY | _NOFOLLOW | _CLOEXEC | _NONBLOCK | (_DIRECTORY if want_dir else 0)
    fd = _open_at(dir_fd, name, flags, path)
    after = os.fstat(fd)
    if (after.st_dev, after.st_ino) != (before.st_dev, before.st_ino) or stat.S_IFMT(after.st_mode) != stat.S_IFMT(
        before.st_mode
    ):
        os.close(fd)
        raise ToolError(f"{_show(path)} changed while it was being opened; try again")
    return fd


def _check_kind(mode: int, path: str, *, want_dir: bool) -> None:
    if stat.S_ISLNK(mode):
        raise ToolError(f"{_show(path)} is a symlink that cannot be followed (a loop, or it changed meanwhile)")
    if want_dir:
        if stat.S_ISREG(mode):
            raise ToolError(f"{_show(path)} is a file, not a directory; use read_file")
        if not stat.S_ISDIR(mode):
            raise ToolError(f"{_show(path)} is not a directory")
    elif stat.S_ISDIR(mode):
        raise ToolError(f"{_show(path)} is a directory; use list_dir")
    elif not stat.S_ISREG(mode):
        raise ToolError(f"{_show(path)} is not a regular file (a device, pipe or socket) and cannot be read")


def _open_at(dir_fd: int, name: str, flags: int, path: str) -> int:
    try:
        return os.open(name, flags, dir_fd=dir_fd)
    except OSError as exc:
        message = _os_message(exc, path)
    # O_NOFOLLOW with O_DIRECTORY reports a symlink as "not a directory": say what really happened.
    try:
        swapped = stat.S_ISLNK(os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mode)
    except OSError:
        swapped = False
    if swapped:
        message = f"{_show(path)} changed into a symlink while it was being opened; try again"
    raise ToolError(message)


def _os_message(exc: OSError, path: str) -> str:
    """An OS error as a sentence about the model's own path (the OS message would name the host path)."""
    shown = _show(path)
    if exc.errno == errno.ENOENT:
        return f"{shown} does not exist"
    if exc.errno in (errno.ELOOP, errno.EMLINK):
        return f"{shown} changed into a symlink while it was being opened; try again"
    if exc.errno == errno.ENOTDIR:
        return f"a part of {shown} is not a directory"
    if exc.errno in (errno.EACCES, errno.EPERM):
        return f"{shown} cannot be read (permission denied)"
    if exc.errno == errno.ENAMETOOLONG:
        return f"{shown} is too long"
    return f"{shown} cannot be opened ({errno.errorcode.get(exc.errno or 0, 'error')})"


def _read_text(fd: int, path: str, max_bytes: int) -> str:
    chunks: list[bytes] = []
    size = 0
    while size <= max_bytes:
        try:
            chunk = os.read(fd, min(READ_CHUNK, max_bytes + 1 - size))
        except OSError as exc:
            raise ToolError(_os_message(exc, path)) from None
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    data = b"".join(chunks)
    if b"\x00" in data[:BINARY_SNIFF_BYTES]:
        raise ToolError(f"{_show(path)} is a binary file, not text; it cannot be shown")
    if not data:
        return "(empty file)"
    truncated = len(data) > max_bytes
    # An incremental decoder drops a character cut in half at the limit instead of showing garbage.
    text = codecs.getincrementaldecoder("utf-8")(errors="replace").decode(data[:max_bytes], final=not truncated)
    return text + f"\n[truncated at {max_bytes} bytes]" if truncated else text


def _listing(base: Path, here: Path, fd: int, path: str) -> str:
    try:
        with os.scandir(fd) as scan:
            entries = sorted(scan, key=lambda e: e.name)
    except OSError as exc:
        raise ToolError(_os_message(exc, path)) from None
    if not entries:
        return "(empty directory)"
    lines = [_entry_line(base, here, fd, entry) for entry in entries[:MAX_ENTRIES]]
    if len(entries) > MAX_ENTRIES:
        lines.append(f"({len(entries) - MAX_ENTRIES} more entries not shown)")
    return "\n".join(lines)


def _entry_line(base: Path, here: Path, dir_fd: int, entry: os.DirEntry[str]) -> str:
    """One line per entry; a symlink is described from where it points and never followed out of the root."""
    name = entry.name
    try:
        info = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except OSError:
        return f"{name}  [unreadable]"
    if stat.S_ISLNK(info.st_mode):
        target = Path(os.path.realpath(here / name))
        if not target.is_relative_to(base):
            return f"{name}  [symlink leading outside the shared folder; not followed]"
        if not target.exists():
            return f"{name}  [broken symlink]"
        inside = target.relative_to(base).as_posix() or "."
        suffix = "/" if target.is_dir() else ""
        return f"{name}{suffix}  [symlink to {inside}{suffix}]"
    if stat.S_ISDIR(info.st_mode):
        return f"{name}/"
    if stat.S_ISREG(info.st_mode):
        return f"{name}  ({info.st_size:,} bytes)"
    return f"{name}  [special file]"
