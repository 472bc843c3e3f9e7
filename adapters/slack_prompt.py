"""The Slack approval prompt in Block Kit: a header, one section per argument, the expiry, the buttons.

Each argument is a section of its own (Slack allows 3,000 characters per section and 50 blocks per message):
its name in a code span and its value (see adapters/approval_text.py) in a code block, with `&`, `<` and `>`
entity-escaped, so `<!channel>` or `<https://a|b>` in a value is shown as those characters and is neither a
ping nor a link. Sections are `verbatim`, so Slack does not turn bare URLs, @here or #channel names into links
or mentions either. A folded value ends with an italic marker outside its code block: it cannot be mistaken
for part of the value.
"""

from __future__ import annotations

import time
from typing import Any

from adapters.approval_text import ShownCall, fold_marker, hidden_marker, shown_name
from agent.approvals import ApprovalRequest

__all__ = ["FILE_ABOVE", "MAX_LISTED_ARGUMENTS", "NO_FILE", "literal", "prompt_blocks", "section"]

# Where a folded prompt's full arguments are: a file posted just before the prompt, so nobody sees the prompt
# (and its buttons) without it.
FILE_ABOVE = "full arguments in the file above"
NO_FILE = "the full arguments could not be attached"
# Slack's 50 blocks, less the header, the note of unlisted arguments, the expiry and the buttons.
MAX_LISTED_ARGUMENTS = 45

_MRKDWN = str.maketrans({"&": "&amp;", "<": "&lt;", ">": "&gt;"})


def literal(text: str) -> str:
    """Text Slack shows as it is: its three control characters entity-escaped."""
    return text.translate(_MRKDWN)


def section(text: str) -> dict[str, Any]:
    """A mrkdwn section Slack does not pre-process (no automatic links or mentions): only explicit markup counts."""
    return {"type": "section", "text": {"type": "mrkdwn", "text": text, "verbatim": True}}


def prompt_blocks(
    request: ApprovalRequest, shown: ShownCall, where: str, buttons: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    """The prompt's blocks; `where` says where the full arguments are when `shown` is folded."""
    tool = literal(shown_name(request.tool))
    blocks = [section(f"*Approval needed*: <@{request.requester}> asked me to run `{tool}`.")]
    for argument in shown.arguments:
        text = f"`{literal(argument.name)}`\n```{literal(argument.value)}```"
        if argument.folded:
            text += f"\n_{literal(fold_marker(argument, where))}_"
        blocks.append(section(text))
    if shown.hidden:
        blocks.append(section(f"_{literal(hidden_marker(shown.hidden, where))}_"))
    elif not shown.arguments:
        blocks.append(section("_No arguments._"))
    who = "the person who asked" if request.level == "confirm" else "an approver"
    expires = int(request.expires_at)
    minutes = round((request.expires_at - time.time()) / 60)
    blocks.append(section(f"Needs {who}. Expires <!date^{expires}^{{time}}|in {minutes} min>."))
    blocks.append({"type": "actions", "elements": buttons})
    return blocks
