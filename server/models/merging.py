"""A LoRA version merged into a checkpoint of its own (W + B·A·scale, PEFT's `merge_and_unload`), so that an engine
without LoRA serves it at the base model's speed.

The merged checkpoint is derived data, kept in `<data dir>/merged/<version>/` and rebuilt when missing: it is
written aside and renamed into place, with a `ratchet-merged.json` naming the adapter files' hashes it was built
from, so a half-written or stale folder is never served. The merge runs in a child process
(`python -m server.models.merging`): it takes a few seconds and a model's worth of memory, neither of which the
app's event loop should carry."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path

import anyio

from server.db.models import ModelVersion
from server.exceptions import ConflictError
from server.settings import Settings

MARKER = "ratchet-merged.json"
# Files of the base checkpoint that are not its weights or model config: tokenizer, chat template, served defaults.
_WEIGHTS = {".safetensors", ".bin", ".pt"}


class MergeError(ConflictError):
    """The adapter could not be merged into the base checkpoint."""

    code = "merge_failed"


def merged_checkpoint(settings: Settings, version: ModelVersion) -> Path | None:
    """The version's merged checkpoint when it exists and was built from the version's registered files."""
    path = settings.merged_dir / version.name
    try:
        built_from = json.loads((path / MARKER).read_text())
    except (OSError, ValueError):
        return None
    return path if built_from.get("artefact_hashes") == version.artefact_hashes else None


async def ensure_merged(settings: Settings, version: ModelVersion, cores: tuple[int, ...] = ()) -> Path:
    """The version's merged checkpoint, built now if needed, on `cores` where given. Raises MergeError with the
    merge's reason."""
    if (existing := merged_checkpoint(settings, version)) is not None:
        return existing
    assert version.adapter_path is not None
    target = settings.merged_dir / version.name
    aside = settings.merged_dir / f".{version.name}.partial"
    await anyio.to_thread.run_sync(lambda: shutil.rmtree(aside, ignore_errors=True))
    aside.parent.mkdir(parents=True, exist_ok=True)
    command = [
        sys.executable,
        "-m",
        "server.models.merging",
        "--base",
        str(settings.base_model_dir.resolve()),
        "--adapter",
        version.adapter_path,
        "--out",
        str(aside),
    ]
    if cores:
        command += ["--cores", ",".join(map(str, cores))]
    result = await anyio.run_process(command, check=False)
    if result.returncode != 0:
        await anyio.to_thread.run_sync(lambda: shutil.rmtree(aside, ignore_errors=True))
        reason = result.stderr.decode(errors="replace").strip().splitlines()[-1:] or ["no output"]
        raise MergeError(f"merging {version.name} into the base checkpoint failed: {reason[0]}")
    (aside / MARKER).write_text(json.dumps({"version": version.name, "artefact_hashes": version.artefact_hashes}))

    def replace() -> None:
        shutil.rmtree(target, ignore_errors=True)
        aside.rename(target)

    await anyio.to_thread.run_sync(replace)
    return target


def merge(base: Path, adapter: Path, out: Path) -> None:
    """Merge the adapter into the base checkpoint and save it, with the base's tokenizer and served defaults."""
    import torch
    from peft import PeftModel
    from transformers import AutoConfig, AutoModelForCausalLM

    dtype = getattr(AutoConfig.from_pretrained(base), "dtype", None) or torch.float32
    # Merged in float32 (B·A is small next to W: summing in the checkpoint's dtype would round it away).
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    merged = PeftModel.from_pretrained(model, adapter).merge_and_unload()
    merged.to(dtype).save_pretrained(out, safe_serialization=True)
    for path in base.iterdir():
        # config.json is the merged model's own; ratchet-*.json describe the base checkpoint, not this one.
        if (
            path.is_file()
            and path.suffix not in _WEIGHTS
            and path.name != "config.json"
            and not path.name.startswith("ratchet-")
        ):
            shutil.copy2(path, out / path.name)


def main() -> None:
    parser = argparse.ArgumentParser(description="Merge a LoRA adapter into its base checkpoint.")
    parser.add_argument("--base", type=Path, required=True)
    parser.add_argument("--adapter", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--cores", help="Comma-separated cores to run on (default: all this process may use).")
    args = parser.parse_args()
    if args.cores:
        cores = {int(core) for core in args.cores.split(",")}
        os.sched_setaffinity(0, cores)
        os.environ["OMP_NUM_THREADS"] = str(len(cores))
    merge(args.base, args.adapter, args.out)


if __name__ == "__main__":
    main()
