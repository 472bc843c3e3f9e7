"""Prometheus metrics of the circuit breakers, read from the breakers themselves at scrape time.

A collector rather than counters updated on every call: the breaker already counts, so the numbers cannot
drift apart, and no breaker code depends on Prometheus.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterator

from prometheus_client import REGISTRY, CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from agent.resilience import CircuitBreaker, State

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


_collector: BreakerCollector | None = None


def breaker_collector(registry: CollectorRegistry = REGISTRY) -> BreakerCollector:
    """The process's collector, registered once: Prometheus refuses the same metric names twice."""
    global _collector
    if _collector is None:
        _collector = BreakerCollector()
        registry.register(_collector)
    return _collector
