"""Bytes to model input, bounded: text as it is, documents as Markdown, images checked and kept as images.

Which converter runs is decided here from the file's first bytes, its name and its declared media type, never
left to a library's guess: archives (zip, tar, gzip, 7z, rar) are refused, not unpacked, and an Office file (a
zip itself) is opened only after its directory shows it unpacks to a bounded size. Every converter stops once
it has `max_chars` characters, so a 500-page PDF costs about as much as the pages that fit.

Conversions are CPU work in third-party parsers: `convert_off_loop` runs each in a daemon thread with a time
limit, so the event loop never waits on one and a parser that hangs cannot keep the process from exiting. A
conversion past its time is abandoned (its thread ends when the parser does; at most `MAX_RUNNING` run at
once, further ones are refused until they do). Nothing is written to disk: every parser reads from memory.
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import io
import re
import threading
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Literal

from agent.attachments.models import AttachmentRefused
from agent.messages import clean_text

Kind = Literal["text", "html", "pdf", "docx", "pptx", "xlsx", "image", "archive", "legacy", "unsupported"]

# Conversion threads running at once, stuck ones included: past this a new file is refused, not queued.
MAX_RUNNING = 4
# An Office file is a zip: refused when its directory promises more than this unpacked, or this many parts.
MAX_UNPACKED_BYTES = 200_000_000
MAX_PARTS = 5_000
# Images: a larger picture is refused before it is decoded (Pillow's own bomb check only warns below 2x this).
MAX_PIXELS = 40_000_000
IMAGE_FORMATS = {"PNG": "image/png", "JPEG": "image/jpeg", "GIF": "image/gif", "WEBP": "image/webp"}

TEXT_EXTENSIONS = frozenset(
    """txt text md markdown rst adoc org csv tsv json jsonl ndjson geojson log out err yaml yml toml ini cfg conf
    properties env xml svg py pyi js mjs cjs ts tsx jsx java kt kts go rs c h cc cpp cxx hpp cs rb php swift scala
    sh bash zsh fish ps1 bat sql r m pl lua dart css scss less diff patch tex bib gradle dockerfile makefile mk
    cmake graphql gql proto srt vtt ipynb tf hcl nix vue svelte""".split()  # noqa: SIM905 (a word list reads better as words)
)
HTML_EXTENSIONS = frozenset({"html", "htm", "xhtml"})
TEXT_MEDIA_TYPES = frozenset(
    {
        "application/json",
        "application/xml",
        "application/x-yaml",
        "application/yaml",
        "application/toml",
        "application/javascript",
        "application/x-javascript",
        "application/typescript",
        "application/x-sh",
        "application/sql",
        "application/x-ndjson",
        "application/csv",
    }
)
OFFICE = {
    "docx": ("docx", "application/vnd.openxmlformats-officedocument.wordprocessingml.document"),
    "pptx": ("pptx", "application/vnd.openxmlformats-officedocument.presentationml.presentation"),
    "xlsx": ("xlsx", "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"),
}
ARCHIVE_EXTENSIONS = frozenset({"zip", "tar", "gz", "tgz", "bz2", "xz", "7z", "rar", "zst", "jar", "apk", "iso"})
LEGACY_EXTENSIONS = frozenset({"doc", "xls", "ppt"})
IMAGE_EXTENSIONS = frozenset({"png", "jpg", "jpeg", "gif", "webp"})

_ARCHIVE_MAGIC = (b"\x1f\x8b", b"BZh", b"\xfd7zXZ\x00", b"7z\xbc\xaf\x27\x1c", b"Rar!\x1a\x07", b"\x28\xb5\x2f\xfd")


@dataclass(frozen=True)
class Converted:
    """What the model can be given from one file: text (cut to the limit asked for) or an image."""

    text: str = ""
    # Characters of the whole text when it was all converted; None when the converter stopped at the limit.
    total_chars: int | None = None
    image: bytes | None = None
    media_type: str = ""
    # Shown to the model and kept in the chain: "PNG, 640x480", "12 pages".
    detail: str = ""


def extension(name: str) -> str:
    suffix = PurePosixPath(name.strip().lower()).suffix
    return suffix.removeprefix(".") if suffix else name.strip().lower()


def classify(name: str, media_type: str = "", data: bytes = b"") -> Kind:
    """What a file is: from its first bytes when there are any (a `.txt` that is a PDF is a PDF), else from its
    name, then its declared media type."""
    ext = extension(name)
    declared = media_type.split(";", 1)[0].strip().lower()
    if data:
        sniffed = _sniff(data, ext, declared)
        if sniffed is not None:
            return sniffed
    if ext in ARCHIVE_EXTENSIONS or declared in ("application/zip", "application/gzip", "application/x-tar"):
        return "archive"
    if ext in LEGACY_EXTENSIONS or declared in ("application/msword", "application/vnd.ms-excel"):
        return "legacy"
    for kind, (office_ext, office_type) in OFFICE.items():
        if ext == office_ext or declared == office_type:
            return kind  # type: ignore[return-value]
    if ext == "pdf" or declared == "application/pdf":
        return "pdf"
    if ext in IMAGE_EXTENSIONS or declared in IMAGE_FORMATS.values():
        return "image"
    if ext in HTML_EXTENSIONS or declared in ("text/html", "application/xhtml+xml"):
        return "html"
    if ext in TEXT_EXTENSIONS or declared.startswith("text/") or declared in TEXT_MEDIA_TYPES:
        return "text"
    return "unsupported"


def _sniff(data: bytes, ext: str, declared: str) -> Kind | None:
    head = data[:512]
    if head.startswith(b"%PDF-"):
        return "pdf"
    if head.startswith((b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"GIF87a", b"GIF89a")) or (
        head[:4] == b"RIFF" and head[8:12] == b"WEBP"
    ):
        return "image"
    if head.startswith(b"PK\x03\x04"):
        for kind, (office_ext, office_type) in OFFICE.items():
            if ext == office_ext or declared == office_type:
                return kind  # type: ignore[return-value]
        return "archive"
    if head.startswith(_ARCHIVE_MAGIC) or data[257:262] == b"ustar":
        return "archive"
    if head.startswith(b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1"):
        return "legacy"
    return None


def why_not(kind: Kind, media_type: str) -> str | None:
    """The reason a kind of file is not read, worded for the person who shared it; None when it is read."""
    if kind == "archive":
        return "it is an archive, and Parley does not unpack archives; share the files inside instead"
    if kind == "legacy":
        return "it is an old Office format; save it as .docx, .xlsx or .pptx"
    if kind == "unsupported":
        return f"unsupported type ({media_type or 'unknown'})"
    return None


# Running one conversion ------------------------------------------------------------------------------------

_running = 0
_running_lock = threading.Lock()


async def convert_off_loop(data: bytes, kind: Kind, *, max_chars: int, timeout_s: float) -> Converted:
    """`convert` in a daemon thread, within `timeout_s`. Raises AttachmentRefused (including when too many
    conversions are running already) or TimeoutError."""
    global _running
    with _running_lock:
        if _running >= MAX_RUNNING:
            raise AttachmentRefused("Parley is busy reading other files; please try again in a minute")
        _running += 1
    loop = asyncio.get_running_loop()
    done: asyncio.Future[Converted] = loop.create_future()

    def settle(result: Converted | None, error: BaseException | None) -> None:
        if done.done():
            return
        if error is not None:
            done.set_exception(error)
        else:
            assert result is not None
            done.set_result(result)

    def run() -> None:
        global _running
        result: Converted | None = None
        error: BaseException | None = None
        try:
            result = convert(data, kind, max_chars=max_chars)
        except BaseException as exc:  # handed to the waiting coroutine, whatever it is
            error = exc
        finally:
            with _running_lock:
                _running -= 1
        # The loop may have closed while the parser worked (RuntimeError): then nobody waits any more.
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(settle, result, error)

    threading.Thread(target=run, name="parley-convert", daemon=True).start()
    return await asyncio.wait_for(done, timeout_s)


def convert(data: bytes, kind: Kind, *, max_chars: int) -> Converted:
    """The model's input from one file's bytes (blocking). Raises AttachmentRefused with the reason."""
    reason = why_not(kind, "")
    if reason is not None:
        raise AttachmentRefused(reason)
    converters: dict[str, Callable[[bytes, int], Converted]] = {
        "text": _text,
        "html": _html,
        "pdf": _pdf,
        "docx": _docx,
        "pptx": _pptx,
        "xlsx": _xlsx,
        "image": _image,
    }
    try:
        return converters[kind](data, max_chars)
    except AttachmentRefused:
        raise
    except (MemoryError, RecursionError):
        raise AttachmentRefused("it is too complex to read") from None
    except Exception as exc:
        raise AttachmentRefused(f"it could not be read as {kind.upper()} ({type(exc).__name__})") from None


def _bounded(parts: list[str], max_chars: int, *, finished: bool) -> Converted:
    text = _tidy("\n\n".join(p for p in parts if p.strip()))
    if not text:
        raise AttachmentRefused("it has no text to read")
    if len(text) > max_chars:
        return Converted(text[:max_chars], total_chars=len(text) if finished else None)
    return Converted(text, total_chars=len(text) if finished else None)


def _tidy(text: str) -> str:
    return re.sub(r"\n{3,}", "\n\n", clean_text(text)).strip()


# Text ------------------------------------------------------------------------------------------------------


def decode(data: bytes) -> str:
    """Text from bytes: UTF-8 (or UTF-16 with its byte-order mark), else the encoding charset-normalizer finds.
    Bytes that are no text (NULs where text has none, no encoding fits) are refused."""
    if data.startswith(b"\xef\xbb\xbf"):
        return data[3:].decode("utf-8", "replace")
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        return data.decode("utf-16", "replace")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        pass
    if b"\x00" in data[:8192]:
        raise AttachmentRefused("it is a binary file, not text")
    from charset_normalizer import from_bytes

    matches = list(from_bytes(data[:200_000]))
    if not matches:
        raise AttachmentRefused("it is not text in any encoding Parley knows")
    best = matches[0]
    # On short Western text the Latin code pages tie on coherence and the first (cp1257, Baltic) wins by a
    # hair of "chaos": "crčme" for "crème". Windows-1252 is what such files are written in, so it wins ties.
    western = next(
        (m for m in matches if m.encoding == "cp1252" and m.percent_coherence >= best.percent_coherence), None
    )
    return data.decode((western or best).encoding, "replace")


def _text(data: bytes, max_chars: int) -> Converted:
    return _bounded([decode(data)], max_chars, finished=True)


def _html(data: bytes, max_chars: int) -> Converted:
    from bs4 import BeautifulSoup
    from markdownify import MarkdownConverter

    soup = BeautifulSoup(decode(data), "html.parser")
    for hidden in soup(["script", "style", "noscript", "template", "iframe", "object", "head"]):
        hidden.decompose()
    return _bounded([MarkdownConverter(heading_style="ATX").convert_soup(soup)], max_chars, finished=True)


# Documents -------------------------------------------------------------------------------------------------


def _pdf(data: bytes, max_chars: int) -> Converted:
    from pypdf import PdfReader
    from pypdf.errors import PdfReadError

    try:
        reader = PdfReader(io.BytesIO(data))
        if reader.is_encrypted and not reader.decrypt(""):
            raise AttachmentRefused("it is password-protected")
        pages = reader.pages
        count = len(pages)
        parts, size = [], 0
        for number in range(count):
            text = (pages[number].extract_text() or "").strip()
            if text:
                parts.append(f"## Page {number + 1}\n\n{text}")
                size += len(text)
            if size > max_chars:
                converted = _bounded(parts, max_chars, finished=number == count - 1)
                return Converted(converted.text, converted.total_chars, detail=f"{count} pages")
    except PdfReadError:
        raise AttachmentRefused("it is not a readable PDF") from None
    if not parts:
        raise AttachmentRefused("it has no text to read (a scanned PDF?)")
    converted = _bounded(parts, max_chars, finished=True)
    return Converted(converted.text, converted.total_chars, detail=f"{count} pages")


def _check_zip(data: bytes) -> None:
    """An Office file's zip directory, read before any parser unpacks it: a zip bomb is refused here."""
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            parts = archive.infolist()
    except zipfile.BadZipFile:
        raise AttachmentRefused("it is damaged (not a valid Office file)") from None
    if len(parts) > MAX_PARTS or sum(p.file_size for p in parts) > MAX_UNPACKED_BYTES:
        raise AttachmentRefused(f"it would unpack to more than {MAX_UNPACKED_BYTES // 1_000_000} MB")


