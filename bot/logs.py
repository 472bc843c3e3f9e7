"""Logging: structlog on top of the standard library, JSON off a terminal, readable on one, always stderr."""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence
from typing import Any

import structlog

from agent.redact import Redactor


def redacting(redactor: Redactor) -> structlog.typing.Processor:
    """A processor that masks secrets (the settings' own, and anything shaped like a token) in every field,
    the rendered message and the traceback included."""

    def redact(logger: Any, method: str, event: structlog.typing.EventDict) -> structlog.typing.EventDict:
        return {key: redactor.data(value) for key, value in event.items()}

    return redact


def configure_logging(level: str = "WARNING", *, format: str = "auto", secrets: Sequence[str] = ()) -> None:
    """Route every logger (ours and the libraries': Slack, Discord, APScheduler, aiohttp) through one structlog
    formatter on stderr: JSON off a terminal, readable on one (`format` forces either)."""
    shared: list[structlog.typing.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso"),
    ]
    readable = sys.stderr.isatty() if format == "auto" else format == "console"
    renderer: structlog.typing.Processor = (
        structlog.dev.ConsoleRenderer() if readable else structlog.processors.JSONRenderer()
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=shared,
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.format_exc_info,
                redacting(Redactor(secrets)),
                renderer,
            ],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for noisy in ("LiteLLM", "litellm", "httpx", "dspy"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
