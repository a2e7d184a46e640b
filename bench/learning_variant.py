"""One stage of the nightly job again, with other settings, on the data of an earlier bench/learning.py run.

How the tuning defaults in docs/tuning.md were chosen: the seeded store and its reward model stay fixed, one
method is trained with the overrides given, and the candidate is judged with bench/learning.py's own evaluation
(the base's figures are computed once and kept next to the run). For `reward_model` the held-out figures of a
freshly trained reward model are printed instead.

Run: `.venv/bin/python bench/learning_variant.py RUN_DIR sft sft_learning_rate=5e-5` where RUN_DIR is the
`# run dir` bench/learning.py printed.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from bench.learning import evaluate_served, ratio
from server.models.generation_defaults import served_defaults
from server.settings import get_settings
from tuning import train
from tuning.config import TuneConfig
from tuning.data import Datasets
from tuning.evaluation import Generator
from tuning.runs import limit_resources

STAGES = ("reward_model", "rl", "kto", "sft", "prompt_tuning")


def overridden(run_dir: Path, overrides: list[str]) -> TuneConfig:
    values = json.loads((run_dir / "run.json").read_text())["config"]
    for override in overrides:
        name, _, raw = override.partition("=")
        if name not in TuneConfig.model_fields:
            sys.exit(f"unknown setting {name!r}")
        values[name] = raw  # parsed as its env var would be
    return TuneConfig(**values)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("stage", choices=STAGES)
    parser.add_argument("overrides", nargs="*", help="TuneConfig settings as name=value")
    parser.add_argument("--eval-max-tokens", type=int, default=64)
    parser.add_argument("--eval-samples", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0, help="the evaluation's seed")
    args = parser.parse_args()

    config = overridden(args.run_dir, args.overrides)
    limit_resources(config)
    settings = get_settings()
    base = settings.base_model_dir.resolve()
    data = Datasets.read(args.run_dir / "datasets")
    label = ",".join(args.overrides) or "as recorded"
    out = args.run_dir.parent.parent / "variants" / f"{args.stage}-{label}"

    if args.stage == "reward_model":
        train.train_reward_model(base, data.pairs, config, out)
        figures = train.evaluate_reward_model(
            out / "model", data.held_out_pairs, data.held_out_pointwise, config.max_length
        )
        print(f"figure reward_model_held_out_auc[{label}] {figures.get('pointwise_auc')}")
        print(f"figure reward_model_held_out_pairwise_accuracy[{label}] {figures.get('pairwise_accuracy')}")
        return

    if args.stage == "rl":
        reward_model = Path(json.loads((args.run_dir / "run.json").read_text())["reward_model_path"])
        train.train_rl(base, reward_model, data.prompts, settings.rails_config, config, out, served_defaults(settings))
    elif args.stage == "sft":
        train.train_sft(base, data.sft, config, out)
    elif args.stage == "kto":
        train.train_kto(base, data.kto, config, out)
    else:
        train.train_prompt_tuning(base, data.kto, config, out)

    generator = Generator(base)
    served = served_defaults(settings)

    def judged(model: Any) -> dict[str, Any]:
        return evaluate_served(generator, model, served, args.eval_max_tokens, args.eval_samples, args.seed)

    # The base's figures are kept per evaluation setting: figures sampled otherwise are no baseline.
    setting = f"{served.temperature}-{served.top_p}-{served.repetition_penalty}-{args.eval_samples}-{args.seed}"
    cached = args.run_dir.parent.parent / "variants" / f"base-{setting}-{args.eval_max_tokens}.json"
    if cached.exists():
        base_figures = json.loads(cached.read_text())
    else:
        base_figures = judged(generator.base)
        cached.write_text(json.dumps(base_figures))
    figures = judged(generator.with_adapter(out / "adapter"))
    pairs = list(zip(base_figures["correct"], figures["correct"], strict=True))
    name = f"{args.stage}: {label}"
    print(f"ratio length_ratio_candidate_vs_base[{name}] {ratio(figures['mean_words'], base_figures['mean_words'])}")
    print(
        f"ratio product_name_rate_candidate_vs_base[{name}] "
        f"{ratio(figures['product_name_rate'], base_figures['product_name_rate'])} "
        f"({figures['product_name_rate']:.3f} vs {base_figures['product_name_rate']:.3f})"
    )
    print(f"ratio accuracy_candidate_vs_base[{name}] {ratio(figures['accuracy'], base_figures['accuracy'])}")
    print(f"figure degenerate_rate[{name}] {figures['degenerate_rate']:.3f}")
    print(
        f"figure known_answers_lost[{name}] {sum(b and not c for b, c in pairs)} "
        f"gained {sum(c and not b for b, c in pairs)} of {len(pairs)}"
    )


if __name__ == "__main__":
    main()
