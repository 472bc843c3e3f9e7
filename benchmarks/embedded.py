"""Quality and speed of the embedded model (not a test): what a newcomer sees on the first `make run`.

A fixed conversation of newcomer questions (greetings, arithmetic, maths without units, the time in a city,
remember then recall, a fact remembered many turns earlier, a follow-up that needs the previous turn,
unknown facts that deserve "I don't know"), asked in order in one channel through the same composition as
`parley chat`, on the real SmolLM2-135M model. Each answer has a checker; a separate, deliberately simple
detector flags degenerate answers (empty, a repeated phrase, JSON or field names leaking through).

Prints one row per question, then the totals with p50/p95 latency. Run with `make bench` or
`python -m benchmarks.embedded`. Targets on two cores: 0 degenerate, >= 80% correct, p50 <= 6 s, p95 <= 15 s.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import re
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

from agent.messages import IncomingMessage
from bot.answering import answer as answer_and_record
from bot.app import build_app
from bot.config import Settings

CHANNEL = "bench"
TIME_TOLERANCE_MIN = 3
UNKNOWN_PHRASES = (
    "don't know",
    "do not know",
    "not sure",
    "no information",
    "couldn't",
    "could not",
    "can't",
    "cannot",
    "unable",
    "no idea",
    "not have",
    "don't have",
    "no record",
    "not aware",
)


def numbers(text: str) -> list[float]:
    """Every number written in the text ("1,024", "-4", "3.5")."""
    found = re.findall(r"(?<![\w.])-?\d[\d,]*(?:\.\d+)?", text)
    return [float(n.replace(",", "")) for n in found if n.replace(",", "").lstrip("-").replace(".", "", 1).isdigit()]


def says_number(expected: float) -> Callable[[str], bool]:
    return lambda answer: any(math.isclose(n, expected, abs_tol=1e-6) for n in numbers(answer))


def says_any(*words: str) -> Callable[[str], bool]:
    return lambda answer: any(w in answer.casefold() for w in words)


def minutes_of_day(text: str) -> list[int]:
    """Clock times in the text as minutes after midnight ("15:40", "3:40 PM", "15:40:12")."""
    found = []
    for hour, minute, half in re.findall(r"\b(\d{1,2}):(\d{2})(?::\d{2})?\s*([ap]\.?m\.?)?", text, re.I):
        h = int(hour) % 24
        if half and half[0].lower() == "p" and h < 12:
            h += 12
        if half and half[0].lower() == "a" and h == 12:
            h = 0
        found.append(h * 60 + int(minute))
    return found


def says_time_in(zone: str) -> Callable[[str], bool]:
    def check(answer: str) -> bool:
        now = datetime.now(ZoneInfo(zone))
        current = now.hour * 60 + now.minute
        return any(min(abs(m - current), 1440 - abs(m - current)) <= TIME_TOLERANCE_MIN for m in minutes_of_day(answer))

    return check


def says_weekday(answer: str) -> bool:
    # Near midnight somewhere it is already tomorrow: accept the weekday of any zone a user might mean.
    days = {datetime.now(ZoneInfo(z)).strftime("%A").casefold() for z in ("UTC", "Pacific/Kiritimati", "Etc/GMT+12")}
    return any(day in answer.casefold() for day in days)


@dataclass(frozen=True)
class Case:
    question: str
    expect: str
    check: Callable[[str], bool]


CASES = (
    Case("hello, who are you?", "names itself", says_any("parley", "assistant", "help")),
    Case("what can you do?", "says what it can do", says_any("calculat", "time", "remember", "answer", "help")),
    Case("what is 12*7?", "84", says_number(84)),
    Case("remember that the office wifi password is parley-guest", "acknowledges", says_any("remember", "got it")),
    Case("what is 15 + 27?", "42", says_number(42)),
    Case("what is 100 divided by 4?", "25", says_number(25)),
    Case("what is the square root of 144?", "12", says_number(12)),
    Case("what is 2 to the power of 10?", "1024", says_number(1024)),
    Case("what is 25% of 80?", "20", says_number(20)),
    Case("what is 9 minus 13?", "-4", says_number(-4)),
    Case("what is 3.5 times 4?", "14", says_number(14)),
    Case("what time is it in Tokyo?", "Tokyo's time", says_time_in("Asia/Tokyo")),
    Case("what time is it in London?", "London's time", says_time_in("Europe/London")),
    Case("what day of the week is it today?", "the weekday", says_weekday),
    Case("remember that the standup is at 9:30", "acknowledges", says_any("remember", "got it")),
    Case("when is the standup?", "9:30", says_any("9:30")),
    Case("what is 7*8?", "56", says_number(56)),
    Case("and what is that plus 10?", "66 (needs the last turn)", says_number(66)),
    Case("what is the capital of France?", "Paris", says_any("paris")),
    Case("what is the capital of Japan?", "Tokyo", says_any("tokyo")),
    Case("what is the wifi password?", "parley-guest (18 turns back)", says_any("parley-guest")),
    Case("who is the CEO of our company?", "I don't know", says_any(*UNKNOWN_PHRASES)),
    Case("what is the name of my dog?", "I don't know", says_any(*UNKNOWN_PHRASES)),
    Case("thanks for your help!", "a polite reply", says_any("welcome", "glad", "happy", "pleasure", "anytime")),
)


def degenerate(answer: str) -> str:
    """Why the answer is degenerate, or "": empty, a looping n-gram, or the prompt's scaffolding leaking.

    Written apart from the agent's loop guard on purpose, so the benchmark does not grade the guard by itself.
    """
    if not answer.strip():
        return "empty"
    if re.search(r"\[\[ ##|next_thought|next_tool|\"answer\"\s*:|\breasoning\s*:|^\s*\{", answer, re.I | re.M):
        return "scaffolding"
    words = re.findall(r"\w+", answer.casefold())
    for n in range(1, 11):
        for i in range(len(words) - 2 * n + 1):
            unit = words[i : i + n]
            copies = 2 if n >= 4 else 3
            if i + copies * n <= len(words) and all(
                words[i + k * n : i + (k + 1) * n] == unit for k in range(1, copies)
            ):
                return f"loop: {' '.join(unit)}"
    return ""


def percentile(values: list[float], share: float) -> float:
    """Nearest-rank percentile: with 22 samples, p95 is the 21st fastest."""
    ordered = sorted(values)
    return ordered[max(math.ceil(share * len(ordered)) - 1, 0)]


@dataclass(frozen=True)
class Row:
    case: Case
    answer: str
    status: str
    seconds: float
    correct: bool
    degenerate: str
    # Whether any model call went into the answer ("rule": the runtime's remember rule or the local guide).
    by_model: bool
    # Prompt tokens llama.cpp processed for the answer (the rest of each prompt was a reused prefix); None
    # when the engine does not count them.
    processed: int | None


async def run(workdir: Path) -> list[Row]:
    settings = Settings(lm={"model": "local"}, db={"path": workdir / "bench.db"})
    rows = []
    async with build_app(settings) as parley:
        stats = getattr(parley.agent.model.lm.engine, "stats", None)
        for case in CASES:
            before = stats.processed_tokens if stats else 0
            started = time.perf_counter()
            asked = IncomingMessage(
                platform="console", channel=CHANNEL, user="newcomer", text=case.question, is_dm=True
            )
            reply = await answer_and_record(parley.agent, parley.storage, asked)
            seconds = time.perf_counter() - started
            answer = reply.text.strip()
            by_model = any(s.input_tokens for s in reply.steps)
            processed = stats.processed_tokens - before if stats else None
            rows.append(
                Row(case, answer, reply.status, seconds, case.check(answer), degenerate(answer), by_model, processed)
            )
            print(f"  {len(rows):2}/{len(CASES)} {seconds:5.1f} s  {case.question}", flush=True)
    return rows


def cut(text: str, width: int) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= width else flat[: width - 1] + "…"


def report(rows: list[Row], load_before: tuple[float, ...], load_after: tuple[float, ...]) -> None:
    print()
    header = f"{'#':>2} {'question':34} {'expected':24} {'answer':52} {'ok':>3} {'degenerate':12} {'s':>5}"
    print(f"{header} {'by':5} {'processed':>9}")
    for i, r in enumerate(rows, 1):
        print(
            f"{i:>2} {cut(r.case.question, 34):34} {cut(r.case.expect, 24):24} {cut(r.answer, 52):52} "
            f"{'yes' if r.correct else 'no':>3} {cut(r.degenerate or '-', 12):12} {r.seconds:5.1f} "
            f"{'model' if r.by_model else 'rule':5} {'-' if r.processed is None else r.processed:>9}"
        )
    seconds = [r.seconds for r in rows]
    model = [r.seconds for r in rows if r.by_model]
    correct = sum(r.correct for r in rows)
    print()
    print(
        f"correct {correct}/{len(rows)} ({100 * correct / len(rows):.0f}%), "
        f"degenerate {sum(bool(r.degenerate) for r in rows)}, "
        f"p50 {statistics.median(seconds):.1f} s, p95 {percentile(seconds, 0.95):.1f} s, "
        f"total {sum(seconds):.0f} s"
    )
    if model:
        print(
            f"with a model call ({len(model)} of {len(rows)}; the others were answered by rule, no model call): "
            f"p50 {statistics.median(model):.1f} s, p95 {percentile(model, 0.95):.1f} s"
        )
    print(
        f"machine: {os.cpu_count()} cores, load average {load_before[0]:.2f} before / {load_after[0]:.2f} after "
        "(other processes share the CPU when it is above ~0)"
    )
    print("targets: 0 degenerate, >= 80% correct, p50 <= 6 s, p95 <= 15 s")


def main() -> None:
    argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter).parse_args()
    print(f"{len(CASES)} questions on the embedded model, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC", flush=True)
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        rows = asyncio.run(run(Path(tmp)))
    report(rows, load_before, os.getloadavg())


if __name__ == "__main__":
    main()
