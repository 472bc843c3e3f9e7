"""Prometheus metrics: messages, model calls, approvals, the inbox and scheduled jobs, plus the circuit
breakers and the MCP servers, read from them at scrape time. Tool calls are counted by the runner's MetricsHook.

No label holds a user or channel id: labels are platforms, outcomes, model, tool and job names, all bounded.
The breakers use a collector rather than counters updated on every call: the breaker already counts, so the
numbers cannot drift apart, and no breaker code depends on Prometheus.
"""

from __future__ import annotations

import time
import weakref
from collections.abc import Iterator
from functools import cache
from typing import TypeVar

from prometheus_client import REGISTRY, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from agent.mcp import McpConnection, McpServers
from agent.messages import IncomingMessage
from agent.resilience import CircuitBreaker, State
from agent.storage.models import ChainRecord

C = TypeVar("C", bound=Collector)

LATENCY_BUCKETS = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)

MESSAGES = Counter(
    "parley_messages", "Messages handled, by platform and outcome (the reply's status).", ["platform", "outcome"]
)
MESSAGE_SECONDS = Histogram(
    "parley_message_seconds", "From receiving a message to its reply delivered.", ["platform"], buckets=LATENCY_BUCKETS
)
MODEL_CALLS = Counter("parley_model_calls", "Model calls of recorded answers, by model.", ["model"])
MODEL_TOKENS = Counter(
    "parley_model_tokens", "Model tokens, by model and direction (input, output).", ["model", "direction"]
)
# Only answers whose model has a known price add to it; a model that runs in process adds 0.
MODEL_COST = Counter(
    "parley_model_cost_usd", "What model calls cost in USD, by model, where the price is known.", ["model"]
)
MODEL_SECONDS = Histogram(
    "parley_model_call_seconds", "Duration of one model call.", ["model"], buckets=LATENCY_BUCKETS
)
APPROVALS = Counter(
    "parley_approvals",
    "Approval requests by outcome: requested, approved, denied, expired, always, policy_denied.",
    ["outcome"],
)
INBOX_DEPTH = Gauge("parley_inbox_depth", "Messages waiting for an answer or being answered in this process.")
CLAIMS = Counter(
    "parley_conversation_claims",
    "Conversation claims by outcome: taken (this replica answers it), busy (another replica does), lost (taken "
    "over after this replica's claim lapsed).",
    ["outcome"],
)
JOB_RUNS = Counter(
    "parley_job_runs", "Scheduled job runs by job and outcome (ok, failed, skipped).", ["job", "outcome"]
)


def observe_delivery(message: IncomingMessage, status: str) -> None:
    """A reply reached the platform (or could not: status `undelivered`)."""
    MESSAGES.labels(message.platform, status).inc()
    MESSAGE_SECONDS.labels(message.platform).observe(max(time.time() - message.received_at, 0.0))


def observe_claim(outcome: str) -> None:
    CLAIMS.labels(outcome).inc()


def observe_chain(message: IncomingMessage, chain: ChainRecord) -> None:
    """The agent's observer: model calls, tokens, cost and per-call latency of each recorded answer."""
    if chain.model_calls:
        MODEL_CALLS.labels(chain.model).inc(chain.model_calls)
    if chain.cost is not None:
        MODEL_COST.labels(chain.model).inc(chain.cost)
    for direction, tokens in (("input", chain.input_tokens), ("output", chain.output_tokens)):
        if tokens:
            MODEL_TOKENS.labels(chain.model, direction).inc(tokens)
    for step in chain.steps:
        if step.model_ms is not None:
            MODEL_SECONDS.labels(chain.model).observe(step.model_ms / 1000)


def observe_approval(outcome: str) -> None:
    APPROVALS.labels(outcome).inc()


def observe_job(job: str, outcome: str) -> None:
    JOB_RUNS.labels(job, outcome).inc()


STATE_VALUES = {State.CLOSED: 0, State.HALF_OPEN: 1, State.OPEN: 2}


