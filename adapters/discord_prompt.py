"""The Discord approval prompt: its text, at most one message (2,000 characters), and what it becomes once settled.

Each argument's name is in a code span and its value (see adapters/approval_text.py) in a code block, where
Discord renders no markdown, no mention and no masked link, so `<@&role>`, `@everyone` or `[a](https://b)` in a
value are shown as those characters; the prompt is also sent with `AllowedMentions.none()`, so nothing in it can
ping. A folded value ends with an italic marker outside its code block, and the complete arguments are a JSON
file attached to the same message: they arrive with the prompt, never after it.
"""

from __future__ import annotations

from adapters.approval_text import ShownCall, fold_marker, hidden_marker, shown_name
from agent.approvals import ApprovalRequest

__all__ = ["ATTACHED", "prompt_text", "settled_text"]

ATTACHED = "full arguments in the attached file"


def prompt_text(request: ApprovalRequest, shown: ShownCall) -> str:
    """The prompt's content; with `shown` folded, the full arguments must be attached to it."""
    parts = [f"**Approval needed**: <@{request.requester}> asked me to run `{shown_name(request.tool)}`."]
    for argument in shown.arguments:
        text = f"`{argument.name}`\n```\n{argument.value}\n```"
        if argument.folded:
            text += f"\n*{fold_marker(argument, ATTACHED)}*"
        parts.append(text)
    if shown.hidden:
        parts.append(f"*{hidden_marker(shown.hidden, ATTACHED)}*")
    elif not shown.arguments:
        parts.append("*No arguments.*")
    who = "the person who asked" if request.level == "confirm" else "an approver"
    parts.append(f"Needs {who}. Expires <t:{int(request.expires_at)}:R>.")
    return "\n".join(parts)


def settled_text(request: ApprovalRequest) -> str:
    """What the prompt says once decided or expired (its buttons are removed; an attached file stays)."""
    return f"`{shown_name(request.tool)}` asked by <@{request.requester}>: {request.outcome}."
