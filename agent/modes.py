"""How the agent reasons about one question (`PARLEY_AGENT__MODE`): all modes share the ReAct program, the
tool runner and memory.

- react: one ReAct run.
- decompose: split the question into sub-questions, answer each with ReAct, synthesise one answer.
- vote: several ReAct runs side by side at different temperatures; the majority answer wins when its share
  reaches the threshold, otherwise the reply says there is no consensus.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import dspy

from agent.answer_stream import streaming_answer
from agent.chains import ModelUsage, StepRecorder
from agent.loop_guard import guard_answer
from agent.messages import Step
from agent.react import RobustReAct

log = logging.getLogger("parley.agent")


@dataclass(frozen=True)
class Outcome:
    """What a mode produced: the answer (empty when none was reached) and its steps. The model usage of the whole
    answer is the runtime's `AnswerMeter`, which also counts calls of runs that failed."""

    answer: str
    steps: tuple[Step, ...]


# Inputs besides the context and the question that every ReAct run of one answer gets (the shared images).
Inputs = Mapping[str, Any]


class Mode(Protocol):
    name: str

    async def answer(self, context: str, question: str, inputs: Inputs | None = None) -> Outcome: ...


async def _predict(module: dspy.Module, **inputs: Any) -> tuple[dspy.Prediction, ModelUsage]:
    """Call a predictor and read the model usage it caused."""
    recorder = StepRecorder()
    with dspy.context(usage_tracker=recorder), recorder.timing():
        prediction = await module.acall(**inputs)
    return prediction, recorder.take()


async def _react(
    react: RobustReAct, context: str, question: str, part: str = "", inputs: Inputs | None = None
) -> Outcome:
    prediction = await react.acall(context=context, question=question, part=part, **(inputs or {}))
    return Outcome(str(prediction.answer).strip(), prediction.steps)


class ReactMode:
    name = "react"

    def __init__(self, react: RobustReAct) -> None:
        self.react = react

    async def answer(self, context: str, question: str, inputs: Inputs | None = None) -> Outcome:
        return await _react(self.react, context, question, inputs=inputs)


class Decompose(dspy.Signature):  # type: ignore[misc]
    """Split the question into the fewest simpler sub-questions that together answer it, in the order they
    should be answered. A question that is already simple stays a single sub-question."""

    context: str = dspy.InputField(desc="facts remembered in this channel and the recent conversation")
    question: str = dspy.InputField()
    sub_questions: list[str] = dspy.OutputField(desc="the sub-questions, each answerable on its own")


class Synthesise(dspy.Signature):  # type: ignore[misc]
    """Answer the question briefly and correctly from the answers found for its sub-questions."""

    question: str = dspy.InputField()
    findings: str = dspy.InputField(desc="each sub-question with the answer found for it")
    answer: str = dspy.OutputField(desc="the reply to post in the chat")


class DecomposeMode:
    name = "decompose"

    def __init__(self, react: RobustReAct, max_parts: int = 4) -> None:
        self.react = react
        self.max_parts = max_parts
        self.split = dspy.Predict(Decompose)
        self.synthesise = dspy.Predict(Synthesise)

    async def answer(self, context: str, question: str, inputs: Inputs | None = None) -> Outcome:
        split, usage = await _predict(self.split, context=context, question=question)
        parts = [str(q).strip() for q in (split.sub_questions or []) if str(q).strip()][: self.max_parts]
        if len(parts) <= 1:
            return await _react(self.react, context, question, inputs=inputs)
        plan = Step(
            "Split the question into sub-questions.",
            "decompose",
            {"question": question},
            "\n".join(f"{i}. {q}" for i, q in enumerate(parts, 1)),
            kind="thought",
            model_ms=usage.duration_ms,
            input_tokens=usage.input_tokens,
            output_tokens=usage.output_tokens,
        )
        steps = [plan]
        findings: list[str] = []
        for i, part in enumerate(parts, 1):
            # Later parts see what earlier ones found: "then multiply that by 3" needs the first answer.
            known = context + ("\n\nFound so far:\n" + "\n".join(findings) if findings else "")
            outcome = await _react(self.react, known, part, part=f"{i}. {part}", inputs=inputs)
            findings.append(f"{i}. {part} -> {outcome.answer or '(no answer found)'}")
            steps.extend(outcome.steps)
        with streaming_answer():
            final, used = await _predict(self.synthesise, question=question, findings="\n".join(findings))
        found = [f.split(" -> ", 1)[-1] for f in findings]
        answer = guard_answer(str(final.answer), [a for a in found if a != "(no answer found)"])
        steps.append(
            Step(
                str(getattr(final, "reasoning", "") or "Combined the answers of the sub-questions."),
                "",
                {},
                answer,
                kind="conclusion",
                model_ms=used.duration_ms,
                input_tokens=used.input_tokens,
                output_tokens=used.output_tokens,
            )
        )
        return Outcome(answer, tuple(steps))


def normalise(answer: str) -> str:
    """Answers that differ only in case, spacing or closing punctuation are the same vote."""
    return re.sub(r"\s+", " ", answer.casefold()).strip().rstrip(".!").strip()


class VoteMode:
    name = "vote"

    def __init__(self, react: RobustReAct, voters: int = 3, threshold: float = 0.5, temperature: float = 0.2) -> None:
        self.react = react
        self.voters = voters
        self.threshold = threshold
        self.temperature = temperature

    async def _voter(self, lm: dspy.LM, i: int, context: str, question: str, inputs: Inputs | None) -> Outcome:
        # Different sampling per voter: the configured temperature first, then warmer ones.
        with dspy.context(lm=lm.copy(temperature=min(self.temperature + 0.4 * i, 1.5), rollout_id=i)):
            return await _react(self.react, context, question, part=f"voter {i + 1}", inputs=inputs)

    async def answer(self, context: str, question: str, inputs: Inputs | None = None) -> Outcome:
        lm = dspy.settings.lm  # the model of this request: the primary, or the fallback
        results = await asyncio.gather(
            *(self._voter(lm, i, context, question, inputs) for i in range(self.voters)), return_exceptions=True
        )
        for result in results:
            if isinstance(result, BaseException) and not isinstance(result, Exception):
                raise result
        outcomes = [r for r in results if isinstance(r, Outcome)]
        if not outcomes:
            first = results[0]
            raise first if isinstance(first, BaseException) else RuntimeError("no voter answered")
        failed = self.voters - len(outcomes)
        if failed:
            log.warning("%d of %d voters failed", failed, self.voters)
        steps: list[Step] = []
        for outcome in outcomes:
            steps.extend(outcome.steps)
        votes = Counter(normalise(o.answer) for o in outcomes if o.answer)
        ranked = votes.most_common()
        tally = "; ".join(f"{count}/{self.voters}: {answer}" for answer, count in ranked) or "no answers"
        winner = ""
        if ranked:
            best, count = ranked[0]
            tied = len(ranked) > 1 and ranked[1][1] == count
            if count / self.voters >= self.threshold and not tied:
                winner = next(o.answer for o in outcomes if normalise(o.answer) == best)
        if winner:
            answer = winner
        elif ranked:
            answer = (
                "I couldn't reach a consensus on that: my attempts disagreed ("
                + " / ".join(answer for answer, _ in ranked[:3])
                + "). Could you rephrase or narrow the question?"
            )
        else:
            answer = ""
        steps.append(Step(f"Votes: {tally}", "", {}, answer, kind="conclusion"))
        return Outcome(answer, tuple(steps))
