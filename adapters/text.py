"""Turn the model's Markdown answer into platform text: Slack mrkdwn, and messages cut to a platform's size
(`split_message`, used for Slack's 3,900 characters and Discord's 2,000).

The Markdown is parsed with markdown-it-py (CommonMark plus ~~strike~~, raw HTML off) rather than with regular
expressions, so emphasis, code spans and nesting follow the same rules the model wrote them for.
Everything the model wrote is treated as untrusted text: `&`, `<` and `>` are always entity-escaped, so the only
`<...>` sequences in the output are the links built here, and mass mentions get a zero-width space.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from markdown_it import MarkdownIt
from markdown_it.token import Token

__all__ = ["FENCE", "MIN_LIMIT", "SLACK_TEXT_LIMIT", "split_message", "to_mrkdwn"]

# Slack truncates message text near 4,000 characters; the margin leaves room for a thread prefix or an ellipsis.
SLACK_TEXT_LIMIT = 3900

FENCE = "```"
_REOPEN = FENCE + "\n"
_CLOSE = "\n" + FENCE
# Inside a code block a chunk carries both added markers and still needs room for one character of its own.
MIN_LIMIT = len(_REOPEN) + len(_CLOSE) + 1

_BULLET = "•"
_INDENT = "    "
_RULE = "──────────"
_ZWSP = "\u200b"

# Blocks nested deeper than maxNesting are silently dropped by markdown-it; 100 is far beyond any real answer
# (the commonmark preset's 20 is not) and still well inside Python's recursion limit.
_MD = MarkdownIt("commonmark", {"html": False, "maxNesting": 100}).enable("strikethrough")
_ESCAPES = str.maketrans({"&": "&amp;", "<": "&lt;", ">": "&gt;"})
_MASS_MENTION = re.compile(r"(?<!\w)@(?=(?:here|channel|everyone)\b)", re.IGNORECASE)
# `<!here>`, `<@U123>` and `<#C1>` in Markdown that Slack renders itself would ping or link.
_SPECIAL = re.compile(r"<(?=[!@#])")
_URL_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*:")
# A URL must not end the `<url|text>` link early or smuggle in a second one.
_URL_UNSAFE = str.maketrans({"|": "%7C", "<": "%3C", ">": "%3E", " ": "%20", "\n": "%0A"})
_MARKS = {"strong": "*", "em": "_", "s": "~"}
_CODE_TYPES = frozenset({"fence", "code_block"})
_LIST_TYPES = frozenset({"bullet_list", "ordered_list"})

# Whitespace other than a newline counts as a space, as it does for str.split().
_PARAGRAPH_BREAK = re.compile(r"\n[^\S\n]*\n")
_LINE_BREAK = re.compile(r"\n")
_WORD_BREAK = re.compile(r"[^\S\n]+")
_NON_SPACE = re.compile(r"\S")
# Slack links and entities break if cut in half, so cuts move in front of them.
_ATOMIC = re.compile(r"<[^<>\n]*>|&(?:[A-Za-z]+|#[0-9]+);")


def to_mrkdwn(markdown: str) -> str:
    """Render Markdown as Slack mrkdwn; code keeps its content, text is escaped and cannot ping anyone."""
    return _join_blocks(_block_tree(_MD.parse(markdown)), level=0).strip("\n")


def _escape(text: str) -> str:
    """Entity-escape Slack's control characters and defuse @here/@channel/@everyone."""
    return _MASS_MENTION.sub("@" + _ZWSP, text.translate(_ESCAPES))


def safe_markdown(text: str) -> str:
    """Model output as Markdown that Slack renders itself (a stream, a markdown block) that cannot ping anyone or
    link a channel: a zero-width space after `<` of `<!here>`, `<@U1>`, `<#C1>`, and after the `@` of `@here`."""
    return _MASS_MENTION.sub("@" + _ZWSP, _SPECIAL.sub("<" + _ZWSP, text))


# --- blocks -------------------------------------------------------------------------------------------------


@dataclass
class _Block:
    """A block token with the blocks nested in it; inline tokens stay flat, so `***...***` cannot recurse."""

    token: Token
    children: list[_Block] = field(default_factory=list)

    @property
    def type(self) -> str:
        """`bullet_list` for `bullet_list_open`, so opening and single tokens are named alike."""
        return self.token.type.removesuffix("_open")


def _block_tree(tokens: Sequence[Token]) -> list[_Block]:
    """Nest markdown-it's flat block stream by its open/close tokens."""
    root: list[_Block] = []
    stack = [root]
    for token in tokens:
        if token.nesting < 0:
            stack.pop()
            continue
        block = _Block(token)
        stack[-1].append(block)
        if token.nesting > 0:
            stack.append(block.children)
    return root


