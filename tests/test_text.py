"""Slack formatting: Markdown to mrkdwn, escaping, defused mentions, and splitting into balanced chunks."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from adapters.text import FENCE, MIN_LIMIT, split_message, to_mrkdwn

ZWSP = "\u200b"


@pytest.mark.parametrize(
    ("markdown", "expected"),
    [
        pytest.param("**bold**", "*bold*", id="bold-stars"),
        pytest.param("__bold__", "*bold*", id="bold-underscores"),
        pytest.param("*italic*", "_italic_", id="italic-star"),
        pytest.param("_italic_", "_italic_", id="italic-underscore"),
        pytest.param("***both***", "_*both*_", id="bold-italic"),
        pytest.param("~~strike~~", "~strike~", id="strike"),
        pytest.param("snake_case_name and 2 * 3", "snake_case_name and 2 * 3", id="no-false-emphasis"),
        pytest.param("[docs](https://example.com/a)", "<https://example.com/a|docs>", id="link"),
        pytest.param("[**docs**](https://e.com)", "<https://e.com|*docs*>", id="link-formatted-label"),
        pytest.param("[a|b](https://e.com/x|y)", "<https://e.com/x%7Cy|a|b>", id="link-pipe-in-url"),
        pytest.param("<https://e.com>", "<https://e.com>", id="autolink"),
        pytest.param("[](https://e.com)", "<https://e.com>", id="link-empty-label"),
        pytest.param("see https://e.com/x now", "see https://e.com/x now", id="bare-url"),
        pytest.param("[guide](/docs/guide)", "guide (/docs/guide)", id="relative-link"),
        pytest.param("![diagram](https://e.com/d.png)", "<https://e.com/d.png|diagram>", id="image"),
        pytest.param("# Title", "*Title*", id="h1"),
        pytest.param("### Deep *title*", "*Deep _title_*", id="h3"),
        pytest.param("## **Bold** title", "*Bold title*", id="heading-drops-inner-bold"),
        pytest.param("Title\n=====", "*Title*", id="setext-heading"),
        pytest.param("- a\n- b", "• a\n• b", id="dash-bullets"),
        pytest.param("* a\n* b", "• a\n• b", id="star-bullets"),
        pytest.param("+ a\n+ b", "• a\n• b", id="plus-bullets"),
        pytest.param("- a\n\n- b", "• a\n\n• b", id="loose-list"),
        pytest.param("- a\n  - b\n    - c\n- d", "• a\n    • b\n        • c\n• d", id="nesting"),
        pytest.param("- first\n  second line", "• first\n  second line", id="item-continuation"),
        pytest.param("1. one\n2. two", "1. one\n2. two", id="numbered"),
        pytest.param("3) three\n4) four", "3) three\n4) four", id="numbered-paren-start"),
        pytest.param("1. one\n   - sub", "1. one\n    • sub", id="bullet-in-numbered"),
        pytest.param("> quoted *x*", "> quoted _x_", id="quote"),
        pytest.param("> a\n> - b", "> a\n\n> • b", id="quote-with-list"),
        pytest.param("para one\n\npara two", "para one\n\npara two", id="paragraphs"),
        pytest.param("line one\nline two", "line one\nline two", id="soft-break-kept"),
        pytest.param("---", "──────────", id="rule"),
        pytest.param("", "", id="empty"),
    ],
)
def test_conversion(markdown: str, expected: str) -> None:
    assert to_mrkdwn(markdown) == expected


@pytest.mark.parametrize(
    ("markdown", "expected"),
    [
        pytest.param("`**x** [a](b) _y_`", "`**x** [a](b) _y_`", id="inline-code"),
        pytest.param(
            "```python\n# not a heading\n- not a bullet\n**not bold**\n```",
            "```\n# not a heading\n- not a bullet\n**not bold**\n```",
            id="fence-language-dropped",
        ),
        pytest.param("~~~\n[a](https://b)\n~~~", "```\n[a](https://b)\n```", id="tilde-fence"),
        pytest.param("    indented = 1\n    more()", "```\nindented = 1\nmore()\n```", id="indented-code"),
        pytest.param("```\n  keep   spacing\n\n\n  x\n```", "```\n  keep   spacing\n\n\n  x\n```", id="spacing"),
        pytest.param("- item\n\n  ```\n  code\n  ```", "• item\n\n```\ncode\n```", id="code-in-list"),
    ],
)
def test_code_is_not_converted(markdown: str, expected: str) -> None:
    assert to_mrkdwn(markdown) == expected


@pytest.mark.parametrize(
    ("markdown", "expected"),
    [
        pytest.param("a & b < c > d", "a &amp; b &lt; c &gt; d", id="text"),
        pytest.param("`a && b < c`", "`a &amp;&amp; b &lt; c`", id="inline-code"),
        pytest.param("```\nif a < b && c > d:\n```", "```\nif a &lt; b &amp;&amp; c &gt; d:\n```", id="fence"),
        pytest.param("# R&D", "*R&amp;D*", id="heading"),
        pytest.param("[a < b](https://e.com/?x=1&y=2)", "<https://e.com/?x=1&y=2|a &lt; b>", id="link"),
        # Markdown entities mean the character they name, so each is escaped exactly once.
        pytest.param("&amp; &lt; &gt;", "&amp; &lt; &gt;", id="entities-not-double-escaped"),
        pytest.param("AT&amp;T and AT&T", "AT&amp;T and AT&amp;T", id="entity-and-raw"),
        pytest.param("&copy; 2024", "© 2024", id="named-entity"),
        pytest.param("<b>html</b>", "&lt;b&gt;html&lt;/b&gt;", id="raw-html-is-text"),
    ],
)
def test_escaping(markdown: str, expected: str) -> None:
    assert to_mrkdwn(markdown) == expected


@pytest.mark.parametrize(
    ("markdown", "expected"),
    [
        pytest.param("hey @here", f"hey @{ZWSP}here", id="here"),
        pytest.param("@channel!", f"@{ZWSP}channel!", id="channel"),
        pytest.param("@Everyone look", f"@{ZWSP}Everyone look", id="everyone-any-case"),
        pytest.param("**@here**", f"*@{ZWSP}here*", id="in-bold"),
        pytest.param("`@here`", f"`@{ZWSP}here`", id="in-code"),
        pytest.param("```\nping @channel\n```", f"```\nping @{ZWSP}channel\n```", id="in-fence"),
        pytest.param("[@here](https://e.com)", f"<https://e.com|@{ZWSP}here>", id="in-link-label"),
        pytest.param("<!here> <!channel>", "&lt;!here&gt; &lt;!channel&gt;", id="special"),
        pytest.param("<!everyone>", "&lt;!everyone&gt;", id="special-everyone"),
        pytest.param("<!subteam^S123>", "&lt;!subteam^S123&gt;", id="user-group"),
        pytest.param("hi <@U123>", "hi &lt;@U123&gt;", id="user"),
        pytest.param("<#C123>", "&lt;#C123&gt;", id="channel-link"),
        pytest.param("[x](<!here>)", "x (!here)", id="link-target-special"),
        pytest.param("[x](@U123)", "x (@U123)", id="link-target-user"),
        pytest.param("mail me@here.com or @hereby", "mail me@here.com or @hereby", id="not-mentions"),
    ],
)
def test_mentions_never_ping(markdown: str, expected: str) -> None:
    assert to_mrkdwn(markdown) == expected


def test_only_generated_links_use_angle_brackets() -> None:
    hostile = "<!here> <@U1> [a](<!channel>) [b](https://ok.example/<!everyone>) `<!here>` <https://e.com|<!here>>"
    out = to_mrkdwn(hostile)
    assert re.findall(r"<[^>]*>", out) == ["<https://ok.example/%3C!everyone%3E|b>"]


@pytest.mark.parametrize(
    "markdown",
    ["*" * 3000 + "x" + "*" * 3000, "[" * 3000 + "x" + "]" * 3000, "> " * 150 + "x", "- " * 150 + "x", "![a" * 300],
)
def test_pathological_nesting_does_not_crash(markdown: str) -> None:
    assert isinstance(to_mrkdwn(markdown), str)


def test_a_typical_answer() -> None:
    answer = (
        "## Summary\n\nUse **`pip install -e .`** first, then:\n\n"
        "1. Run *tests*\n2. See [the docs](https://docs.example.com?a=1&b=2)\n\n"
        "```bash\nmake test && echo ok\n```\n\n> Note: ~~old~~ new"
    )
    assert to_mrkdwn(answer) == (
        "*Summary*\n\nUse *`pip install -e .`* first, then:\n\n"
        "1. Run _tests_\n2. See <https://docs.example.com?a=1&b=2|the docs>\n\n"
        "```\nmake test &amp;&amp; echo ok\n```\n\n> Note: ~old~ new"
    )


# --- split_message ----------------------------------------------------------------------------------------


def _fence_lines(chunk: str) -> int:
    return sum(1 for line in chunk.split("\n") if line.lstrip().startswith(FENCE))


def _content(text: str) -> str:
    """Non-whitespace content with each backtick run reduced modulo 3.

    The splitter only adds a closing fence and, right after it, a reopening one: six backticks at one place in
    this sequence (or three after the last chunk, to close a block the text left open). Reducing every run of
    backticks modulo 3 cancels exactly those, so what is left must match the original text.
    """
    squeezed = "".join(text.split())
    return re.sub(r"`+", lambda m: "`" * (len(m.group()) % 3), squeezed)


def _check(text: str, limit: int) -> list[str]:
    chunks = split_message(text, limit)
    assert all(chunk.strip() for chunk in chunks)
    assert all(len(chunk) <= limit for chunk in chunks)
    assert all(_fence_lines(chunk) % 2 == 0 for chunk in chunks)
    assert _content("".join(chunks)) == _content(text)
    if "`" not in text:
        # Without fences nothing is added: the chunks are slices of the text, in order, with only whitespace between.
        cursor = 0
        for chunk in chunks:
            found = text.find(chunk, cursor)
            assert found >= 0 and not text[cursor:found].strip()
            cursor = found + len(chunk)
        assert not text[cursor:].strip()
    return chunks


WORD = st.text(alphabet="abcxyz&<>`*_é🙂", min_size=1, max_size=14)
LINE = st.one_of(
    st.lists(WORD, max_size=12).map(" ".join),
    st.sampled_from(["```", "```python", "  ```", "", "    indented code", "<https://e.com/a|a link>", "&amp;"]),
)
TEXT = st.one_of(
    st.lists(LINE, max_size=40).map("\n".join),
    st.text(alphabet="ab `\n\t&;<>|", max_size=200),
    st.text(max_size=80),
)


@settings(max_examples=300, deadline=None)
@given(TEXT, st.integers(min_value=MIN_LIMIT, max_value=120))
def test_split_properties(text: str, limit: int) -> None:
    chunks = _check(text, limit)
    if text.strip() and len(text) <= limit and _fence_lines(text) % 2 == 0:
        assert [chunk.strip() for chunk in chunks] == [text.strip()]


def test_empty_input_gives_no_chunks() -> None:
    assert split_message("") == []
    assert split_message(" \n\n\t ") == []


def test_limit_too_small_is_refused() -> None:
    with pytest.raises(ValueError, match="at least"):
        split_message("text", MIN_LIMIT - 1)


def test_long_answer_splits_at_paragraphs() -> None:
    paragraphs = [f"Paragraph {i}: " + " ".join(f"word{i}x{j}" for j in range(60)) for i in range(20)]
    text = "\n\n".join(paragraphs)
    assert len(text) > 10_000
    chunks = _check(text, 3900)
    assert len(chunks) == 4
    # Every cut falls between paragraphs, so each chunk is whole paragraphs in order.
    assert "\n\n".join(chunks) == text
    assert all(chunk.startswith("Paragraph ") and chunk.split()[-1].endswith("x59") for chunk in chunks)


def test_overlong_paragraph_splits_at_lines_then_words() -> None:
    lines = "\n".join("line " + "x" * 10 for _ in range(10))
    assert split_message(lines, 40) == ["\n".join(["line " + "x" * 10] * 2)] * 5
    words = " ".join(["word"] * 20)
    assert split_message(words, 20) == ["word word word word"] * 5


def test_long_code_block_is_closed_and_reopened() -> None:
    code = "\n".join(f"    value_{i} = compute({i})  # step {i}" for i in range(300))
    text = f"Here is the script:\n\n```\n{code}\n```\n\nThat is all."
    chunks = _check(text, 3900)
    assert len(chunks) >= 3
    # The paragraph break before the code is the preferred cut; inside the code only line breaks are left.
    assert chunks[0] == "Here is the script:"
    assert chunks[1].startswith("```\n    value_0 =")
    assert all(chunk.endswith("\n```") for chunk in chunks[1:-1])
    assert all(chunk.startswith("```\n    value_") for chunk in chunks[2:])
    assert chunks[-1].endswith("```\n\nThat is all.")
    body = [line for chunk in chunks for line in chunk.split("\n") if line.startswith("    value_")]
    assert body == code.split("\n")


def test_unclosed_code_block_is_closed() -> None:
    assert split_message("```\nprint(1)") == ["```\nprint(1)\n```"]


def test_one_overlong_word_is_hard_cut() -> None:
    word = "x" * 5000
    chunks = _check(f"before {word} after", 3900)
    assert chunks == ["before", "x" * 3900, "x" * 1100 + " after"]


def test_cut_does_not_split_a_link_or_entity() -> None:
    text = "see " + "<https://example.com/page|the page>" + " now &amp; then"
    assert split_message(text, 38) == ["see", "<https://example.com/page|the page>", "now &amp; then"]
    assert split_message("abcde&amp;f", 9) == ["abcde", "&amp;f"]


def test_indentation_is_kept_at_line_cuts() -> None:
    text = "• a\n    • b\n    • c"
    assert split_message(text, 12) == ["• a\n    • b", "    • c"]
    # Unless the indentation alone would fill a chunk.
    assert split_message(" " * 20 + "deep", 12) == ["deep"]


def test_converted_answer_round_trip() -> None:
    answer = "# Report\n\n" + "\n".join(f"- item **{i}** & <stuff>" for i in range(400)) + "\n\n```\ncode()\n```"
    chunks = _check(to_mrkdwn(answer), 3900)
    assert chunks[0] == "*Report*"
    assert all(chunk.startswith("• item *") for chunk in chunks[1:])
    assert chunks[-1].endswith("\n\n```\ncode()\n```")