def _markdown_table(rows: list[list[str]]) -> str:
    if not rows:
        return ""
    width = max(len(r) for r in rows)
    cells = [[c.replace("|", "\\|").replace("\n", " ").strip() for c in r] + [""] * (width - len(r)) for r in rows]
    lines = ["| " + " | ".join(cells[0]) + " |", "|" + "---|" * width]
    lines += ["| " + " | ".join(r) + " |" for r in cells[1:]]
    return "\n".join(lines)


def _docx(data: bytes, max_chars: int) -> Converted:
    _check_zip(data)
    from docx import Document
    from docx.table import Table

    document = Document(io.BytesIO(data))
    parts: list[str] = []
    size = 0
    for block in document.iter_inner_content():
        if isinstance(block, Table):
            text = _markdown_table([[cell.text for cell in row.cells] for row in block.rows])
        else:
            style = block.style.name if block.style is not None else ""
            level = re.fullmatch(r"Heading (\d)", style or "")
            text = ("#" * int(level[1]) + " " if level else "") + block.text
        parts.append(text)
        size += len(text)
        if size > max_chars:
            return _bounded(parts, max_chars, finished=False)
    return _bounded(parts, max_chars, finished=True)


def _pptx(data: bytes, max_chars: int) -> Converted:
    _check_zip(data)
    from pptx import Presentation

    slides = Presentation(io.BytesIO(data)).slides
    parts: list[str] = []
    size = 0
    for number, slide in enumerate(slides, 1):
        lines = [f"## Slide {number}"]
        for shape in slide.shapes:
            if getattr(shape, "has_text_frame", False) and shape.has_text_frame:
                lines.append(shape.text_frame.text)
            if getattr(shape, "has_table", False) and shape.has_table:
                lines.append(_markdown_table([[c.text for c in row.cells] for row in shape.table.rows]))
        if slide.has_notes_slide and slide.notes_slide.notes_text_frame is not None:
            notes = slide.notes_slide.notes_text_frame.text.strip()
            if notes:
                lines.append(f"Notes: {notes}")
        parts.append("\n\n".join(line for line in lines if line.strip()))
        size += len(parts[-1])
        if size > max_chars:
            return _bounded(parts, max_chars, finished=number == len(slides))
    return _bounded(parts, max_chars, finished=True)


