"""Error reporting and per-run context: Sentry set up once inside the loop, and one context per handled message
or job run that both the log lines (structlog context variables) and the Sentry events (an isolation scope)
carry. Secrets are masked before an event leaves the process.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from typing import Any

import sentry_sdk
import structlog
from sentry_sdk.integrations.asyncio import AsyncioIntegration
from sentry_sdk.integrations.logging import LoggingIntegration
from sentry_sdk.types import Event, Hint

from agent.redact import Redactor
from bot.config import SentrySettings

log = logging.getLogger("parley.observe")

# Context variables that become Sentry tags in `before_send`: the error id (and, at the HTTP edge, the request's
# event id) is bound where the failure is logged (in the agent and adapters too, which know nothing of Sentry);
# the run's own tags are on its isolation scope.
TAGGED = ("error_id", "event_id")


@contextmanager
def run_context(**tags: str) -> Iterator[None]:
    """Bind `tags` to every log line and Sentry event inside the block, in an isolation scope of its own."""
    with sentry_sdk.isolation_scope() as scope, structlog.contextvars.bound_contextvars(**tags):
        for key, value in tags.items():
            scope.set_tag(key, value)
        yield


def scrubber(redactor: Redactor) -> Any:
    """Sentry's `before_send`: tag the event with the bound context, then mask secrets everywhere in it."""

    def before_send(event: Event, hint: Hint) -> Event | None:
        bound = structlog.contextvars.get_contextvars()
        tags = event.setdefault("tags", {})
        if isinstance(tags, dict):
            for key in TAGGED:
                if key in bound:
                    tags[key] = str(bound[key])
        scrubbed: Event = redactor.data(event)
        return scrubbed

    return before_send


def init_sentry(settings: SentrySettings, secrets: Sequence[str]) -> bool:
    """Start Sentry when a DSN is set. Call inside the running loop: the asyncio integration hooks that loop.

    Local variables are never sent (they hold messages and tokens), nor (by default) personal data; error logs become
    events, other log lines breadcrumbs.
    """
    if settings.dsn is None:
        return False
    sentry_sdk.init(
        dsn=settings.dsn.get_secret_value(),
        environment=settings.environment,
        release=_release(),
        integrations=[AsyncioIntegration(), LoggingIntegration(level=logging.INFO, event_level=logging.ERROR)],
        include_local_variables=False,
        max_request_body_size="never",
        before_send=scrubber(Redactor(secrets)),
    )
    log.info("error reports go to Sentry")
    return True


@asynccontextmanager
async def error_reports(settings: SentrySettings, secrets: Sequence[str]) -> AsyncIterator[bool]:
    """Sentry for the block (inside the running loop); what is queued is sent before the block ends."""
    enabled = init_sentry(settings, secrets)
    try:
        yield enabled
    finally:
        if enabled:
            sentry_sdk.get_client().close(timeout=2.0)
            sentry_sdk.get_global_scope().set_client(None)


def _release() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return f"parley@{version('parley')}"
    except PackageNotFoundError:
        return "parley@dev"