def _join_blocks(blocks: Iterable[_Block], level: int, sep: str = "\n\n") -> str:
    """Blocks are separated by a blank line, like paragraphs in Slack; tight list items pass `sep="\\n"`."""
    return sep.join(part for block in blocks if (part := _block(block, level)))


def _block(block: _Block, level: int) -> str:
    """Render one block; `level` is the list depth, which sets the indentation of nested lists."""
    kind = block.type
    if kind == "paragraph":
        return _inline_of(block)
    if kind == "heading":
        # Slack has no headings; bold is the nearest, and bold inside it would close it early.
        text = _inline_of(block, in_heading=True)
        return f"*{text}*" if text else ""
    if kind in _CODE_TYPES:
        return _code_block(block.token.content)
    if kind in _LIST_TYPES:
        return _list(block, level)
    if kind == "blockquote":
        return _blockquote(block, level)
    if kind == "hr":
        return _RULE
    return _join_blocks(block.children, level) if block.children else _escape(block.token.content)


def _code_block(content: str) -> str:
    """Slack ignores a fence's language tag, so it is dropped; the code itself only gets Slack's escaping."""
    body = _escape(content)
    if body and not body.endswith("\n"):
        body += "\n"
    return f"{_REOPEN}{body}{FENCE}"


def _blockquote(block: _Block, level: int) -> str:
    """Slack quotes are one level deep and per line; code blocks step out of the quote to stay code."""
    parts = []
    for child in block.children:
        text = _block(child, level)
        if text:
            parts.append(text if child.type in _CODE_TYPES else _quote_lines(text))
    return "\n\n".join(parts)


def _quote_lines(text: str) -> str:
    """Prefix each line with `> ` once; nested quotes flatten because Slack cannot show them."""
    return "\n".join(line if line.startswith("> ") else f"> {line}" for line in text.split("\n"))


def _list(block: _Block, level: int) -> str:
    """Bullets become `•`, numbers are kept (counted from the list's start), nesting becomes indentation."""
    sep = "\n" if _is_tight(block) else "\n\n"
    items = block.children
    if block.type == "bullet_list":
        markers = [_BULLET] * len(items)
    else:
        start = int(block.token.attrGet("start") or 1)
        markers = [f"{start + i}{block.token.markup or '.'}" for i in range(len(items))]
    return sep.join(_list_item(item, level, marker, sep) for item, marker in zip(items, markers, strict=True))


def _is_tight(block: _Block) -> bool:
    """markdown-it hides the paragraphs of a tight list; such items sit on consecutive lines."""
    return any(child.type == "paragraph" and child.token.hidden for item in block.children for child in item.children)


def _list_item(item: _Block, level: int, marker: str, sep: str) -> str:
    """The marker goes on the first line; continuation lines align under the item's text."""
    pad = _INDENT * level
    hang = pad + " " * (len(marker) + 1)
    parts: list[str] = []
    for child in item.children:
        if child.type in _LIST_TYPES:
            parts.append(_list(child, level + 1))
        elif child.type in _CODE_TYPES:
            parts.append(_block(child, level))
        elif text := _block(child, level):
            parts.append(_indent(text, hang))
    first = item.children[0].type if item.children else ""
    if parts and first not in _LIST_TYPES and first not in _CODE_TYPES:
        parts[0] = f"{pad}{marker} {parts[0][len(hang) :]}"
    else:
        parts.insert(0, f"{pad}{marker}")
    return sep.join(parts)


def _indent(text: str, prefix: str) -> str:
    """Indent every non-empty line; blank lines stay empty so paragraph breaks survive."""
    return "\n".join(prefix + line if line else line for line in text.split("\n"))


# --- inline -------------------------------------------------------------------------------------------------


def _inline_of(block: _Block, *, in_heading: bool = False) -> str:
    """A paragraph or heading holds one `inline` block whose token carries the text runs."""
    return "".join(_inline(child.token.children or [], in_heading) for child in block.children).strip()


def _inline(tokens: Sequence[Token], in_heading: bool) -> str:
    """Render inline tokens in one flat pass; a link's label is what was written since its opening token."""
    out: list[str] = []
    links: list[tuple[str, int]] = []
    for token in tokens:
        kind = token.type
        if kind == "link_open":
            links.append((str(token.attrGet("href") or ""), len(out)))
        elif kind == "link_close" and links:
            href, start = links.pop()
            label = "".join(out[start:])
            del out[start:]
            out.append(_link(href, label))
        else:
            out.append(_inline_token(token, in_heading))
    return "".join(out)


