"""Does the nightly loop learn what users prefer, and does the model stay useful? One run, base vs each candidate.

1. The base model answers a set of product questions (sampled, several answers each) under a company system
   prompt. Simulated users vote on those answers with a consistent preference the trainer is never told about:
   up when the answer is concise (≤ CONCISE_WORDS words) or names the company's product, down otherwise. Some
   down-voted answers get an ops correction. All of it goes into a scratch store the way the app stores it.
2. `ratchet tune nightly` runs on that store with a CPU-sized budget (reward model + the configured methods).
3. Base and every candidate answer held-out product questions (never voted on) and a fixed set of questions with
   known short answers, sampled the way users get answers: at the served generation defaults
   (server/models/generation_defaults.py), --eval-samples answers per question, every model under the same seed.
   Printed, one line per figure:
     figure reward_model_held_out_auc            (target ≥ 0.8)
     ratio  length_ratio_candidate_vs_base        (mean words; < 1 is more concise)
     ratio  product_name_rate_candidate_vs_base   (rates printed too, since the base rate can be 0)
     ratio  accuracy_candidate_vs_base            (known short answers; target ≥ 0.95)
     figure degenerate_rate                       (empty, looping, or repeating the system prompt)
   A candidate that got shorter by collapsing shows up as a high degenerate rate and a low accuracy ratio.

Run: `nice -n 10 .venv/bin/python bench/learning.py` (about 21 minutes on the quiet 2-core box, GRPO half of it, when
evaluation was greedy; three sampled answers per question triple the evaluation's share; see --help for budgets and
--seed for a differently seeded store).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import re
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch

from bench.degenerate import degenerate
from bench.feedback_seed import Judged, seed
from server.db.engine import open_sessions
from server.db.migrate import upgrade
from server.models.generation_defaults import GenerationDefaults, served_defaults
from server.settings import Settings, get_settings
from tuning.config import TuneConfig
from tuning.evaluation import Generator
from tuning.nightly import Nightly
from tuning.runs import Run, limit_resources

PRODUCT = "Northwind Ledger"
SYSTEM_PROMPT = (
    f"You are the internal assistant of Northwind. The company's product is {PRODUCT}, an accounting application "
    "for small businesses. Help employees with questions about it and about their work."
)
CONCISE_WORDS = 35
# The seeded store's answers: varied on purpose, so that several answers to one question differ in what the
# simulated users vote on, as months of real traffic would.
SEED_SAMPLING = GenerationDefaults(temperature=0.8, top_p=0.95, max_tokens=64)
PRODUCT_PATTERN = re.compile(r"\bnorthwind ledger\b", re.IGNORECASE)

TRAIN_QUESTIONS = [
    "How do I create a new invoice?",
    "How can a customer export their transactions to CSV?",
    "What should I tell a customer who cannot log in?",
    "How do I add a new user to a company account?",
    "How does bank reconciliation work in our product?",
    "Can customers pay invoices by card?",
    "How do I set up recurring invoices?",
    "What is the difference between a bill and an invoice?",
    "How do customers change their subscription plan?",
    "How do I issue a refund to a customer?",
    "Which currencies does our product support?",
    "How can a customer connect their bank account?",
    "How do I explain VAT settings to a customer?",
    "What reports can customers run at year end?",
    "How do I reset two-factor authentication for a customer?",
    "How do customers import their old accounting data?",
    "How do I handle a duplicate payment complaint?",
    "How do customers add their company logo to invoices?",
    "What is the trial period for new customers?",
    "How do I escalate a bug report to engineering?",
    "How can customers track expenses?",
    "How do customers invite their accountant?",
    "What happens when a customer's card payment fails?",
    "How do I close the books at month end?",
    "Can customers use the product on their phone?",
    "How do I merge two customer records?",
    "How do customers set payment reminders?",
    "How can a customer delete their account?",
]
HELD_OUT_QUESTIONS = [
    "How do customers send a quote before an invoice?",
    "How do I find a customer's billing history?",
    "How do customers record a cash payment?",
    "What should I say when a customer asks about data security?",
    "How do customers split a payment across two invoices?",
    "How do I explain late payment fees to a customer?",
    "How can customers see who changed an invoice?",
    "How do customers add a discount to an invoice?",
    "How do I help a customer who sees the wrong balance?",
    "How do customers switch their fiscal year start?",
    "How do I onboard a new small business customer?",
    "How can customers archive old invoices?",
]
# Questions with one short right answer (accepted spellings); "useful" means still answering these. Chosen from
# general knowledge before looking at the base model's answers and kept whatever it answered (it gets about
# 80% right), so the ratio is not biased towards questions the base happens to know; 62 of them make one
# question 1.6 points instead of the 6 points of the first 16-question list.
KNOWN_ANSWERS = [
    ("What is the capital of France?", ["paris"]),
    ("How many days are there in a week?", ["7", "seven"]),
    ("What is 2 + 2?", ["4", "four"]),
    ("What colour is the sky on a clear day?", ["blue"]),
    ("How many months are there in a year?", ["12", "twelve"]),
    ("What is the largest planet in our solar system?", ["jupiter"]),
    ("What is the freezing point of water in degrees Celsius?", ["0", "zero"]),
    ("How many legs does a spider have?", ["8", "eight"]),
    ("What is the capital of Japan?", ["tokyo"]),
    ("Which gas do plants absorb from the air?", ["carbon dioxide", "co2"]),
    ("How many hours are in a day?", ["24", "twenty-four", "twenty four"]),
    ("What is the opposite of hot?", ["cold"]),
    ("What is 10 minus 3?", ["7", "seven"]),
    ("Which animal is known as the king of the jungle?", ["lion"]),
    ("What is the capital of Italy?", ["rome"]),
    ("How many sides does a triangle have?", ["3", "three"]),
    ("What is the capital of Germany?", ["berlin"]),
    ("What is the capital of Spain?", ["madrid"]),
    ("What is the capital of the United Kingdom?", ["london"]),
    ("What is the capital of Canada?", ["ottawa"]),
    ("What is the capital of Australia?", ["canberra"]),
    ("What is the capital of Egypt?", ["cairo"]),
    ("What is the capital of Russia?", ["moscow"]),
    ("What is the capital of China?", ["beijing"]),
    ("What is 3 times 4?", ["12", "twelve"]),
    ("What is 5 + 6?", ["11", "eleven"]),
    ("What is 100 divided by 10?", ["10", "ten"]),
    ("What is 9 minus 4?", ["5", "five"]),
    ("How many minutes are in an hour?", ["60", "sixty"]),
    ("How many seconds are in a minute?", ["60", "sixty"]),
    ("How many sides does a square have?", ["4", "four"]),
    ("How many legs does a cat have?", ["4", "four"]),
    ("How many wheels does a bicycle have?", ["2", "two"]),
    ("How many continents are there?", ["7", "seven"]),
    ("How many days are in a leap year?", ["366"]),
    ("At what temperature in degrees Celsius does water boil at sea level?", ["100", "one hundred"]),
    ("What is the chemical symbol for water?", ["h2o"]),
    ("What is the chemical symbol for gold?", ["au"]),
    ("Which planet is known as the Red Planet?", ["mars"]),
    ("Which planet is closest to the Sun?", ["mercury"]),
    ("What is the name of the star at the centre of our solar system?", ["sun", "the sun"]),
    ("What is the natural satellite of the Earth called?", ["moon", "the moon"]),
    ("What is the largest ocean on Earth?", ["pacific"]),
    ("What is the longest river in Africa?", ["nile"]),
    ("What is the tallest mountain in the world?", ["everest"]),
    ("What is the largest mammal?", ["blue whale"]),
    ("What do bees make?", ["honey"]),
    ("What colour are ripe bananas?", ["yellow"]),
    ("What colour is grass?", ["green"]),
    ("What is frozen water called?", ["ice"]),
    ("Which organ pumps blood through the human body?", ["heart"]),
    ("How many bones are in the adult human body?", ["206"]),
    ("Who wrote Romeo and Juliet?", ["shakespeare"]),
    ("Who painted the Mona Lisa?", ["leonardo", "da vinci"]),
    ("Who developed the theory of relativity?", ["einstein"]),
    ("What language is mainly spoken in Brazil?", ["portuguese"]),
    ("What is the currency of Japan?", ["yen"]),
    ("What is the currency of the United States?", ["dollar", "usd"]),
    ("In which country are the pyramids of Giza?", ["egypt"]),
    ("What is the opposite of up?", ["down"]),
    ("What is the first letter of the English alphabet?", ["a"]),
    ("What is the square root of 16?", ["4", "four"]),
]


def messages(question: str) -> list[dict[str, str]]:
    return [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": question}]


def words(text: str) -> int:
    return len(text.split())


def simulated_vote(answer: str) -> str:
    """The users' preference, which only this benchmark knows."""
    return "up" if words(answer) <= CONCISE_WORDS or PRODUCT_PATTERN.search(answer) else "down"


