"""The composition root: settings in, the storage, model and agent out."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace

from agent.approvals import ApprovalBroker, ApprovalPolicy
from agent.engines import LOCAL_MODEL, ModelConfig, ModelHandle, build_model
from agent.mcp import McpServers
from agent.messages import IncomingMessage
from agent.resilience import CircuitBreaker
from agent.runtime import Agent, AgentOptions, Resilience
from agent.storage import Storage
from agent.storage.models import Replica
from agent.tools.runner import ToolRunner
from bot.budgets import BudgetGuard
from bot.channels import ChannelConfig
from bot.config import ModelSettings, Settings
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
    # Channel settings (resolved per message; shown and changed by `/parley channel` and `parley channel`).
    channels: ChannelConfig
    budgets: BudgetGuard
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
        stream=lm.stream,
    )


def named_model_config(settings: Settings, named: ModelSettings) -> ModelConfig:
    """A `[models.NAME]` table over `[lm]`: each field it leaves unset is `[lm]`'s."""
    base = model_config(settings)
    key = named.api_key.get_secret_value() if named.api_key else None
    return replace(
        base,
        model=named.model,
        api_base=named.api_base if named.api_base is not None else base.api_base,
        api_key=key if key is not None else base.api_key,
        timeout_s=named.timeout_s if named.timeout_s is not None else base.timeout_s,
        max_tokens=named.max_tokens if named.max_tokens is not None else base.max_tokens,
        temperature=named.temperature if named.temperature is not None else base.temperature,
        vision=named.vision if named.vision is not None else base.vision,
        stream=named.stream if named.stream is not None else base.stream,
    )


def named_models(
    settings: Settings, default: ModelHandle, fallback: ModelHandle | None = None
) -> dict[str, ModelHandle]:
    """The `[models.NAME]` handles. One that is configured exactly as the default (or the fallback) model is that
    model's handle, breaker included; the embedded model is loaded once whatever names it has."""
    default_config = model_config(settings)
    fb_config = fallback_config(settings)
    built: dict[ModelConfig | str, ModelHandle] = {default_config: default}
    if fallback is not None and fb_config is not None:
        built.setdefault(fb_config, fallback)
    if default_config.model == LOCAL_MODEL:
        built[LOCAL_MODEL] = default
    handles = {}
    for name, named in settings.models.items():
        config = named_model_config(settings, named)
        key: ModelConfig | str = LOCAL_MODEL if config.model == LOCAL_MODEL else config
        if key not in built:
            built[key] = build_model(config)
        handles[name] = built[key]
    return handles


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
        stream=settings.lm.stream,
    )


def resilience(settings: Settings, fallback: ModelHandle | None, models: Iterable[str] = ()) -> Resilience:
    """Each model behind its own breaker (the named `models` too), then the fallback reply."""
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
        breakers={name: breaker(f"model:{name}") for name in models},
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
                models = named_models(settings, handle, fallback)
                agent = Agent(
                    storage,
                    handle,
                    runner,
                    agent_options(settings),
                    resilience(settings, fallback, _own_breakers(models, handle, fallback)),
                    observers=[observe_chain],
                    models=models,
                )
                registry = runner.registry
                channels = ChannelConfig(
                    settings,
                    storage,
                    tool_names=lambda: [spec.name for spec in registry],
                    enabled_tool_names=lambda: [spec.name for spec in registry.enabled()],
                )
                budgets = BudgetGuard(storage.usage, is_approver=approver_check(approvals.policy))
                yield App(settings, storage, agent, runner, approvals, mcp, channels, budgets)
        finally:
            runner.close()


def _own_breakers(models: dict[str, ModelHandle], default: ModelHandle, fallback: ModelHandle | None) -> list[str]:
    """The named models that need a breaker of their own: not the default or the fallback model, and each model
    once under its first name."""
    seen = {id(default)} | ({id(fallback)} if fallback is not None else set())
    names = []
    for name, handle in models.items():
        if id(handle) not in seen:
            seen.add(id(handle))
            names.append(name)
    return names


def approver_check(policy: ApprovalPolicy) -> Callable[[IncomingMessage], bool]:
    """Whether the sender of a message is an approver in its channel, by user or role id, in a thread-channel by
    its parent channel's list (budgets may exempt them)."""

    def check(message: IncomingMessage) -> bool:
        conversation = message.conversation
        return policy.is_approver(
            message.platform, conversation.channel, message.user, message.roles, parent=conversation.parent
        )

    return check
