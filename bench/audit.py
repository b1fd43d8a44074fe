"""Audits by re-execution: how long they take against generation, the numerical tolerance they
need, and how often they are wrong.

Hosts are the node's own engine (``fabstir_node.inference.Engine``) generating from
SmolLM2-135M-Instruct Q4_1 (the pinned model) with 1 and 2 threads; dishonest hosts serve the
same weights requantised to Q4_0 (cheaper) or Q8_0, add a system prompt the client did not
send, or drop the start of the conversation. Every answer is audited by
``fabstir_sdk.audit.Auditor`` against the pinned model with 1 and 2 threads and prefill batches
of 512 and 32 tokens. Prints:

* the measured tolerance: the largest logit gap between an honest token and the auditor's
  argmax, over every honest greedy answer and auditor configuration, and the largest share
  of an honest answer's tokens that differ from the argmax at all (rounding at near-ties);
* false-reject and false-accept rates at the shipped ``GREEDY_TOLERANCE`` and ``Z_FAIL`` (and
  at other settings), counting only dishonest answers that differ from the honest answer (an
  identical one is harmless and no audit could tell);
* audit time / generation time for the same transcript (goal <= 0.2).

    .venv/bin/python bench/audit.py [--prompts 24] [--max-tokens 96] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fabstir_devtools.impostors import requantize
from fabstir_node.inference import Engine, Finished, SamplingParams
from fabstir_node.models import BUILTIN, builtin_path
from fabstir_sdk.audit import (
    GREEDY_MAX_FLIPS,
    GREEDY_TOLERANCE,
    Z_FAIL,
    Z_MIN_TOKENS,
    Auditor,
    AuditReport,
    file_sha256,
)
from fabstir_sdk.protocol import Prompt
from fabstir_sdk.transcripts import TranscriptRecord, sampling_of

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

QUESTIONS = [
    "What is the capital of France? Explain its history briefly.",
    "Write a short poem about the sea.",
    "List three uses of Python.",
    "Explain how a bicycle works.",
    "Why is the sky blue?",
    "Give me a recipe for pancakes.",
    "What are the planets of the solar system?",
    "Describe the water cycle.",
    "How do vaccines work?",
    "Write a haiku about autumn leaves.",
    "What is machine learning?",
    "Summarise the plot of Romeo and Juliet.",
    "How does a refrigerator keep food cold?",
    "What should I pack for a week of hiking?",
    "Explain photosynthesis to a child.",
    "What is the difference between weather and climate?",
    "Write a limerick about a cat.",
    "How do I make a good cup of tea?",
    "What causes earthquakes?",
    "Name five famous painters and one work of each.",
    "How does the internet send a message from one computer to another?",
    "What is a prime number? Give examples.",
    "Tell me a fun fact about octopuses.",
    "Why do we have seasons?",
]
INJECTED = {"role": "system", "content": "Answer in exactly one short sentence, in French."}
CONTEXT = [
    {"role": "user", "content": "My name is Ada, I live in Lima and I am a marine biologist."},
    {"role": "assistant", "content": "Nice to meet you, Ada! How can I help you today?"},
]


TOLERANCES = (0.25, 0.5, 0.75, 1.0, 1.5, 2.0)
Z_THRESHOLDS = (-3.0, -4.0, -5.0, -6.0)


@dataclass
class Results:
    verdicts: dict[str, list[bool]] = field(default_factory=dict)  # case -> passed per answer
    gaps: dict[str, list[float]] = field(default_factory=dict)  # case -> largest gap per answer
    flips: dict[str, list[float]] = field(default_factory=dict)  # share of non-argmax tokens
    z: dict[str, list[float]] = field(default_factory=dict)
    replay: list[float] = field(default_factory=list)
    identical: dict[str, int] = field(default_factory=dict)  # dishonest answers = honest ones
    ratios: list[float] = field(default_factory=list)
    audit_s: list[float] = field(default_factory=list)
    generation_s: list[float] = field(default_factory=list)

    def add(self, case: str, report: AuditReport) -> None:
        self.verdicts.setdefault(case, []).append(report.passed)
        self.gaps.setdefault(case, []).append(max((c.gap for c in report.worst), default=0.0))
        if report.mode == "greedy" and report.tokens:
            flips = (report.tokens - report.agreed) / report.tokens
            self.flips.setdefault(case, []).append(flips)
        if report.z_score is not None and report.tokens >= Z_MIN_TOKENS:
            self.z.setdefault(case, []).append(report.z_score)


async def generate(
    engine: Engine, ids: list[int], params: SamplingParams
) -> tuple[list[int], float]:
    out: list[int] = []
    seconds = 0.0
    async for event in engine.generate(ids, params):
        if isinstance(event, Finished):
            seconds = event.generation_s
        else:
            out += event.token_ids
    return out, seconds


def record(sha: bytes, ids: list[int], completion: list[int], prompt: Prompt) -> TranscriptRecord:
    return TranscriptRecord(
        1, 0, bytes(32), sha, tuple(ids), tuple(completion), "", sampling_of(prompt)
    )


async def dishonest(
    res: Results, auditor: Auditor, case: str, rec: TranscriptRecord, honest: list[int]
) -> None:
    """Audit a dishonest host's answer; one identical to the honest answer is counted apart
    (it is indistinguishable, and harmless: the client got what it paid for)."""
    if list(rec.completion_ids) == honest:
        res.identical[case] = res.identical.get(case, 0) + 1
        return
    res.add(case, await asyncio.to_thread(auditor.audit, rec))


async def run(args: argparse.Namespace) -> dict[str, Any]:
    pinned = builtin_path(BUILTIN["smollm2-135m-instruct"])
    if pinned is None:
        sys.exit("the built-in model is not installed: run `make setup`")
    sha = file_sha256(pinned)
    work = Path(tempfile.mkdtemp(prefix="fabstir-audit-"))
    q4_0 = requantize(pinned, work / "q4_0.gguf", "q4_0")
    q8_0 = requantize(pinned, work / "q8_0.gguf", "q8_0")
    hosts = {t: Engine(pinned, n_threads=t) for t in (1, 2)}
    impostors = {"q4_0": Engine(q4_0, n_threads=2), "q8_0": Engine(q8_0, n_threads=2)}
    for engine in (*hosts.values(), *impostors.values()):
        engine.load()
    auditors = {
        (t, b): Auditor(pinned, model_sha256=sha, n_threads=t, n_batch=b)
        for t in (1, 2)
        for b in (512, 32)
    }
    main = auditors[(2, 512)]
    tokenizer = hosts[2].tokenizer
    assert tokenizer is not None
    res = Results()
    questions = QUESTIONS[: args.prompts]
    for i, question in enumerate(questions):
        messages = [{"role": "user", "content": question}]
        ids = tokenizer.chat_tokens(messages)
        greedy = Prompt(messages, args.max_tokens, 0.0)
        params = SamplingParams(args.max_tokens, 0.0)
        honest: list[int] = []
        for threads, engine in hosts.items():
            completion, gen_s = await generate(engine, ids, params)
            honest = completion
            rec = record(sha, ids, completion, greedy)
            for key, auditor in auditors.items():
                report = await asyncio.to_thread(auditor.audit, rec)
                res.add("honest greedy", report)
                if key == (2, 512) and threads == 2:
                    res.ratios.append(report.seconds / gen_s)
                    res.audit_s.append(report.seconds)
                    res.generation_s.append(gen_s)
        for name, engine in impostors.items():
            completion, _ = await generate(engine, ids, params)
            await dishonest(
                res, main, f"{name} weights", record(sha, ids, completion, greedy), honest
            )
        altered = tokenizer.chat_tokens([INJECTED, *messages])
        completion, _ = await generate(hosts[2], altered, params)
        await dishonest(res, main, "altered prompt", record(sha, ids, completion, greedy), honest)
        full = [*CONTEXT, {"role": "user", "content": "Remind me: what is my job? " + question}]
        full_ids = tokenizer.chat_tokens(full)
        honest, _ = await generate(hosts[2], full_ids, params)
        completion, _ = await generate(hosts[2], tokenizer.chat_tokens(full[-1:]), params)
        rec = record(sha, full_ids, completion, greedy)
        await dishonest(res, main, "truncated context", rec, honest)
        for case, engine in (("honest sampled", hosts[2]), ("q4_0 sampled", impostors["q4_0"])):
            sampled = Prompt(messages, args.max_tokens, 0.8, 0.95, 1000 + i)
            completion, _ = await generate(
                engine, ids, SamplingParams(args.max_tokens, 0.8, 0.95, 1000 + i)
            )
            report = await asyncio.to_thread(main.audit, record(sha, ids, completion, sampled))
            res.add(case, report)
            if case == "honest sampled":
                res.replay.append(report.agreement)
        print(f"  {i + 1}/{len(questions)} prompts", file=sys.stderr, end="\r")
    for engine in (*hosts.values(), *impostors.values()):
        engine.close()
    return summarise(res)


def summarise(res: Results) -> dict[str, Any]:
    def wrong(case: str, passed: list[bool]) -> float:
        honest = case.startswith("honest")
        return round(sum(1 for p in passed if p != honest) / len(passed), 4)

    greedy = [c for c in res.gaps if not c.endswith("sampled")]
    sampled = [c for c in res.z if c.endswith("sampled")]
    return {
        "measured_tolerance": round(max(res.gaps["honest greedy"]), 4),
        "measured_flips": round(max(res.flips["honest greedy"]), 4),
        "greedy_tolerance": GREEDY_TOLERANCE,
        "greedy_max_flips": GREEDY_MAX_FLIPS,
        "z_fail": Z_FAIL,
        "answers": {case: len(v) for case, v in res.verdicts.items()},
        # dishonest answers identical to the honest one: not audited, not counted above
        "identical_to_honest": res.identical,
        # false reject (honest cases) or false accept (the others), at the shipped settings
        "wrong_verdicts": {case: wrong(case, v) for case, v in res.verdicts.items()},
        # ... and for greedy answers at other tolerances (an answer fails if a gap exceeds it;
        # the flips limit left out)
        "greedy_wrong_by_tolerance": {
            str(t): {case: wrong(case, [g <= t for g in res.gaps[case]]) for case in greedy}
            for t in TOLERANCES
        },
        "sampled_wrong_by_z": {
            str(z): {case: wrong(case, [v >= z for v in res.z[case]]) for case in sampled}
            for z in Z_THRESHOLDS
        },
        "z_scores_min_median_max": {
            k: [round(min(v), 2), round(statistics.median(v), 2), round(max(v), 2)]
            for k, v in res.z.items()
        },
        "honest_replay_agreement_median": (
            round(statistics.median(res.replay), 3) if res.replay else None
        ),
        "audit_over_generation": {
            "median": round(statistics.median(res.ratios), 3),
            "aggregate": round(sum(res.audit_s) / sum(res.generation_s), 3),
            "goal": 0.2,
        },
    }


def _left_out(summary: dict[str, Any]) -> str:
    return ", ".join(f"{k} {v}" for k, v in summary["identical_to_honest"].items()) or "none"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--prompts", type=int, default=len(QUESTIONS))
    parser.add_argument("--max-tokens", type=int, default=96)
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args()
    summary = asyncio.run(run(args))
    if args.json:
        print(json.dumps(summary, indent=2))
        return
    print(
        f"\nmeasured tolerance: {summary['measured_tolerance']} logits (the largest honest gap); "
        f"shipped GREEDY_TOLERANCE = {GREEDY_TOLERANCE}, Z_FAIL = {Z_FAIL}"
    )
    print(
        f"measured flips: at most {summary['measured_flips']:.1%} of an honest answer's tokens "
        f"differ from the argmax; shipped GREEDY_MAX_FLIPS = {GREEDY_MAX_FLIPS:.0%}"
    )
    print(f"answers per case: {summary['answers']}")
    print(f"dishonest answers identical to the honest one (left out): {_left_out(summary)}")
    print("wrong verdicts (false reject for honest cases, false accept for the others):")
    for case, rate in summary["wrong_verdicts"].items():
        print(f"  {case:<20} {rate:.1%}")
    print("greedy answers, wrong verdicts by tolerance:")
    for t, rates in summary["greedy_wrong_by_tolerance"].items():
        print(f"  {t:>5}: " + ", ".join(f"{c} {r:.1%}" for c, r in rates.items()))
    print("sampled answers, wrong verdicts by z threshold (z test alone):")
    for z, rates in summary["sampled_wrong_by_z"].items():
        print(f"  {z:>5}: " + ", ".join(f"{c} {r:.1%}" for c, r in rates.items()))
    print(f"z-scores (min, median, max): {summary['z_scores_min_median_max']}")
    print(f"honest seeded replay agreement (median): {summary['honest_replay_agreement_median']}")
    ratio = summary["audit_over_generation"]
    print(
        f"audit / generation: median {ratio['median']}x, aggregate {ratio['aggregate']}x "
        f"(goal <= 0.2x)"
    )


if __name__ == "__main__":
    main()