class BreakerCollector(Collector):
    """`parley_breaker_state` (0 closed, 1 half-open, 2 open) and call, failure, rejection and transition
    counters, one series per breaker name. A breaker is reported while it is alive; the newest of a name wins."""

    def __init__(self) -> None:
        self._breakers: weakref.WeakValueDictionary[str, CircuitBreaker] = weakref.WeakValueDictionary()

    def track(self, breaker: CircuitBreaker) -> CircuitBreaker:
        self._breakers[breaker.name] = breaker
        return breaker

    def collect(self) -> Iterator[Metric]:
        state = GaugeMetricFamily(
            "parley_breaker_state", "Circuit state: 0 closed, 1 half-open, 2 open.", labels=["breaker"]
        )
        calls = CounterMetricFamily("parley_breaker_calls", "Calls let through the breaker.", labels=["breaker"])
        failures = CounterMetricFamily("parley_breaker_failures", "Calls that failed.", labels=["breaker"])
        rejections = CounterMetricFamily(
            "parley_breaker_rejections", "Calls refused while open or during the half-open trial.", labels=["breaker"]
        )
        transitions = CounterMetricFamily(
            "parley_breaker_transitions", "State changes by the state entered.", labels=["breaker", "to"]
        )
        for name, breaker in sorted(self._breakers.items()):
            m = breaker.metrics
            state.add_metric([name], STATE_VALUES[breaker.state])
            calls.add_metric([name], m.calls)
            failures.add_metric([name], m.failures)
            rejections.add_metric([name], m.rejections)
            for to in State:
                transitions.add_metric([name, to.value], m.entered[to])
        yield from (state, calls, failures, rejections, transitions)


@cache
def breaker_collector() -> BreakerCollector:
    """The process's breaker collector, registered once: Prometheus refuses the same metric names twice."""
    return _registered(BreakerCollector())


class McpCollector(Collector):
    """Per MCP server: `parley_mcp_server_up` (1 connected, 0 not), its tool count, and counters of connections
    made, attempts failed, connections dropped, calls and failed calls. Like the breakers: read from the
    connection's own counts; a server is reported while its connection is alive, the newest of a name wins."""

    def __init__(self) -> None:
        self._connections: weakref.WeakValueDictionary[str, McpConnection] = weakref.WeakValueDictionary()

    def track(self, servers: McpServers) -> McpServers:
        for name, connection in servers.connections.items():
            self._connections[name] = connection
        return servers

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily("parley_mcp_server_up", "1 while the MCP server is connected.", labels=["server"])
        tools = GaugeMetricFamily("parley_mcp_server_tools", "Tools the MCP server lists.", labels=["server"])
        counters = {
            "connects": CounterMetricFamily("parley_mcp_connects", "Connections made.", labels=["server"]),
            "connect_failures": CounterMetricFamily(
                "parley_mcp_connect_failures", "Connection attempts that failed.", labels=["server"]
            ),
            "drops": CounterMetricFamily(
                "parley_mcp_drops", "Connections lost after they were made.", labels=["server"]
            ),
            "calls": CounterMetricFamily("parley_mcp_calls", "Tool calls sent to the server.", labels=["server"]),
            "call_failures": CounterMetricFamily(
                "parley_mcp_call_failures", "Calls that failed, errored or were cut off.", labels=["server"]
            ),
        }
        for name, connection in sorted(self._connections.items()):
            status = connection.status
            up.add_metric([name], 1 if status.ok else 0)
            tools.add_metric([name], status.tools)
            for field, family in counters.items():
                family.add_metric([name], getattr(connection.counters, field))
        yield from (up, tools, *counters.values())


@cache
def mcp_collector() -> McpCollector:
    """The process's MCP collector, registered once (see `breaker_collector`)."""
    return _registered(McpCollector())


def _registered(collector: C) -> C:
    REGISTRY.register(collector)
    return collector
