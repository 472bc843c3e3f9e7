"""What model calls cost, in USD, from the price table litellm ships (never fetched: see `agent/__init__.py`).

Budgets in money and the cost columns of `parley usage` read these numbers, so a model whose price is not in the
table costs None (unknown), never 0: an unknown price must not pass for a free model. The models that run in
this process (the embedded `local` one, and the scripted one of tests and demos) cost 0.0.

litellm is imported on first use, not at import: it takes seconds, and a process that only talks to in-process
models never needs it (a process that calls a provider through `dspy.LM` has imported it already).
"""

from __future__ import annotations

from functools import lru_cache

from agent.chains import AnswerMeter, ModelUsage
from agent.options import LOCAL_MODEL, SCRIPTED_MODEL

IN_PROCESS = frozenset({LOCAL_MODEL, SCRIPTED_MODEL})


def cost_of(model: str, input_tokens: int, output_tokens: int) -> float | None:
    """The price of these tokens on `model` (a dspy.LM id such as `openai/gpt-4o-mini`), or None when litellm's
    table does not know the model."""
    if model in IN_PROCESS:
        return 0.0
    if not _listed(model):
        return None
    import litellm

    try:
        prompt, completion = litellm.cost_per_token(
            model=model, prompt_tokens=max(input_tokens, 0), completion_tokens=max(output_tokens, 0)
        )
    except Exception:  # litellm raises its own errors (and plain ones) for models it cannot price
        return None
    return float(prompt) + float(completion)


@lru_cache(maxsize=256)
def _listed(model: str) -> bool:
    """Whether litellm can price `model` without guessing: a provider it knows (`openai/...`), or a bare name in
    its table. litellm prints a provider list to stdout for an id of neither kind, so those never reach it."""
    import litellm

    if "/" in model:
        return model.split("/", 1)[0] in litellm.provider_list
    return model in litellm.model_cost


def metered_cost(meter: AnswerMeter) -> float | None:
    """What an answer's model calls cost, each model's at its own price: None when no model was called, or when
    any model's part cannot be priced (a partial bill would pass for the whole)."""
    parts = [answer_cost(model, usage) for model, usage in meter.by_model.items()]
    if not parts or any(part is None for part in parts):
        return None
    return sum(part for part in parts if part is not None)


def answer_cost(model: str, usage: ModelUsage) -> float | None:
    """What an answer's model calls cost on `model` (the one that answered): None when no model was called, or
    when the provider did not report the tokens (a price for unknown tokens would pass for a small bill)."""
    if not usage.calls or usage.input_tokens is None or usage.output_tokens is None:
        return None
    return cost_of(model, usage.input_tokens, usage.output_tokens)
