"""Answer quality as users meet it: ordinary workplace questions asked with no sampling parameters, in one run.

Starts a real `ratchet serve` (which supervises its own vLLM, guardrails on as shipped) on a scratch data dir and
asks every question of bench/quality_questions.json's held-out `bench` set --samples times
  * [ratchet]        through the API with no sampling parameters: Ratchet's served generation defaults,
  * [vllm_defaults]  straight to vLLM with vLLM's own neutral defaults sent explicitly (temperature 1.0, top_p 1.0,
                     repetition_penalty 1.0, max_tokens 512, Ratchet's old default), because vLLM itself now reads
                     the served defaults from the checkpoint's generation_config.json,
both under Ratchet's system prompt. Prints one line per figure:
    degenerate_rate[...]        empty, looping, repeating the system prompt, cut at the token limit, or mostly
                                non-words (bench/degenerate.py; target ≤ 0.05 at Ratchet's defaults)
    known_answer_accuracy[...]  on the questions with a checkable answer
    mean_answer_tokens[...]
and the ratios ratchet vs vllm_defaults.

`--choose` runs the tuning set instead (never the held-out one) at each candidate setting, straight to vLLM, which is
how the served defaults in server/models/generation_defaults.py were chosen; `--facts` asks, at each candidate setting,
questions whose answer only the system prompt gives and prints how often the answer repeats it (a repetition penalty
that counts the prompt's tokens holds that back). Every answer is kept in
bench/results/*-progress.jsonl as it comes; `--rescore FILE` prints the figures of such a file again.

Run: `nice -n 10 .venv/bin/python bench/quality.py` (about 10 minutes on the quiet 2-core box).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import statistics
import sys
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.degenerate import degenerate_reason
from server.settings import get_settings
from tests.live_server import LiveServer, free_port, start_server, stop_server, stored_message, wait_ready

QUESTIONS = Path(__file__).with_name("quality_questions.json")
RESULTS = Path(__file__).with_name("results")
VLLM_DEFAULTS = {"temperature": 1.0, "top_p": 1.0, "repetition_penalty": 1.0, "max_tokens": 512}
# SmolLM2's model card: low temperature, top_p 0.9. Then whether a penalty on repeats does better at that
# temperature: vLLM's repetition penalty also counts the prompt's tokens, the chat template's end-of-turn among them,
# so it also holds back the end of the answer; OpenAI's frequency and presence penalties count the answer's own.
CARD = {"temperature": 0.2, "top_p": 0.9, "max_tokens": 512, "repetition_penalty": 1.0}
CANDIDATES = [{**CARD, "repetition_penalty": repetition_penalty} for repetition_penalty in (1.0, 1.1, 1.2, 1.3)] + [
    {"temperature": 0.5, "top_p": 0.9, "repetition_penalty": 1.1, "max_tokens": 512},
    *({**CARD, "frequency_penalty": penalty} for penalty in (0.2, 0.4)),
    {**CARD, "presence_penalty": 0.4},
    {**CARD, "repetition_penalty": 1.1, "frequency_penalty": 0.2},
]


# Facts only the system prompt gives, and the answer must repeat: a company assistant's system prompt carries them,
# and a penalty that counts the prompt's tokens (vLLM's repetition penalty) keeps the model from copying them.
FACTS = [
    (
        "You are a helpful assistant. The support contact is alice.smith@example.com.",
        "What is the support contact e-mail address?",
        "alice.smith@example.com",
    ),
    (
        "You are Ratchet, the assistant of Northwind Traders. Our product is Northwind Ledger, an accounting tool. "
        "The IT helpdesk is at extension 4711.",
        "What is the IT helpdesk extension?",
        "4711",
    ),
    (
        "You are Ratchet, the assistant of Northwind Traders. Our product is Northwind Ledger, an accounting tool.",
        "What is our product called?",
        "Northwind Ledger",
    ),
    (
        "You are Ratchet. The office Wi-Fi network is called NW-Guest and its password is bluefalcon42.",
        "What is the Wi-Fi password?",
        "bluefalcon42",
    ),
]
FACT_SEEDS = 4


@dataclass
class Question:
    question: str
    expect: list[str] | None

    def right(self, answer: str) -> bool | None:
        if self.expect is None:
            return None
        return any(re.search(pattern, answer, re.IGNORECASE) for pattern in self.expect)


@dataclass
class Answer:
    run: str
    question: str
    text: str
    finish_reason: str | None
    tokens: int
    correct: bool | None
    message_id: str | None = None

    @property
    def degenerate(self) -> str | None:
        return degenerate_reason(self.text, self.finish_reason, get_settings().system_prompt)


def load(split: str) -> list[Question]:
    return [Question(**item) for item in json.loads(QUESTIONS.read_text())[split]]


def named(sampling: dict[str, Any]) -> str:
    return ",".join(f"{key}={value}" for key, value in sampling.items())


async def ask_all(
    client: httpx.AsyncClient,
    run: str,
    target: tuple[str, dict[str, str], str],
    questions: list[Question],
    samples: int,
    sampling: dict[str, Any],
    gate: asyncio.Semaphore,
    progress: Path,
) -> list[Answer]:
    """Every answer is also appended to `progress` as it comes, so a run cut short keeps what it got (--rescore)."""
    url, headers, model = target
    system = {"role": "system", "content": get_settings().system_prompt}

    async def ask(question: Question) -> Answer:
        body = {"model": model, "messages": [system, {"role": "user", "content": question.question}], **sampling}
        async with gate:
            reply = await post(client, url, body, headers)
        choice = reply["choices"][0]
        text = choice["message"]["content"] or ""
        answer = Answer(
            run,
            question.question,
            text,
            choice.get("finish_reason"),
            reply["usage"]["completion_tokens"],
            question.right(text),
            reply.get("ratchet", {}).get("message_id"),
        )
        with progress.open("a") as out:
            out.write(json.dumps(asdict(answer)) + "\n")
        return answer

    return await asyncio.gather(*(ask(question) for question in questions for _ in range(samples)))


async def post(client: httpx.AsyncClient, url: str, body: dict[str, Any], headers: dict[str, str]) -> dict[str, Any]:
    """One answer; a server error is retried after a pause, because the managed vLLM restarts itself when it dies
    (which a box this busy sees), and one lost answer should not cost the run."""
    for attempt in range(3):
        try:
            response = await client.post(url, json=body, headers=headers)
            if response.status_code < 500:
                response.raise_for_status()
                return response.json()
        except httpx.TransportError:
            if attempt == 2:
                raise
        await asyncio.sleep(30)
    response.raise_for_status()
    return response.json()


def started_progress(name: str) -> Path:
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{name}-progress.jsonl"
    path.unlink(missing_ok=True)
    return path


def figures(answers: list[Answer]) -> dict[str, float]:
    known = [answer.correct for answer in answers if answer.correct is not None]
    tokens = sorted(answer.tokens for answer in answers)
    return {
        "degenerate_rate": sum(answer.degenerate is not None for answer in answers) / len(answers),
        "known_answer_accuracy": sum(known) / len(known) if known else float("nan"),
        "mean_answer_tokens": statistics.mean(tokens),
        "p95_answer_tokens": tokens[round(0.95 * (len(tokens) - 1))],
    }


def reasons(answers: list[Answer]) -> str:
    counted = {reason: 0 for reason in ("loop", "run_on", "non_words", "empty", "system_prompt")}
    for answer in answers:
        if answer.degenerate:
            counted[answer.degenerate] += 1
    return " ".join(f"{reason}={count}" for reason, count in counted.items())


def ratio(ours: float, theirs: float) -> str:
    return f"{ours / theirs:.3f}" if theirs else ("1.000" if ours == theirs else "inf")


def report_bench(runs: dict[str, list[Answer]]) -> None:
    results = {name: figures(answers) for name, answers in runs.items()}
    for name, answers in runs.items():
        print(f"# answers[{name}] {len(answers)}; degenerate: {reasons(answers)}")
        refusals = sum(answer.finish_reason == "content_filter" for answer in answers)
        if refusals:
            print(f"# guardrail refusals[{name}] {refusals}")
    for figure in ("degenerate_rate", "known_answer_accuracy", "mean_answer_tokens"):
        for name in runs:
            print(f"{figure}[{name}] {results[name][figure]:.3f}")
    for figure in ("degenerate_rate", "known_answer_accuracy", "mean_answer_tokens"):
        shown = ratio(results["ratchet"][figure], results["vllm_defaults"][figure])
        print(f"ratio {figure}_ratchet_vs_vllm_defaults {shown}")


def report_choose(runs: dict[str, list[Answer]]) -> None:
    for name, answered in runs.items():
        shown = " ".join(f"{figure} {value:.3f}" for figure, value in figures(answered).items())
        print(f"tuning[{name}] {shown} (answers {len(answered)}: {reasons(answered)})")


async def bench(server: LiveServer, args: argparse.Namespace) -> None:
    questions = load("bench")
    gate = asyncio.Semaphore(args.concurrency)
    progress = started_progress("quality")
    api = (f"{server.base_url}/v1/chat/completions", server.headers(), "ratchet")
    direct = (f"{server.vllm_url}/v1/chat/completions", {}, get_settings().base_model_name)
    print(f"# questions {len(questions)} x {args.samples} samples; vllm_defaults sent explicitly: {VLLM_DEFAULTS}")
    # Both at once (on a CPU vLLM's throughput grows with the batch); what is measured here is text, not time.
    async with httpx.AsyncClient(timeout=3600) as client:
        ours, theirs = await asyncio.gather(
            ask_all(client, "ratchet", api, questions, args.samples, {}, gate, progress),
            ask_all(client, "vllm_defaults", direct, questions, args.samples, VLLM_DEFAULTS, gate, progress),
        )
    stored = await stored_message(server, str(ours[0].message_id))
    print(f"# ratchet answered with sampling {stored.sampling} (stored provenance)")
    report_bench({"ratchet": ours, "vllm_defaults": theirs})


async def choose(server: LiveServer, args: argparse.Namespace) -> None:
    questions = load("tuning")
    gate = asyncio.Semaphore(args.concurrency)
    candidates = [CANDIDATES[index] for index in args.candidates] if args.candidates else CANDIDATES
    progress = started_progress("quality-choose")
    direct = (f"{server.vllm_url}/v1/chat/completions", {}, get_settings().base_model_name)
    print(f"# tuning questions {len(questions)} x {args.samples} samples, straight to vLLM")
    async with httpx.AsyncClient(timeout=3600) as client:
        # All candidates at once: on a CPU, vLLM's throughput grows with the batch.
        answers = await asyncio.gather(
            *(
                ask_all(client, named(sampling), direct, questions, args.samples, sampling, gate, progress)
                for sampling in candidates
            )
        )
    report_choose(dict(zip((named(sampling) for sampling in candidates), answers, strict=True)))


async def facts(server: LiveServer, args: argparse.Namespace) -> None:
    """How often each candidate setting repeats a fact only the system prompt gives (FACTS, FACT_SEEDS seeds each)."""
    candidates = [CANDIDATES[index] for index in args.candidates] if args.candidates else CANDIDATES
    url, model = f"{server.vllm_url}/v1/chat/completions", get_settings().base_model_name
    async with httpx.AsyncClient(timeout=3600) as client:

        async def copied(sampling: dict[str, Any], system: str, question: str, fact: str, seed: int) -> bool:
            messages = [{"role": "system", "content": system}, {"role": "user", "content": question}]
            body = {"model": model, "messages": messages, **sampling, "max_tokens": 40, "seed": seed}
            reply = await post(client, url, body, {})
            return fact.lower() in (reply["choices"][0]["message"]["content"] or "").lower()

        for sampling in candidates:
            hits = await asyncio.gather(
                *(copied(sampling, *fact, seed) for fact in FACTS for seed in range(FACT_SEEDS))
            )
            print(f"copied_fact_rate[{named(sampling)}] {sum(hits) / len(hits):.3f} ({sum(hits)} of {len(hits)})")


def rescore(path: Path) -> None:
    """Figures from a progress file, with today's definitions (a run cut short, or a changed degenerate check)."""
    runs: dict[str, list[Answer]] = {}
    for line in path.read_text().splitlines():
        answer = Answer(**json.loads(line))
        runs.setdefault(answer.run, []).append(answer)
    if set(runs) == {"ratchet", "vllm_defaults"}:
        report_bench(runs)
    else:
        report_choose(runs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=3, help="answers per question and setting")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--choose", action="store_true", help="the tuning set at each candidate setting")
    parser.add_argument(
        "--facts", action="store_true", help="how often each candidate setting repeats a fact the system prompt gives"
    )
    parser.add_argument(
        "--candidates", type=lambda text: [int(index) for index in text.split(",")], help="indices into CANDIDATES"
    )
    parser.add_argument("--rescore", type=Path, help="print the figures of a progress file instead of asking")
    args = parser.parse_args()
    if args.rescore:
        rescore(args.rescore)
        return
    settings = get_settings()
    with tempfile.TemporaryDirectory(prefix="ratchet-quality-") as scratch:
        data_dir = Path(scratch)
        server = start_server(
            data_dir,
            f"sqlite+aiosqlite:///{data_dir / 'ratchet.db'}",
            settings.base_model_dir.resolve(),
            {
                "RATCHET_VLLM_PORT": str(free_port()),
                "RATCHET_VLLM_URL": "",
                "RATCHET_LOG_LEVEL": "warning",
                # What is measured here is text, not time: on a busy box 96 rambling 512-token answers at once can
                # outlast the default 300 s per request, which would end the run with a 503.
                "RATCHET_VLLM_REQUEST_TIMEOUT_S": "3600",
            },
            # The jailbreak classifier `make setup` fitted in this checkout's data dir, not fitted again.
            classifier_from=settings.data_dir,
        )
        try:
            print("starting ratchet serve and its vLLM…", file=sys.stderr)
            wait_ready(server, 900)
            asyncio.run(
                choose(server, args) if args.choose else facts(server, args) if args.facts else bench(server, args)
            )
        finally:
            stop_server(server)
    if not args.facts:
        print(f"# answers in {RESULTS}/{'quality-choose' if args.choose else 'quality'}-progress.jsonl")


if __name__ == "__main__":
    main()