def evaluate(generate: Callable[[list[list[dict[str, str]]]], list[str]], samples: int = 1) -> dict[str, Any]:
    """Figures over `samples` answers to every question."""
    held_out = generate([messages(question) for question in HELD_OUT_QUESTIONS for _ in range(samples)])
    known_items = [item for item in KNOWN_ANSWERS for _ in range(samples)]
    known = generate([messages(question) for question, _ in known_items])
    correct = [
        any(re.search(rf"(?<![\w-]){re.escape(accepted)}(?![\w-])", answer.lower()) for accepted in accepted_list)
        for answer, (_, accepted_list) in zip(known, known_items, strict=True)
    ]
    everything = held_out + known
    return {
        "mean_words": sum(map(words, held_out)) / len(held_out),
        "product_name_rate": sum(bool(PRODUCT_PATTERN.search(answer)) for answer in held_out) / len(held_out),
        "accuracy": sum(correct) / len(correct),
        "degenerate_rate": sum(degenerate(answer, SYSTEM_PROMPT) for answer in everything) / len(everything),
        "example": held_out[0],
        # Per question, so a lower accuracy reads as answers lost or as flips both ways (noise).
        "correct": correct,
        "known_answers": known,
    }


def evaluate_served(
    generator: Generator, model: Any, served: GenerationDefaults, max_new_tokens: int, samples: int, seed: int
) -> dict[str, Any]:
    """`evaluate` at the served defaults. Every model draws under the same seed, so base and candidate differ by
    what they learnt more than by luck."""
    torch.manual_seed(seed)
    return evaluate(lambda batch: generator.answers(model, batch, max_new_tokens, served), samples)


