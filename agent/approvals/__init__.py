"""Tool approvals: policy, requests bound to exact calls, decisions by compare-and-set, an append-only audit."""

from agent.approvals.broker import ApprovalBroker, ApprovalPort
from agent.approvals.models import ApprovalPolicy, ApprovalRequest, ApprovalState, PromptLocation, Verdict, args_hash
from agent.approvals.store import ApprovalStore, AuditEntry, Grant

__all__ = [
    "ApprovalBroker",
    "ApprovalPolicy",
    "ApprovalPort",
    "ApprovalRequest",
    "ApprovalState",
    "ApprovalStore",
    "AuditEntry",
    "Grant",
    "PromptLocation",
    "Verdict",
    "args_hash",
]
