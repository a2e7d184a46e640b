"""Checks on an adapter before it is registered, so that vLLM never meets one it would refuse or serve wrongly:
the same rules vLLM applies when it loads a LoRA (vllm/lora/peft_helper.py: rank, DoRA, biases, saved modules),
plus shape checks against the served base checkpoint (which catch an adapter trained on another model), plus the
soft prompt's width. Also the artefact's file hashes, taken when it is stored and checked before every load.

Everything here reads JSON and safetensors headers only: no tensor is loaded, so a check takes milliseconds."""

from __future__ import annotations

import hashlib
import json
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from safetensors import safe_open

from server.db.models import ModelKind
from server.exceptions import ConflictError, InvalidInputError

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
PEFT_TYPES = {ModelKind.LORA: "LORA", ModelKind.PROMPT_TUNING: "PROMPT_TUNING"}
# What vLLM accepts in modules_to_save (classification heads only).
SAVED_MODULES_VLLM_TAKES = ("score", "classifier")
_LORA_PREFIX = "base_model.model."


class InvalidArtefactError(InvalidInputError):
    """The artefact is corrupt or would not be served as trained; the reasons say which check failed."""

    code = "invalid_artefact"


class ArtefactChangedError(ConflictError):
    """The stored artefact no longer matches the hashes taken at registration (or is gone)."""

    code = "artefact_changed"


@dataclass(frozen=True)
class BaseCheckpoint:
    """What the checks need of the served base model: its names, width and the shape of every weight."""

    path: Path
    served_name: str
    hidden_size: int
    shapes: dict[str, tuple[int, ...]]

    @classmethod
    def read(cls, path: Path, served_name: str) -> BaseCheckpoint:
        config = json.loads((path / "config.json").read_text())
        hidden = config.get("hidden_size") or config.get("text_config", {}).get("hidden_size")
        index = path / "model.safetensors.index.json"
        files = (
            sorted(set(json.loads(index.read_text())["weight_map"].values()))
            if index.exists()
            else [p.name for p in path.glob("*.safetensors")]
        )
        shapes: dict[str, tuple[int, ...]] = {}
        for name in files:
            shapes.update(_shapes(path / name))
        return cls(path, served_name, int(hidden), shapes)

    def is_named(self, trained_on: str) -> bool:
        """Whether an adapter's base_model_name_or_path names this checkpoint: its served name, or a path to it or
        to a folder of the same name (the trainer may have seen it mounted elsewhere)."""
        given = Path(trained_on)
        return trained_on == self.served_name or given.name in (self.path.name, self.path.resolve().name)

    def weight_shape(self, module: str) -> tuple[int, ...] | None:
        shape = self.shapes.get(f"{module}.weight")
        if shape is None and module.endswith("lm_head"):
            # Tied embeddings: the output layer is the input embedding matrix.
            shape = self.shapes.get(module.removesuffix("lm_head") + "model.embed_tokens.weight")
        return shape


def _shapes(path: Path) -> dict[str, tuple[int, ...]]:
    with safe_open(str(path), framework="numpy") as handle:
        return {key: tuple(handle.get_slice(key).get_shape()) for key in handle.keys()}


