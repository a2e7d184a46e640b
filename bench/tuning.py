"""How long each nightly stage takes per 1,000 rows on this machine.

Seeds a scratch store with --rows judged answers (no generation: templated answers of varied length, half up,
half down, some corrected), runs the nightly job with every method for --steps steps per trainer, and prints one
line per stage:
    figure seconds_per_1000_rows[<stage>] S   one pass over 1,000 of that stage's training rows (pairs for the
                                              reward model, thumbs for kto/prompt_tuning, texts for sft, prompts
                                              for rl), extrapolated from the measured seconds per step
    figure fixed_seconds[<stage>] S           what does not grow with rows: model loading, saving, evaluation
The snapshot (export from the store + dataset building) is timed on all --rows directly.

Run: `nice -n 10 .venv/bin/python bench/tuning.py` (CPU; on a GPU host the trainers use the GPU by themselves).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch

from bench.feedback_seed import Judged, seed
from server.db.engine import open_sessions
from server.db.migrate import upgrade
from server.settings import Settings, get_settings
from tuning.config import METHODS, TuneConfig
from tuning.nightly import Nightly
from tuning.runs import limit_resources

TOPICS = ["invoices", "expenses", "payroll", "VPN access", "laptops", "holidays", "parking", "security training"]
FILLER = "This depends on several factors that vary between teams, offices and the time of year. "


def rows(count: int) -> list[Judged]:
    items = []
    for index in range(count):
        topic = TOPICS[index % len(TOPICS)]
        question = f"Question {index // 4} about {topic}: how does it work?"
        good = index % 2 == 0
        answer = f"For {topic}, use the {topic} page on the intranet." if good else FILLER * (1 + index % 4)
        correction = f"See the {topic} page on the intranet." if not good and index % 10 == 1 else None
        items.append(Judged(question, answer, "up" if good else "down", correction))
    return items


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1000)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="ratchet-tuning-bench-"))
    database_url = f"sqlite+aiosqlite:///{work / 'ratchet.db'}"
    upgrade(database_url)
    settings = Settings(data_dir=work, database_url=database_url, base_model=get_settings().base_model_dir.resolve())

    async def fill() -> None:
        async with open_sessions(settings) as sessions:
            await seed(sessions, rows(args.rows))

    asyncio.run(fill())
    steps = args.steps
    config = TuneConfig(
        methods=args.methods.split(","),
        threads=args.threads,
        nice=0,
        reward_max_steps=steps,
        kto_max_steps=steps,
        sft_max_steps=steps,
        prompt_tuning_max_steps=steps,
        rl_max_steps=steps,
    )
    limit_resources(config)
    run = Nightly(settings, config).nightly()
    if run.record["status"] != "succeeded":
        sys.exit(f"the nightly run did not train: {run.record.get('message')}")

    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"CPU, {config.threads} threads"
    print(f"# device: {device}; {args.rows} feedback rows; {steps} steps per trainer")
    snapshot = json.loads((run.dir / "stages" / "snapshot.json").read_text())["seconds"]
    print(f"figure seconds_per_1000_rows[snapshot] {snapshot * 1000 / args.rows:.2f}")
    # Rows one optimiser step consumes on one rank. GRPO's batch is num_generations completions of each of
    # rl_prompts_per_step prompts, and every generated batch is trained on rl_num_iterations times.
    per_step = {stage: config.batch_size * config.gradient_accumulation_steps for stage in ("reward_model", *METHODS)}
    per_step["rl"] = config.rl_prompts_per_step * config.gradient_accumulation_steps / config.rl_num_iterations
    for stage in ("reward_model", *config.methods):
        marker = json.loads((run.dir / "stages" / f"{stage}.json").read_text())
        final = next(entry for entry in reversed(marker["log_history"]) if "train_runtime" in entry)
        step_seconds = final["train_runtime"] / marker["summary"]["steps"]
        rows_per_step = per_step[stage] * marker["summary"].get("processes", 1)
        print(f"figure seconds_per_1000_rows[{stage}] {step_seconds * 1000 / rows_per_step:.0f}")
        print(f"figure fixed_seconds[{stage}] {marker['seconds'] - final['train_runtime']:.1f}")


if __name__ == "__main__":
    main()
