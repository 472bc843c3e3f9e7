"""Redaction of secrets in text that leaves the process: chain exports, logs, error reports."""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

MASK = "[redacted]"

# Token shapes worth hiding wherever they appear: Slack, OpenAI-style keys, bearer headers, AWS ids,
# credentials in URLs and key=value pairs whose name says secret.
PATTERNS = (
    re.compile(r"\bxox[abposr]-[A-Za-z0-9-]{8,}"),
    re.compile(r"\bxapp-[A-Za-z0-9-]{8,}"),
    re.compile(r"\bsk-[A-Za-z0-9_-]{16,}"),
    re.compile(r"\bAKIA[0-9A-Z]{16}\b"),
    re.compile(r"(?i)\bbearer\s+[A-Za-z0-9._~+/=-]{8,}"),
    re.compile(r"(?<=://)[^/\s:@]+:[^/\s@]+(?=@)"),
    re.compile(
        r"(?i)(?<=[?&\s\"'])(?:api[_-]?key|appid|token|access_token|secret|password|passwd)=[^&\s\"']+",
    ),
)


class Redactor:
    """Masks known secret values (from settings) and anything shaped like a token."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        self.secrets = sorted({s for s in secrets if len(s) >= 6}, key=len, reverse=True)

    def text(self, value: str) -> str:
        for secret in self.secrets:
            value = value.replace(secret, MASK)
        for pattern in PATTERNS:
            value = pattern.sub(self._mask, value)
        return value

    @staticmethod
    def _mask(match: re.Match[str]) -> str:
        found = match.group(0)
        name, sep, _ = found.partition("=")
        return f"{name}={MASK}" if sep and "://" not in found else MASK

    def data(self, value: Any) -> Any:
        """Redact every string inside JSON-like data."""
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, dict):
            return {k: self.data(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [self.data(v) for v in value]
        return value