def check_artefact(kind: ModelKind, path: Path, base: BaseCheckpoint, max_lora_rank: int) -> None:
    """Raise InvalidArtefactError listing every reason vLLM would refuse this artefact or serve it wrongly."""
    if not path.is_dir():
        raise InvalidArtefactError(f"no adapter directory at {path}")
    config_path = path / ADAPTER_CONFIG
    if not config_path.is_file():
        raise InvalidArtefactError(f"{path} has no {ADAPTER_CONFIG}")
    try:
        config = json.loads(config_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise InvalidArtefactError(f"{config_path} is not valid JSON: {error}") from None
    if not isinstance(config, dict):
        raise InvalidArtefactError(f"{config_path} is not a JSON object")
    if config.get("peft_type") != PEFT_TYPES[kind]:
        raise InvalidArtefactError(
            f"a {kind} version needs peft_type {PEFT_TYPES[kind]}, {config_path} says {config.get('peft_type')!r}"
        )
    problems = []
    trained_on = config.get("base_model_name_or_path")
    if trained_on and not base.is_named(str(trained_on)):
        problems.append(f"trained on base model {trained_on!r}, but the server serves {base.served_name} ({base.path})")
    weights_path = path / ADAPTER_WEIGHTS
    if not weights_path.is_file():
        problems.append(f"{path} has no {ADAPTER_WEIGHTS}")
        raise InvalidArtefactError("; ".join(problems))
    try:
        shapes = _shapes(weights_path)
    except Exception as error:  # safetensors raises its own error types for every kind of damage
        raise InvalidArtefactError(f"{weights_path} is corrupt: {type(error).__name__}: {error}") from None
    if kind == ModelKind.LORA:
        problems += _lora_problems(config, shapes, base, max_lora_rank)
    else:
        problems += _soft_prompt_problems(config, shapes, base)
    if problems:
        raise InvalidArtefactError("; ".join(problems))


def _lora_problems(
    config: dict[str, Any], shapes: dict[str, tuple[int, ...]], base: BaseCheckpoint, max_rank: int
) -> list[str]:
    problems = []
    ranks = [config.get("r") or 0, *(config.get("rank_pattern") or {}).values()]
    if max(ranks) > max_rank:
        problems.append(f"LoRA rank {max(ranks)} is above the server's limit {max_rank} (RATCHET_VLLM_MAX_LORA_RANK)")
    saved = [module for module in config.get("modules_to_save") or [] if module not in SAVED_MODULES_VLLM_TAKES]
    if saved:
        problems.append(f"modules_to_save {saved}: vLLM serves saved modules only for {SAVED_MODULES_VLLM_TAKES}")
    if config.get("use_dora"):
        problems.append("DoRA (use_dora): vLLM does not serve it")
    if config.get("bias", "none") != "none" or config.get("lora_bias"):
        problems.append(
            f"trains biases (bias={config.get('bias')!r}, lora_bias={config.get('lora_bias')}): "
            "vLLM does not serve them"
        )
    lora_keys = [key for key in shapes if ".lora_A." in key or ".lora_B." in key]
    if not lora_keys:
        problems.append("the weights hold no LoRA matrices (lora_A / lora_B)")
    for key in sorted(lora_keys):
        problem = _lora_shape_problem(key, shapes[key], base, max_rank)
        if problem:
            problems.append(problem)
            break  # one mismatch says enough; a wrong base model would list every layer
    others = [key for key in shapes if key not in lora_keys and not _is_allowed_saved_module(key)]
    if others:
        problems.append(f"holds weights vLLM does not load: {', '.join(sorted(others)[:3])}")
    return problems


def _is_allowed_saved_module(key: str) -> bool:
    return any(f".{module}." in f".{key}" for module in SAVED_MODULES_VLLM_TAKES)


def _lora_shape_problem(key: str, shape: tuple[int, ...], base: BaseCheckpoint, max_rank: int) -> str | None:
    module, _, matrix = key.removeprefix(_LORA_PREFIX).rpartition(".lora_")
    base_shape = base.weight_shape(module)
    if base_shape is None or len(base_shape) != 2:
        return f"adapts {module}, which the base model {base.served_name} does not have as a linear layer"
    if len(shape) != 2:
        return f"{key} has shape {list(shape)}, not a matrix"
    out_features, in_features = base_shape
    if matrix.startswith("A"):
        rank, width, expected = shape[0], shape[1], in_features
    else:
        width, rank, expected = shape[0], shape[1], out_features
    if width != expected:
        return (
            f"{key} has shape {list(shape)}, which does not fit {module} of the base model {base.served_name} "
            f"({list(base_shape)}): trained on another base model"
        )
    if rank > max_rank:
        return f"{key} has rank {rank}, above the server's limit {max_rank} (RATCHET_VLLM_MAX_LORA_RANK)"
    return None


def _soft_prompt_problems(
    config: dict[str, Any], shapes: dict[str, tuple[int, ...]], base: BaseCheckpoint
) -> list[str]:
    embeddings = shapes.get("prompt_embeddings")
    if embeddings is None:
        return ["the weights hold no prompt_embeddings"]
    virtual_tokens = config.get("num_virtual_tokens")
    problems = []
    if len(embeddings) != 2 or embeddings[1] != base.hidden_size:
        problems.append(
            f"soft prompt of shape {list(embeddings)}: its width must be the base model's hidden size "
            f"{base.hidden_size}"
        )
    elif embeddings[0] != virtual_tokens:
        problems.append(f"soft prompt has {embeddings[0]} rows but num_virtual_tokens is {virtual_tokens}")
    if config.get("token_dim") not in (None, base.hidden_size):
        problems.append(f"token_dim {config.get('token_dim')} differs from the base model's width {base.hidden_size}")
    return problems


def file_hashes(path: Path) -> dict[str, str]:
    """sha256 of every file under `path`, by relative path."""
    hashes = {}
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        digest = hashlib.sha256()
        with file.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
        hashes[file.relative_to(path).as_posix()] = digest.hexdigest()
    return hashes


def verify_hashes(path: Path, expected: dict[str, str]) -> None:
    """Raise ArtefactChangedError unless the files under `path` are exactly those hashed at registration."""
    if not path.is_dir():
        raise ArtefactChangedError(f"the artefact at {path} is gone")
    actual = file_hashes(path)
    changed = sorted(name for name in expected.keys() | actual.keys() if expected.get(name) != actual.get(name))
    if changed:
        raise ArtefactChangedError(f"the artefact at {path} changed since it was registered: {', '.join(changed)}")


def store_artefact(source: Path, destination: Path) -> dict[str, str]:
    """Copy the artefact to its immutable place (never overwriting one) and return its hashes. The copy is made
    beside the destination and renamed into place, so a crash leaves no half-copied version directory."""
    if destination.exists():
        raise FileExistsError(destination)
    destination.parent.mkdir(parents=True, exist_ok=True)
    staging = destination.with_name(f".{destination.name}.{uuid.uuid4().hex[:8]}.partial")
    shutil.copytree(source, staging, symlinks=False)
    hashes = file_hashes(staging)
    staging.rename(destination)
    return hashes
