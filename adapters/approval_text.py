"""What an approval prompt shows of a call's arguments: the same on every platform, escaped by each for its markup.

The person deciding must see what will run, and nothing in a value may act on the chat: ping people, pass for a
link, break the prompt's layout or hide characters. So a value is shown as JSON: a string in quotes with a
newline as `\\n`, so one value cannot start a line that looks like another argument or like Parley's own text.
Characters that do not show are written as `\\uXXXX`: controls, format characters (a right-to-left override, a
zero-width space), separators other than the plain space, private-use and unassigned code points. Both platforms
fence code with three backticks, so no value holds three in a row (every third is `\\u0060`): it cannot close
its code block. What is left for a platform is its own escaping (Slack's `&`, `<`, `>`) inside a code block.

A long value is folded: the prompt shows its beginning and a marker with its full length, never a silent cut,
and the complete arguments travel with the prompt as a JSON file (`full_arguments`).
"""

from __future__ import annotations

import json
import re
import unicodedata
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from agent.approvals import ApprovalRequest

__all__ = [
    "NAME_CHARS",
    "VALUE_CHARS",
    "ShownArgument",
    "ShownCall",
    "arguments_filename",
    "fit",
    "fold_marker",
    "full_arguments",
    "hidden_marker",
    "show_call",
    "shown_name",
]

# How much of one value a prompt shows before folding it: enough to recognise a URL or a query, little enough
# that ten arguments still fit a Discord message once the values are cut to the shorter steps in `fit`.
VALUE_CHARS = 300
# Argument names come from a tool's schema; a longer one is cut (with "…") to keep Slack's 3,000-character
# section limit out of reach.
NAME_CHARS = 64
# Shorter cuts `fit` tries, in order, before it lists fewer arguments.
_FIT_VALUE_CHARS = (VALUE_CHARS, 150, 60, 20)
_FIT_ARGUMENTS = (10, 5, 1, 0)

# Unicode categories that do not show as themselves: controls, format, surrogates, private use, unassigned, and
# separators (the plain space is let through).
_INVISIBLE = frozenset({"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp", "Zs"})
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"', re.DOTALL)
# One character or one JSON escape: a cut never splits `\n` or `\u202e`.
_ATOM = re.compile(r"\\u[0-9a-fA-F]{4}|\\.|.", re.DOTALL)
_BACKTICK = "\\u0060"
_FILENAME_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]")


@dataclass(frozen=True)
class ShownArgument:
    """One argument as a prompt shows it. `value` is its JSON (made visible), cut when `folded`; `length` is the
    length of the whole value: a string's own characters, otherwise its JSON's."""

    name: str
    value: str
    length: int
    folded: bool


@dataclass(frozen=True)
class ShownCall:
    """The arguments a prompt lists, in the call's order; `hidden` more were not listed (no room)."""

    arguments: tuple[ShownArgument, ...]
    hidden: int = 0

    @property
    def folded(self) -> bool:
        """Part of the call is not in the prompt: the full arguments must go with it."""
        return self.hidden > 0 or any(argument.folded for argument in self.arguments)


def show_call(
    args: Mapping[str, Any], *, value_chars: int = VALUE_CHARS, max_arguments: int | None = None
) -> ShownCall:
    """Every argument (or the first `max_arguments`), each value cut to `value_chars` characters if longer."""
    items = list(args.items())
    listed = items if max_arguments is None else items[:max_arguments]
    shown = tuple(_argument(name, value, value_chars) for name, value in listed)
    return ShownCall(shown, hidden=len(items) - len(listed))


def fit(args: Mapping[str, Any], render: Callable[[ShownCall], str], limit: int) -> tuple[str, ShownCall]:
    """The fullest rendering of the call within `limit` characters: values are cut shorter first, then fewer
    arguments are listed. `render` must fit with no argument listed."""
    counts = sorted({len(args), *(n for n in _FIT_ARGUMENTS if n < len(args))}, reverse=True)
    for count in counts:
        for chars in _FIT_VALUE_CHARS:
            shown = show_call(args, value_chars=chars, max_arguments=count)
            text = render(shown)
            if len(text) <= limit:
                return text, shown
    raise ValueError(f"an approval prompt does not fit in {limit} characters even without its arguments")


