"""Tool approvals: policy, requests bound to exact calls, decisions by compare-and-set, an append-only audit.

The broker is imported on first use: it pulls in the tool runner (and DSPy with it), which the storage seam
and the `parley db` commands, reading only the models, should not pay for.
"""

from typing import TYPE_CHECKING, Any

from agent.approvals.models import (
    ApprovalPolicy,
    ApprovalRequest,
    ApprovalState,
    Decision,
    PromptLocation,
    Verdict,
    args_hash,
)

if TYPE_CHECKING:
    from agent.approvals.broker import ApprovalBroker, ApprovalPort

__all__ = [
    "ApprovalBroker",
    "ApprovalPolicy",
    "ApprovalPort",
    "ApprovalRequest",
    "ApprovalState",
    "Decision",
    "PromptLocation",
    "Verdict",
    "args_hash",
]


def __getattr__(name: str) -> Any:
    if name in ("ApprovalBroker", "ApprovalPort"):
        from agent.approvals import broker

        return getattr(broker, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
