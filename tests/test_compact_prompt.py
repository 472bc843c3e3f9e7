"""The compact prompt of the constrained local path: short, shared by every call of an answer, and only for
engines that ask for it; real providers keep DSPy's prompts byte for byte."""

from __future__ import annotations

import dspy
from dspy.lm15 import Request

from agent.adapter import wants_compact_prompts
from agent.compact import ANSWER_TASK, trajectory_text
from agent.engines import ScriptedEngine, scripted_model
from agent.engines.scripted import request_text
from agent.messages import IncomingMessage
from agent.runtime import Agent, AgentOptions
from agent.storage import Storage
from agent.tools import ToolRunner
from tests.conftest import final, reply_to, step


def ask(text: str) -> IncomingMessage:
    return IncomingMessage(platform="console", channel="c", user="u", text=text)


def messages(request: Request) -> tuple[str, str]:
    system = request.system if isinstance(request.system, str) else "".join(p.text for p in request.system or ())
    user = "".join(getattr(p, "text", "") or "" for p in request.messages[-1].parts)
    return system, user


def script() -> list[object]:
    return [step("calculator", expression="12*7"), step("finish"), final("12*7 is 84.")]


async def test_a_question_for_the_model_gets_a_short_prompt(storage: Storage, runner: ToolRunner) -> None:
    engine = ScriptedEngine([final("The capital of France is Paris.")], compact_prompts=True)
    agent = Agent(storage, scripted_model(engine, constrained=True), runner, AgentOptions(max_iters=4))
    reply = await reply_to(agent, ask("what is the capital of France?"))
    assert reply.text == "The capital of France is Paris."
    # The step was `finish` by rule; the model was asked once, for the answer.
    [request] = engine.requests
    system, user = messages(request)
    assert "Parley" in system and "[[ ##" not in system and "All interactions" not in system
    assert len(request_text(request)) < 2500, "the whole compact prompt stays short"
    assert (
        user
        == "(nothing remembered yet)\n\nQuestion: what is the capital of France?\n\nStep 1: finish\n\n" + ANSWER_TASK
    )


async def test_every_call_starts_with_the_same_prefix(storage: Storage, runner: ToolRunner) -> None:
    engine = ScriptedEngine([final("Hi!"), final("Paris.")], compact_prompts=True)
    agent = Agent(storage, scripted_model(engine, constrained=True), runner, AgentOptions(max_iters=4))
    await reply_to(agent, ask("hello"))
    await reply_to(agent, ask("what is the capital of France?"))
    first, second = engine.requests
    # System message and worked examples are identical, so llama.cpp reuses their processed tokens.
    assert first.system == second.system and first.messages[:-1] == second.messages[:-1]
    assert len(first.messages) > 1, "the worked examples come as chat turns"


async def test_arithmetic_on_the_local_path_needs_no_model_call(storage: Storage, runner: ToolRunner) -> None:
    engine = ScriptedEngine(compact_prompts=True)
    agent = Agent(storage, scripted_model(engine, constrained=True), runner, AgentOptions(max_iters=4))
    reply = await reply_to(agent, ask("what is 12*7?"))
    assert reply.text == "12*7 = 84"
    assert [(s.tool, s.args, s.observation) for s in reply.steps if s.kind == "action"] == [
        ("calculator", {"expression": "12*7"}, "84")
    ]
    assert engine.requests == []


async def test_real_providers_get_dspys_messages_byte_for_byte(storage: Storage, runner: ToolRunner) -> None:
    # Constrained (the schemas are attached) but the engine does not ask for compact prompts.
    engine = ScriptedEngine(script())
    agent = Agent(storage, scripted_model(engine, constrained=True), runner, AgentOptions(max_iters=4))
    await reply_to(agent, ask("what is 12*7?"))
    first = engine.requests[0]
    context = messages(first)[1].split("[[ ## question ## ]]")[0].split("[[ ## context ## ]]\n")[1].strip()
    expected = dspy.JSONAdapter().format(
        agent.react.react.signature, [], {"context": context, "question": "what is 12*7?", "trajectory": ""}
    )
    assert messages(first) == (expected[0]["content"], expected[1]["content"])


async def test_a_step_without_its_thought_is_still_a_step(storage: Storage, runner: ToolRunner) -> None:
    # The constrained schemas leave the thoughts out; a provider that honours them sends none.
    engine = ScriptedEngine(
        [
            {"next_tool_name": "calculator", "next_tool_args": {"expression": "2+2"}},
            {"next_tool_name": "finish", "next_tool_args": {}},
            {"answer": "4"},
        ]
    )
    agent = Agent(storage, scripted_model(engine, constrained=True), runner, AgentOptions(max_iters=4))
    reply = await reply_to(agent, ask("what is 2+2?"))
    assert reply.status == "answered" and reply.text == "4"
    assert [s.tool for s in reply.steps if s.kind == "action"] == ["calculator"]


def test_the_step_schema_sent_to_the_local_model_needs_no_thought(storage: Storage, runner: ToolRunner) -> None:
    agent = Agent(storage, scripted_model(ScriptedEngine(), constrained=True), runner)
    schema = agent.react.react.config["response_format"]["json_schema"]["schema"]
    for variant in schema["anyOf"]:
        assert "next_thought" not in variant["required"]
    extract = dict(agent.react.named_predictors())["extract.predict"]
    answer = extract.config["response_format"]["json_schema"]["schema"]["properties"]["answer"]
    assert answer["type"] == "string" and answer["maxLength"] <= 400


def test_the_trajectory_reads_as_numbered_steps() -> None:
    formatted = "\n\n".join(
        [
            "[[ ## thought_0 ## ]]\ncompute",
            "[[ ## tool_name_0 ## ]]\ncalculator",
            '[[ ## tool_args_0 ## ]]\n{"expression": "12*7"}',
            "[[ ## observation_0 ## ]]\n84",
            "[[ ## thought_1 ## ]]\ndone",
            "[[ ## tool_name_1 ## ]]\nfinish",
            "[[ ## tool_args_1 ## ]]\n{}",
            "[[ ## observation_1 ## ]]\nCompleted.",
        ]
    )
    assert trajectory_text(formatted) == 'Step 1: calculator {"expression": "12*7"}\nResult: 84\nStep 2: finish'


def test_the_prompt_choice_survives_lm_copies() -> None:
    lm = scripted_model(ScriptedEngine(compact_prompts=True)).lm.copy(temperature=0.9)  # vote mode's voters
    assert wants_compact_prompts(lm)
    assert not wants_compact_prompts(scripted_model(ScriptedEngine()).lm)
