"""The nightly job: lock → snapshot → (skip if too little new data) → reward model → policy updates (each adapter
registered with the model registry as a candidate) → offline gates (each candidate gated or rejected) → report.

Each stage writes its outputs under ``<runs dir>/runs/<run id>/<stage>/`` and then a marker
``stages/<stage>.json``; a stage whose marker exists is never run again, so ``resume`` continues a killed run
from the last finished stage. Nothing here talks to the serving vLLM: a run only produces files and records.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rich.console import Console

from server.models.generation_defaults import served_defaults
from server.settings import Settings
from tuning.config import TuneConfig
from tuning.data import Datasets, build_datasets, export_since, too_little
from tuning.distributed import Ranks
from tuning.records import RunRecords, active_version, register_candidate
from tuning.runs import Run, TuningBusy, UnfinishedRun, library_versions, run_lock, runs_root

UNFINISHED = ("running", "failed")
# Stages that read or write the store or the report: rank 0 alone runs them, the other ranks wait.
LEADER_ONLY = ("snapshot", "gate", "report")


class Nightly:
    def __init__(
        self, settings: Settings, config: TuneConfig, console: Console | None = None, ranks: Ranks | None = None
    ) -> None:
        self.settings = settings
        self.config = config
        self.ranks = ranks or Ranks()
        # Under `accelerate launch` only rank 0 reports; the others' output would repeat it.
        self.console = (console or Console(stderr=True)) if self.ranks.is_main else Console(stderr=True, quiet=True)
        self.root = runs_root(settings, config)
        self.records = RunRecords(settings)

    # Entry points -----------------------------------------------------------------------------------------------

    def nightly(self) -> Run:
        return self._lead(self._new_run)

    def resume(self) -> Run:
        return self._lead(self._unfinished_run)

    def abandon(self) -> Run:
        with run_lock(self.root):
            run = self._unfinished()
            if run is None:
                raise UnfinishedRun("no unfinished run to abandon")
            self._finish(run, "abandoned", "abandoned by an operator; its data window is trained by the next run")
            return run

    def _new_run(self) -> Run:
        unfinished = self._unfinished()
        if unfinished is not None:
            raise UnfinishedRun(
                f"run {unfinished.run_id} stopped at {unfinished.record['status']} after stage "
                f"{unfinished.record.get('stage') or '(none)'}: `ratchet tune resume` or `ratchet tune abandon`"
            )
        return self._start()

    def _unfinished_run(self) -> Run:
        run = self._unfinished()
        if run is None:
            raise UnfinishedRun("no unfinished run to resume")
        self.console.print(f"resuming run [bold]{run.run_id}[/] after stage {run.record.get('stage') or '(none)'}")
        return run

    def _lead(self, open_run: Callable[[], Run]) -> Run:
        """Rank 0 takes the lock and opens the run, then every rank trains it (there is one rank unless the job
        runs under `accelerate launch`). A refusal (busy, unfinished) is raised on every rank alike."""
        if not self.ranks.is_main:
            run_dir, refusal = self.ranks.share(None)
            if refusal is not None:
                kind, message = refusal
                raise {"TuningBusy": TuningBusy, "UnfinishedRun": UnfinishedRun}[kind](message)
            return self._execute(Run.load(Path(run_dir)))
        shared = False
        try:
            with run_lock(self.root):
                run = open_run()
                self.ranks.share((str(run.dir), None))
                shared = True
                return self._execute(run)
        except (TuningBusy, UnfinishedRun) as refusal:
            if not shared:
                self.ranks.share((None, (type(refusal).__name__, str(refusal))))
            raise

    # Stages -----------------------------------------------------------------------------------------------------

    def _stages(self) -> list[tuple[str, Callable[[Run], dict[str, Any]]]]:
        policy = {"rl": self._rl, "kto": self._kto, "sft": self._sft, "prompt_tuning": self._prompt_tuning}
        return [
            ("snapshot", self._snapshot),
            ("reward_model", self._reward_model),
            *[(method, policy[method]) for method in self.config.methods],
            ("gate", self._gate),
            ("report", self._report),
        ]

    def _execute(self, run: Run) -> Run:
        from transformers import set_seed

        # The run keeps the config it started with: resuming with other settings would mix two runs.
        self.config = TuneConfig(**run.record["config"])
        set_seed(self.config.seed)
        leader = self.ranks.is_main
        for stage, work in self._stages():
            if run.finished(stage) is not None:
                self.console.print(f"[dim]{stage}: already finished in this run[/]")
                continue
            self.console.rule(f"{run.run_id}: {stage}")
            if leader:
                shutil.rmtree(run.dir / stage, ignore_errors=True)  # a killed attempt's partial output
                (run.dir / stage).mkdir(parents=True)
            self.ranks.barrier()
            started = time.monotonic()
            try:
                result = work(run) if leader or stage not in LEADER_ONLY else {}
            except Exception as error:
                if leader:
                    self._finish(run, "failed", f"{stage} failed: {type(error).__name__}: {error}")
                raise
            if not leader:
                # Wait for rank 0 to record the stage, then read what it recorded (skip reason, reward model path).
                self.ranks.barrier()
                run.record = Run.load(run.dir).record
                if run.record.get("skip_reason"):
                    return run
                continue
            seconds = round(time.monotonic() - started, 2)
            run.record["durations_s"][stage] = seconds
            marker = run.marker(stage)
            marker.parent.mkdir(exist_ok=True)
            # Written aside and renamed: a kill mid-write must not leave a marker that claims a finished stage.
            marker.with_suffix(".partial").write_text(json.dumps({**result, "seconds": seconds}, default=str))
            marker.with_suffix(".partial").replace(marker)
            run.record["stage"] = stage
            run.save()
            self.records.save(run.run_id, stage=stage, durations_s=run.record["durations_s"])
            self.console.print(f"{stage}: done in {seconds:.1f} s")
            self.ranks.barrier()
            if run.record.get("skip_reason"):
                self._finish(run, "skipped", f"too little new data: {run.record['skip_reason']}; nothing trained")
                return run
        return run

    def _snapshot(self, run: Run) -> dict[str, Any]:
        since = run.record["data_since"]
        export = asyncio.run(
            export_since(
                self.settings,
                datetime.fromisoformat(since) if since else None,
                datetime.fromisoformat(run.record["data_until"]),
            )
        )
        export.write(run.dir / "snapshot")
        datasets = build_datasets(run.dir / "snapshot", self.config)
        datasets.write(run.dir / "datasets")
        counts = {
            "export_rows_by_source": export.manifest["rows_by_source"],
            "export_removed_by_filter": export.manifest["removed"],
            "answers_considered": export.manifest["answers_considered"],
            "answers_used": export.manifest["answers_used"],
            **datasets.counts,
        }
        run.record.update(
            counts=counts,
            dataset_hash=export.content_hash,
            skip_reason=too_little(datasets.counts, self.config),
            start_from=self.start_from(),
        )
        self.records.save(run.run_id, counts=counts, dataset_hash=export.content_hash)
        self.console.print(
            f"snapshot {export.content_hash[:12]}: " + ", ".join(f"{k} {v}" for k, v in datasets.counts.items())
        )
        return {"dataset_hash": export.content_hash, "skip_reason": run.record["skip_reason"]}

    def start_from(self) -> dict[str, str] | None:
        """The active LoRA version the night's LoRA updates train further, taken once with the snapshot so every
        rank and a resumed run start from the same one; None trains fresh adapters on the base."""
        if not self.config.continue_from_active:
            return None
        active = active_version(self.settings)
        if active.kind != "lora" or active.adapter is None:
            return None
        return {"version": active.name, "adapter": str(active.adapter)}

    def _parent(self, run: Run) -> str | None:
        start = run.record.get("start_from")
        return start["version"] if start else None

    def _start_adapter(self, run: Run) -> Path | None:
        start = run.record.get("start_from")
        return Path(start["adapter"]) if start else None

    def _datasets(self, run: Run) -> Datasets:
        return Datasets.read(run.dir / "datasets")

    def _reward_model(self, run: Run) -> dict[str, Any]:
        from tuning.train import evaluate_reward_model, finite, train_reward_model

        data = self._datasets(run)
        out = run.dir / "reward_model"
        result = train_reward_model(self.settings.base_model_dir, data.pairs, self.config, out)
        if not self.ranks.is_main:
            return result  # rank 0 evaluates and records
        held_out = {
            "candidate": evaluate_reward_model(
                out / "model", data.held_out_pairs, data.held_out_pointwise, self.config.max_length
            )
        }
        previous = run.record.get("previous_reward_model")
        if previous and Path(previous).exists():
            held_out["previous"] = evaluate_reward_model(
                Path(previous), data.held_out_pairs, data.held_out_pointwise, self.config.max_length
            )
        run.record.update(held_out=held_out, reward_model_path=str(out / "model"))
        self.records.save(run.run_id, held_out=held_out, reward_model_path=str(out / "model"))
        self.console.print(f"reward model held out: {held_out}")
        return {**result, "log_history": finite(result["log_history"]), "held_out": held_out}

    def _policy(
        self, run: Run, method: str, train: Callable[[Path], dict[str, Any]], parent: str | None = None
    ) -> dict[str, Any]:
        from tuning.train import NotEnoughData, finite

        out = run.dir / method
        try:
            result = train(out)
        except NotEnoughData as reason:
            # One thin source (say, no corrections yet) should not cost the other methods their night.
            self.console.print(f"[yellow]{method}: skipped, {reason}[/]")
            run.record.setdefault("skipped_methods", {})[method] = str(reason)
            return {"log_history": [], "skipped": str(reason)}
        if self.ranks.is_main:
            run.record["adapters"][method] = str(out / "adapter")
            self.records.save(run.run_id, adapters=run.record["adapters"])
            version = register_candidate(
                self.settings,
                run.run_id,
                method,
                out / "adapter",
                run.record["dataset_hash"],
                self.config.to_dict(),
                finite([result["summary"]])[0],
                parent,
            )
            run.record.setdefault("candidates", {})[method] = version
            self.console.print(f"{method}: registered candidate [bold]{version}[/]")
        return {**result, "log_history": finite(result["log_history"]), "adapter": str(out / "adapter")}

    def _rl(self, run: Run) -> dict[str, Any]:
        from tuning.train import train_rl

        data = self._datasets(run)
        return self._policy(
            run,
            "rl",
            lambda out: train_rl(
                self.settings.base_model_dir,
                Path(run.record["reward_model_path"]),
                data.prompts,
                self.settings.rails_config,
                self.config,
                out,
                served_defaults(self.settings),
                self._start_adapter(run),
            ),
            self._parent(run),
        )

    def _kto(self, run: Run) -> dict[str, Any]:
        from tuning.train import train_kto

        return self._lora_update(run, "kto", train_kto, self._datasets(run).kto)

    def _sft(self, run: Run) -> dict[str, Any]:
        from tuning.train import train_sft

        return self._lora_update(run, "sft", train_sft, self._datasets(run).sft)

    def _lora_update(
        self, run: Run, method: str, train: Callable[..., dict[str, Any]], rows: list[Any]
    ) -> dict[str, Any]:
        """A LoRA update on `rows`, from the run's starting version (the active adapter, or a fresh one)."""
        start = self._start_adapter(run)
        return self._policy(
            run,
            method,
            lambda out: train(self.settings.base_model_dir, rows, self.config, out, start),
            self._parent(run),
        )

    def _prompt_tuning(self, run: Run) -> dict[str, Any]:
        from tuning.train import train_prompt_tuning

        data = self._datasets(run)
        return self._policy(
            run,
            "prompt_tuning",
            lambda out: train_prompt_tuning(self.settings.base_model_dir, data.kto, self.config, out),
        )

    def _gate(self, run: Run) -> dict[str, Any]:
        """Every candidate of the night against the active version; the registry records each verdict."""
        from tuning.gate_runner import gate_candidates

        candidates = run.record.get("candidates", {})
        if not candidates:
            return {"gates": {}}
        data = self._datasets(run)
        night = [row["prompt"] for row in data.held_out_pointwise + data.held_out_pairs]
        verdicts = gate_candidates(
            self.settings,
            self.config,
            {method: (name, Path(run.record["adapters"][method])) for method, name in candidates.items()},
            Path(run.record["reward_model_path"]),
            night,
            self.console,
        )
        run.record["gates"] = verdicts
        return {"gates": verdicts}

    def _report(self, run: Run) -> dict[str, Any]:
        from tuning.report import write_report

        histories = {
            stage: (run.finished(stage) or {}).get("log_history", [])
            for stage in ("reward_model", *self.config.methods)
        }
        run.record.update(status="succeeded", message=self._summary(run))
        path = write_report(run.dir, run.record, histories)
        run.record["report"] = str(path)
        self._finish(run, "succeeded", run.record["message"])
        return {"report": str(path)}

    # Bookkeeping ------------------------------------------------------------------------------------------------

    def _summary(self, run: Run) -> str:
        candidate = run.record.get("held_out", {}).get("candidate", {})
        figures = ", ".join(f"{key} {value:.3f}" for key, value in candidate.items() if isinstance(value, float))
        skipped = run.record.get("skipped_methods", {})
        methods = ", ".join(method for method in self.config.methods if method not in skipped) or "no policy"
        return f"trained reward model ({figures or 'no held-out rows'}) and {methods}"

    def _start(self) -> Run:
        last = self.records.latest("succeeded")
        now = datetime.now(UTC)
        run_id = now.strftime("%Y%m%d-%H%M%S-") + secrets.token_hex(2)
        run_dir = self.root / "runs" / run_id
        run_dir.mkdir(parents=True)
        record: dict[str, Any] = {
            "run_id": run_id,
            "status": "running",
            "stage": "",
            "methods": list(self.config.methods),
            "config": self.config.to_dict(),
            "data_since": last["data_until"].isoformat() if last else None,
            "data_until": now.isoformat(),
            "previous_reward_model": last["reward_model_path"] if last else None,
            "base_model": str(self.settings.base_model_dir),
            "generation_defaults": asdict(served_defaults(self.settings)),
            "started_at": now.isoformat(),
            "versions": library_versions(),
            "durations_s": {},
            "adapters": {},
            "held_out": {},
            "counts": {},
            "dataset_hash": "",
            "pid": os.getpid(),
        }
        run = Run(run_dir, record)
        run.save()
        self.records.save(
            run_id,
            status="running",
            methods=record["methods"],
            data_since=last["data_until"] if last else None,
            data_until=now,
            run_dir=str(run_dir),
            versions=record["versions"],
        )
        self.console.print(f"run [bold]{run_id}[/] in {run_dir}: feedback since {record['data_since'] or 'the start'}")
        return run

    def _unfinished(self) -> Run | None:
        latest = self.records.latest("running", "failed", "succeeded", "skipped", "abandoned")
        if latest is None or latest["status"] not in UNFINISHED or not Path(latest["run_dir"]).exists():
            return None
        return Run.load(Path(latest["run_dir"]))

    def _finish(self, run: Run, status: str, message: str) -> None:
        finished = datetime.now(UTC)
        run.record.update(status=status, message=message, finished_at=finished.isoformat())
        run.save()
        self.records.save(
            run.run_id,
            status=status,
            message=message,
            finished_at=finished,
            durations_s=run.record["durations_s"],
        )
        colour = {"succeeded": "green", "skipped": "yellow"}.get(status, "red")
        self.console.print(f"[bold {colour}]run {run.run_id} {status}[/]: {message}")