def fold_marker(argument: ShownArgument, where: str) -> str:
    """Says that a value was cut, how long it is, and where the rest is."""
    return f"… [folded: {argument.length:,} characters; {where}]"


def hidden_marker(hidden: int, where: str) -> str:
    """Says that arguments were left out, how many, and where they are."""
    noun = "argument" if hidden == 1 else "arguments"
    return f"… [{hidden:,} more {noun} not listed; {where}]"


def full_arguments(request: ApprovalRequest) -> str:
    """The whole call, for the file that goes with a folded prompt: indented JSON with every value in full
    (characters that do not show still escaped) and the hash a decision is bound to."""
    call = {"tool": request.tool, "arguments": request.args, "args_hash": request.args_hash}
    return _visible_json(json.dumps(call, ensure_ascii=False, indent=2, default=str), fence_safe=False) + "\n"


def arguments_filename(request: ApprovalRequest) -> str:
    return f"{_FILENAME_UNSAFE.sub('_', request.tool)}-arguments.json"


def shown_name(name: str) -> str:
    """A name (an argument's, a tool's) for an inline code span: made visible, no backtick at all, cut when
    longer than NAME_CHARS."""
    atoms = [_BACKTICK if atom == "`" else atom for atom in _string_atoms(json.dumps(str(name), ensure_ascii=False))]
    inner = atoms[1:-1]  # without the quotes
    return "".join(inner[:NAME_CHARS]) + ("…" if len(inner) > NAME_CHARS else "")


def _argument(name: str, value: Any, value_chars: int) -> ShownArgument:
    encoded = json.dumps(value, ensure_ascii=False, default=str)
    atoms = _atoms(encoded, fence_safe=True)
    kept: list[str] = []
    used = 0
    for atom in atoms:
        if used + len(atom) > value_chars:
            break
        kept.append(atom)
        used += len(atom)
    length = len(value) if isinstance(value, str) else len(encoded)
    return ShownArgument(shown_name(name), "".join(kept), length, folded=len(kept) < len(atoms))


def _visible_json(encoded: str, *, fence_safe: bool) -> str:
    return "".join(_atoms(encoded, fence_safe=fence_safe))


def _atoms(encoded: str, *, fence_safe: bool) -> list[str]:
    """JSON text as the pieces a cut may fall between; inside string literals, characters made visible.
    Outside them JSON has only punctuation, digits, letters and layout whitespace, which stay as they are."""
    atoms: list[str] = []
    pos = 0
    for match in _STRING.finditer(encoded):
        atoms.extend(encoded[pos : match.start()])
        literal = _string_atoms(match.group())
        atoms.extend(_break_fences(literal) if fence_safe else literal)
        pos = match.end()
    atoms.extend(encoded[pos:])
    return atoms


def _string_atoms(literal: str) -> list[str]:
    return [_visible(atom) if len(atom) == 1 else atom for atom in _ATOM.findall(literal)]


def _visible(char: str) -> str:
    if char == " " or unicodedata.category(char) not in _INVISIBLE:
        return char
    code = ord(char)
    if code > 0xFFFF:  # JSON writes a code point beyond the first plane as a surrogate pair
        code -= 0x10000
        return f"\\u{0xD800 + (code >> 10):04x}\\u{0xDC00 + (code & 0x3FF):04x}"
    return f"\\u{code:04x}"


def _break_fences(atoms: list[str]) -> list[str]:
    """Every third backtick in a row becomes `\\u0060`, so no value holds a code fence."""
    out: list[str] = []
    run = 0
    for atom in atoms:
        run = run + 1 if atom == "`" else 0
        if run == 3:
            atom, run = _BACKTICK, 0
        out.append(atom)
    return out
