"""Which words of a text are worth indexing or matching, and the channel scope folded into each indexed term.

Both engines index facts by these words, so a fact is found by the same query on SQLite and PostgreSQL.
"""

from __future__ import annotations

import hashlib
import re

# Words so common that matching them says nothing about relevance; dropped from fact queries.
STOPWORDS = frozenset(
    [
        "a",
        "about",
        "after",
        "all",
        "also",
        "am",
        "an",
        "and",
        "any",
        "are",
        "as",
        "at",
        "be",
        "been",
        "before",
        "being",
        "but",
        "by",
        "can",
        "could",
        "did",
        "do",
        "does",
        "doing",
        "for",
        "from",
        "had",
        "has",
        "have",
        "having",
        "he",
        "her",
        "here",
        "hers",
        "him",
        "his",
        "how",
        "i",
        "if",
        "in",
        "into",
        "is",
        "it",
        "its",
        "just",
        "me",
        "my",
        "no",
        "nor",
        "not",
        "now",
        "of",
        "off",
        "on",
        "once",
        "only",
        "or",
        "other",
        "our",
        "ours",
        "out",
        "over",
        "own",
        "same",
        "she",
        "should",
        "so",
        "some",
        "such",
        "than",
        "that",
        "the",
        "their",
        "them",
        "then",
        "there",
        "these",
        "they",
        "this",
        "those",
        "through",
        "to",
        "too",
        "under",
        "until",
        "up",
        "very",
        "was",
        "we",
        "were",
        "what",
        "when",
        "where",
        "which",
        "while",
        "who",
        "whom",
        "why",
        "will",
        "with",
        "would",
        "you",
        "your",
        "yours",
        "please",
        "tell",
        "know",
        "remember",
    ]
)
WORD = re.compile(r"[^\W_]+", re.UNICODE)
MAX_QUERY_TERMS = 16


def scope_token(channel: str) -> str:
    """A fixed-length prefix that stands for a channel: hex of a hash, so no user word can forge it."""
    return "ch" + hashlib.blake2b(channel.encode(), digest_size=10).hexdigest()


def words(text: str) -> list[str]:
    """The words of `text` worth indexing or matching: lower-cased, letters and digits, common words dropped."""
    return [w for w in WORD.findall(text.lower()) if w not in STOPWORDS and (len(w) > 1 or w.isdigit())]


def query_terms(text: str) -> list[str]:
    """The distinct words of a query, in order, at most MAX_QUERY_TERMS."""
    return list(dict.fromkeys(words(text)))[:MAX_QUERY_TERMS]


def channel_terms(channel: str, text: str) -> str:
    """What the FTS index stores for `text`: every word glued to the channel's prefix (one token each)."""
    scope = scope_token(channel)
    return " ".join(scope + w for w in words(text))