def ratio(candidate: float, base: float) -> str:
    return f"{candidate / base:.3f}" if base else ("1.000" if candidate == base else "inf")


def seed_and_train(args: argparse.Namespace, generator: Generator, settings: Settings, config: TuneConfig) -> Run:
    # 1. The base model's own answers, voted on by the simulated users.
    chats = [messages(question) for question in TRAIN_QUESTIONS for _ in range(args.samples_per_question)]
    # top_k 50 (transformers' default) as when the stores of the figures in docs/tuning.md were seeded.
    sampled = generator.answers(generator.base, chats, args.seed_max_tokens, SEED_SAMPLING, top_k=50)
    items = []
    for chat, answer in zip(chats, sampled, strict=True):
        vote = simulated_vote(answer)
        correction = None
        if vote == "down" and random.random() < args.correction_share:
            # Ops rewrite the answer the way users like it: the first sentence, naming the product.
            first = re.split(r"(?<=[.!?])\s", answer.strip(), maxsplit=1)[0][:200]
            correction = f"In {PRODUCT}: {first}" if first else None
        items.append(Judged(chat[1]["content"], answer, vote, correction))
    votes_up = sum(item.vote == "up" for item in items)
    print(f"figure seeded_answers {len(items)}")
    print(f"figure seeded_up_share {votes_up / len(items):.3f}")
    print(f"figure seeded_corrections {sum(item.correction is not None for item in items)}")

    upgrade(settings.resolved_database_url)

    async def fill() -> None:
        async with open_sessions(settings) as sessions:
            await seed(sessions, items, system_prompt=SYSTEM_PROMPT)

    asyncio.run(fill())

    # 2. The nightly job, exactly as an operator runs it.
    started = time.monotonic()
    run = Nightly(settings, config).nightly()
    print(f"figure seconds_nightly {time.monotonic() - started:.0f}")
    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    # The defaults are the budget of the figures in docs/tuning.md: about 21 minutes on the quiet 2-core box.
    parser.add_argument("--methods", default="kto,sft,prompt_tuning,rl")
    parser.add_argument("--samples-per-question", type=int, default=3)
    parser.add_argument("--seed-max-tokens", type=int, default=64)
    parser.add_argument("--eval-max-tokens", type=int, default=64)
    parser.add_argument(
        "--eval-samples", type=int, default=3, help="answers per evaluation question, at the served defaults"
    )
    parser.add_argument(
        "--steps",
        type=int,
        default=20,
        help="steps of kto, sft (at most TuneConfig.sft_max_epochs passes), prompt tuning; twice as many for the RM",
    )
    # GRPO's budget defaults to TuneConfig's (see the comments there for what other budgets did).
    defaults = TuneConfig()
    parser.add_argument("--rl-steps", type=int, default=defaults.rl_max_steps)
    parser.add_argument("--rl-learning-rate", type=float, default=defaults.rl_learning_rate)
    parser.add_argument(
        "--rl-max-tokens",
        type=int,
        default=defaults.rl_max_completion_length,
        help="GRPO completion length (generation is its cost)",
    )
    parser.add_argument("--correction-share", type=float, default=0.5, help="down-voted answers ops correct")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--seed", type=int, default=0, help="seeds the sampled answers, votes and corrections: another seed, other data"
    )
    parser.add_argument(
        "--continue-in",
        type=Path,
        help="the scratch dir of an earlier, interrupted benchmark: resume its nightly run and evaluate, no seeding",
    )
    args = parser.parse_args()

    base = get_settings().base_model_dir.resolve()
    work = args.continue_in or Path(tempfile.mkdtemp(prefix="ratchet-learning-"))
    config = TuneConfig(
        methods=args.methods.split(","),
        min_new_rows=10,
        min_new_pairs=4,
        threads=args.threads,
        nice=0,  # run the whole benchmark under `nice` instead
        max_length=192,
        reward_max_steps=args.steps * 2,
        kto_max_steps=args.steps,
        sft_max_steps=args.steps,
        prompt_tuning_max_steps=args.steps,
        rl_max_steps=args.rl_steps,
        rl_learning_rate=args.rl_learning_rate,
        rl_max_completion_length=args.rl_max_tokens,
    )
    limit_resources(config)
    torch.manual_seed(args.seed)
    random.seed(args.seed)
    generator = Generator(base)
    started = time.monotonic()
    database_url = f"sqlite+aiosqlite:///{work / 'ratchet.db'}"
    settings = Settings(data_dir=work, database_url=database_url, base_model=base)
    if args.continue_in:
        run = Nightly(settings, config).resume()
    else:
        run = seed_and_train(args, generator, settings, config)
    record = run.record
    if record["status"] != "succeeded":
        sys.exit(f"the nightly run did not train: {record['status']}: {record.get('message')}")

    held_out = record["held_out"]["candidate"]
    print(f"figure reward_model_held_out_auc {held_out.get('pointwise_auc')}")
    print(f"figure reward_model_held_out_pairwise_accuracy {held_out.get('pairwise_accuracy')}")
    print(f"figure reward_model_held_out_pairs {held_out.get('held_out_pairs')}")

    # 3. Base vs each candidate on questions no stage trained on, sampled as users are answered.
    served = served_defaults(settings)
    print(f"# evaluated at {served}: {args.eval_samples} answers per question, at most {args.eval_max_tokens} tokens")

    def run_eval(model: Any) -> dict[str, Any]:
        return evaluate_served(generator, model, served, args.eval_max_tokens, args.eval_samples, args.seed)

    results = {"base": run_eval(generator.base)}
    for method, reason in record.get("skipped_methods", {}).items():
        print(f"# {method} not trained: {reason}")
    for method, adapter in record["adapters"].items():
        results[method] = run_eval(generator.with_adapter(Path(adapter)))
    base_figures = results["base"]
    print(f"figure base_mean_words {base_figures['mean_words']:.1f}")
    print(f"figure base_product_name_rate {base_figures['product_name_rate']:.3f}")
    print(f"figure base_accuracy {base_figures['accuracy']:.3f}")
    print(f"figure base_degenerate_rate {base_figures['degenerate_rate']:.3f}")
    for method, figures in results.items():
        if method == "base":
            continue
        print(
            f"ratio length_ratio_candidate_vs_base[{method}] {ratio(figures['mean_words'], base_figures['mean_words'])}"
        )
        print(
            f"ratio product_name_rate_candidate_vs_base[{method}] "
            f"{ratio(figures['product_name_rate'], base_figures['product_name_rate'])} "
            f"({figures['product_name_rate']:.3f} vs {base_figures['product_name_rate']:.3f})"
        )
        print(f"ratio accuracy_candidate_vs_base[{method}] {ratio(figures['accuracy'], base_figures['accuracy'])}")
        print(f"figure degenerate_rate[{method}] {figures['degenerate_rate']:.3f}")
        pairs = list(zip(base_figures["correct"], figures["correct"], strict=True))
        print(
            f"figure known_answers_lost[{method}] {sum(b and not c for b, c in pairs)} "
            f"gained {sum(c and not b for b, c in pairs)} of {len(pairs)}"
        )
    (work / "learning.json").write_text(json.dumps(results, indent=2))
    print(f"figure seconds_total {time.monotonic() - started:.0f}")
    print(f"# run dir {run.dir}; answers in {work / 'learning.json'}")


if __name__ == "__main__":
    main()
