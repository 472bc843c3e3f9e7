"""Model engines behind one factory: any `dspy.LM` model id, `local` (embedded llama.cpp), or scripted."""

from __future__ import annotations

from dataclasses import dataclass

import dspy

from agent.adapter import CachedJSONAdapter
from agent.engines.scripted import AsyncScriptedEngine, ScriptedEngine
from agent.options import LOCAL_MODEL, SCRIPTED_MODEL, ModelConfig

_configured = False


@dataclass(frozen=True)
class ModelHandle:
    """A ready `dspy.LM` plus what the runtime must know about it."""

    lm: dspy.LM
    name: str
    # Small local models need every step constrained by a JSON schema to produce valid steps.
    constrained: bool = False
    # Takes images: shared pictures are shown to it (as `dspy.Image`) instead of described.
    vision: bool = False
    # Streams its replies (DSPy's `send_stream`): the answer is shown as it is written.
    streams: bool = False


def configure_dspy() -> None:
    """Process-wide DSPy settings for a long-running service: nothing that grows without bound."""
    global _configured
    if not _configured:
        dspy.configure(disable_history=True, max_trace_size=0, adapter=CachedJSONAdapter())
        _configured = True


def build_model(config: ModelConfig) -> ModelHandle:
    configure_dspy()
    if config.model == LOCAL_MODEL:
        from agent.engines.local import AsyncLocalEngine, LocalEngine

        engine = LocalEngine(max_tokens=min(config.max_tokens, 256), temperature=config.temperature)
        lm = dspy.LM(
            "local",
            engine=engine,
            async_engine=AsyncLocalEngine(engine, config.timeout_s),
            cache=False,
            num_retries=0,
        )
        return ModelHandle(lm=lm, name=LOCAL_MODEL, constrained=True)
    lm = dspy.LM(
        config.model,
        api_base=config.api_base,
        api_key=config.api_key,
        timeout=config.timeout_s,
        max_tokens=config.max_tokens,
        temperature=config.temperature,
        cache=False,
        num_retries=config.num_retries,
    )
    return ModelHandle(lm=lm, name=config.model, vision=takes_images(config), streams=config.stream)


def takes_images(config: ModelConfig) -> bool:
    """The setting when given, else what litellm's bundled model table says (a model it does not know: no)."""
    if config.vision is not None:
        return config.vision
    import litellm

    try:
        return bool(litellm.supports_vision(model=config.model))
    except Exception:
        return False


def scripted_model(engine: ScriptedEngine, *, constrained: bool = False) -> ModelHandle:
    """A model that answers from a script, for tests and demos; it takes images and streams when its engine does."""
    configure_dspy()
    lm = dspy.LM(SCRIPTED_MODEL, engine=engine, async_engine=AsyncScriptedEngine(engine), cache=False, num_retries=0)
    return ModelHandle(
        lm=lm,
        name=SCRIPTED_MODEL,
        constrained=constrained,
        vision=engine.vision,
        streams=engine.streams,
    )


__all__ = [
    "LOCAL_MODEL",
    "SCRIPTED_MODEL",
    "ModelConfig",
    "ModelHandle",
    "ScriptedEngine",
    "build_model",
    "scripted_model",
]
