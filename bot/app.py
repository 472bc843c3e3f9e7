"""The composition root: settings in, the storage, model and agent out."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

from agent.approvals import ApprovalBroker, ApprovalPolicy
from agent.engines import ModelConfig, ModelHandle, build_model
from agent.mcp import McpServers
from agent.resilience import CircuitBreaker
from agent.runtime import Agent, AgentOptions, Resilience
from agent.storage import Storage
from agent.storage.models import Replica
from agent.tools.runner import ToolRunner
from bot.config import Settings
from bot.database import open_db
from bot.dispatcher import DispatchOptions, new_replica
from bot.mcp import server_specs
from bot.metrics import breaker_collector, mcp_collector, observe_approval, observe_chain
from bot.tools import build_runner


@dataclass
class App:
    settings: Settings
    storage: Storage
    agent: Agent
    runner: ToolRunner
    approvals: ApprovalBroker
    mcp: McpServers
    # This process among the replicas sharing the database: the dispatcher and the scheduler record it.
    replica: Replica = field(default_factory=new_replica)


def model_config(settings: Settings) -> ModelConfig:
    lm = settings.lm
    return ModelConfig(
        model=lm.model,
        api_base=lm.api_base,
        api_key=lm.api_key.get_secret_value() if lm.api_key else None,
        timeout_s=lm.timeout_s,
        max_tokens=lm.max_tokens,
        temperature=lm.temperature,
        vision=lm.vision,
    )


def fallback_config(settings: Settings) -> ModelConfig | None:
    fb = settings.fallback
    if not fb.model:
        return None
    return ModelConfig(
        model=fb.model,
        api_base=fb.api_base,
        api_key=fb.api_key.get_secret_value() if fb.api_key else None,
        timeout_s=settings.lm.timeout_s,
        max_tokens=settings.lm.max_tokens,
        temperature=settings.lm.temperature,
    )


def resilience(settings: Settings, fallback: ModelHandle | None) -> Resilience:
    """Each model behind its own breaker, then the fallback reply."""
    b = settings.breaker

    def breaker(name: str) -> CircuitBreaker:
        return breaker_collector().track(
            CircuitBreaker(
                name,
                failure_threshold=b.failure_threshold,
                reset_timeout_s=b.reset_timeout_s,
                success_threshold=b.success_threshold,
            )
        )

    return Resilience(
        fallback=fallback,
        breaker=breaker("primary"),
        fallback_breaker=breaker("fallback"),
        fallback_reply=settings.fallback.reply,
    )


def agent_options(settings: Settings) -> AgentOptions:
    return AgentOptions(
        max_iters=settings.agent.max_iters,
        max_message_chars=settings.agent.max_message_chars,
        context_turns=settings.memory.context_turns,
        facts_k=settings.memory.facts_k,
        mode=settings.agent.mode,
        concurrency=settings.agent.concurrency,
        max_subquestions=settings.agent.max_subquestions,
        voters=settings.agent.voters,
        vote_threshold=settings.agent.vote_threshold,
        temperature=settings.lm.temperature,
        answer_timeout_s=settings.agent.answer_timeout_s,
        attachments=settings.attachments.limits(),
    )


def approval_policy(settings: Settings) -> ApprovalPolicy:
    a = settings.approvals
    return ApprovalPolicy(
        approvers=a.approvers,
        approver_roles=a.roles,
        channel_approvers=a.channels,
        allow_self_approval=a.allow_self_approval,
        expiry_s=a.expiry_s,
        max_waiting_per_user=a.max_waiting_per_user,
    )


def dispatch_options(settings: Settings, *, rate_limited: bool = True) -> DispatchOptions:
    """The dispatcher's settings; the console (one local user) runs without the per-user rate limit."""
    d = settings.dispatch
    return DispatchOptions(
        concurrency=settings.agent.concurrency,
        rate_limit=d.rate_limit if rate_limited else None,
        grace_s=d.shutdown_grace_s,
        max_attempts=d.max_attempts,
        delivery_attempts=d.delivery_attempts,
        claim_ttl_s=d.claim_ttl_s,
        poll_s=d.poll_s,
    )


@asynccontextmanager
async def build_app(settings: Settings, model: ModelHandle | None = None) -> AsyncIterator[App]:
    """Open everything the agent needs; closes the database and stops MCP servers however the block ends.

    MCP servers connect before the agent is built, so it starts with the tools of every server that answered."""
    async with open_db(settings) as storage:
        approvals = ApprovalBroker(storage.approvals, approval_policy(settings), observe=observe_approval)
        runner = build_runner(settings, storage, gate=approvals)
        try:
            async with McpServers(server_specs(settings), runner.registry) as mcp:
                mcp_collector().track(mcp)
                handle = model or build_model(model_config(settings))
                fb_config = fallback_config(settings)
                fallback = build_model(fb_config) if fb_config else None
                agent = Agent(
                    storage,
                    handle,
                    runner,
                    agent_options(settings),
                    resilience(settings, fallback),
                    observers=[observe_chain],
                )
                yield App(settings, storage, agent, runner, approvals, mcp)
        finally:
            runner.close()