def _inline_token(token: Token, in_heading: bool) -> str:
    """Render one inline token other than a link; unknown kinds fall back to their escaped text."""
    kind = token.type
    mark = kind.removesuffix("_open").removesuffix("_close")
    if mark in _MARKS and kind != mark:
        # Bold inside a heading would end the heading's own bold.
        return "" if in_heading and mark == "strong" else _MARKS[mark]
    if kind in ("softbreak", "hardbreak"):
        return "\n"
    if kind == "code_inline":
        # Slack code spans are single backticks; wider ones only survive if the code itself holds a backtick.
        tick = token.markup if "`" in token.content else "`"
        return f"{tick}{_escape(token.content)}{tick}"
    if kind == "image":
        return _link(str(token.attrGet("src") or ""), _inline(token.children or [], in_heading))
    return _escape(token.content)


def _link(url: str, label: str) -> str:
    """`<url|text>` only for absolute URLs: anything else could turn into a Slack mention like `<!here>`."""
    label = " ".join(label.split())
    if not _URL_SCHEME.match(url):
        relative = _escape(url)
        return f"{label} ({relative})" if label else relative
    url = url.translate(_URL_UNSAFE)
    return f"<{url}|{label}>" if label and label != url else f"<{url}>"


# --- splitting ----------------------------------------------------------------------------------------------


def split_message(text: str, limit: int = SLACK_TEXT_LIMIT) -> list[str]:
    """Cut mrkdwn into messages of at most `limit` characters, at the widest break that fits.

    A code block cut in two is closed at the end of one chunk and reopened at the start of the next, so each
    message renders on its own. Whitespace at the cuts is dropped; nothing else is lost or reordered.
    """
    if limit < MIN_LIMIT:
        raise ValueError(f"limit must be at least {MIN_LIMIT}, got {limit}")
    chunks: list[str] = []
    in_code = False
    end = len(text.rstrip())
    pos = _next_line(text, 0)
    while pos < end:
        prefix = _REOPEN if in_code else ""
        pos = _drop_deep_indent(text, pos, limit - len(prefix) - len(_CLOSE))
        chunk, pos = _next_chunk(text, pos, end, prefix, limit)
        in_code = _is_open(chunk)
        chunks.append(chunk + _CLOSE if in_code else chunk)
    return chunks


def _next_chunk(text: str, pos: int, end: int, prefix: str, limit: int) -> tuple[str, int]:
    """The longest chunk from `pos` that fits, leaving room for a closing fence only when one is needed."""
    for room in (limit - len(prefix), limit - len(prefix) - len(_CLOSE)):
        cut, after = _find_cut(text, pos, end, room)
        chunk = prefix + text[pos:cut].rstrip()
        if len(chunk) + (len(_CLOSE) if _is_open(chunk) else 0) <= limit:
            return chunk, _next_line(text, after)
    raise AssertionError("unreachable: the second room leaves space for the closing fence")


def _find_cut(text: str, pos: int, end: int, room: int) -> tuple[int, int]:
    """Where this chunk ends and where the next one starts.

    Paragraph break, else line break, else space, else a hard cut, never inside a Slack link or entity.
    """
    if end - pos <= room:
        return end, end
    stop = pos + room
    # A link or entity reaching past `stop + room` could not fit in any chunk, so the scan stops there.
    line_end = text.find("\n", stop, stop + room)
    atomic = [m.span() for m in _ATOMIC.finditer(text, pos, stop + room if line_end < 0 else line_end)]
    for pattern in (_PARAGRAPH_BREAK, _LINE_BREAK, _WORD_BREAK):
        for match in reversed(list(pattern.finditer(text, pos, stop + 1))):
            if text[pos : match.start()].strip() and not _inside(match.start(), atomic):
                return match.start(), match.end()
    cut = next((a for a, b in atomic if a < stop < b and text[pos:a].strip()), stop)
    spaces = _WORD_BREAK.match(text, cut)
    return cut, spaces.end() if spaces else cut


def _inside(index: int, spans: list[tuple[int, int]]) -> bool:
    """Is `index` strictly inside one of `spans` (a cut at either edge keeps the link or entity whole)?"""
    return any(start < index < end for start, end in spans)


def _next_line(text: str, pos: int) -> int:
    """Skip blank lines after a cut, up to the start of the next line with text, keeping its indentation."""
    content = _NON_SPACE.search(text, pos)
    newline = text.rfind("\n", pos, content.start() if content else len(text))
    return newline + 1 if newline >= 0 else pos


def _drop_deep_indent(text: str, pos: int, room: int) -> int:
    """Indentation that alone would fill a chunk is dropped, or that chunk would hold nothing but spaces."""
    content = _NON_SPACE.search(text, pos)
    indent_end = content.start() if content else len(text)
    return indent_end if indent_end - pos >= room else pos


def _is_open(chunk: str) -> bool:
    """A chunk is inside a code block when it has an odd number of fence lines."""
    return sum(1 for line in chunk.split("\n") if line.lstrip().startswith(FENCE)) % 2 == 1