def _xlsx(data: bytes, max_chars: int) -> Converted:
    _check_zip(data)
    from openpyxl import load_workbook

    workbook = load_workbook(io.BytesIO(data), read_only=True, data_only=True)
    parts: list[str] = []
    size = 0
    try:
        for sheet in workbook.worksheets:
            out = io.StringIO()
            writer = csv.writer(out, lineterminator="\n")
            for row in sheet.iter_rows(values_only=True):
                if any(v is not None for v in row):
                    writer.writerow(["" if v is None else v for v in row])
                if size + out.tell() > max_chars:
                    parts.append(f"## Sheet {sheet.title}\n\n{out.getvalue()}")
                    return _bounded(parts, max_chars, finished=False)
            parts.append(f"## Sheet {sheet.title}\n\n{out.getvalue()}")
            size += len(parts[-1])
    finally:
        workbook.close()
    return _bounded(parts, max_chars, finished=True)


# Images ----------------------------------------------------------------------------------------------------


def _image(data: bytes, max_chars: int) -> Converted:
    """An image is checked, not converted: a format models take, a sane size, a header Pillow can read."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as picture:
            fmt, (width, height) = picture.format or "", picture.size
            if fmt not in IMAGE_FORMATS:
                raise AttachmentRefused(f"it is a {fmt or 'kind of'} image models do not take; use PNG or JPEG")
            if width * height > MAX_PIXELS:
                raise AttachmentRefused(f"the image is {width}x{height}, too large to look at")
            picture.verify()
    except (UnidentifiedImageError, SyntaxError, OSError):
        raise AttachmentRefused("it is not a readable image") from None
    return Converted(image=data, media_type=IMAGE_FORMATS[fmt], detail=f"{fmt}, {width}x{height}")


def human_size(size: int | None) -> str:
    """1234567 -> "1.2 MB"; 900 -> "900 bytes"."""
    if size is None:
        return "unknown size"
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if size >= scale:
            return f"{size / scale:.1f} {unit}"
    return f"{size} bytes"
