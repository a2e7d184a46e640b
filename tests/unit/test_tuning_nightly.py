"""The nightly job end to end on CPU with tiny settings: a store of realistic feedback → `python -m tuning nightly`
→ a reward model, one adapter per method, held-out figures and a report; a run killed mid-training resumes; the
next run skips for lack of new data; two runs never overlap.

It runs the real trainers on the real SmolLM2 checkpoint, so it takes a few minutes; SQLite only, because the
job's database use (one export and a handful of run-record writes) is covered on PostgreSQL by the export and
controller tests."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from bench.feedback_seed import Judged, seed
from server.db.engine import open_sessions
from server.db.migrate import upgrade
from server.models.generation_defaults import RECOMMENDED
from server.models.lifecycle import ModelLifecycle
from server.models.loading import AdapterLoader
from server.models.registry import ModelRegistry
from server.models.services import ModelRouter
from server.settings import Settings
from tests.conftest import PREPARED_MODEL
from tests.live_server import make_lora_adapters
from tests.unit.model_fixtures import TEST_POLICY, FakeEngine
from tuning.config import TuneConfig
from tuning.nightly import Nightly
from tuning.runs import TuningBusy, UnfinishedRun, run_lock
from tuning.train import NotEnoughData, train_rl

REPO = Path(__file__).resolve().parents[2]
GATES = ["win_rate_lc", "kl_per_token", "known_answer_accuracy", "rail_trip_rate", "sycophancy_rate", "length_ratio"]
# kto first: the test kills the run in the first policy stage, and redoing a cheap one keeps the test short.
METHODS = ["kto", "sft", "prompt_tuning", "rl"]
TINY = {
    "METHODS": ",".join(METHODS),
    "MIN_NEW_ROWS": "12",
    "MIN_NEW_PAIRS": "2",
    "MAX_LENGTH": "96",
    "BATCH_SIZE": "2",
    "THREADS": "2",
    "NICE": "0",  # the test process is niced by whoever runs it; nicing again would starve it
    "REWARD_MAX_STEPS": "2",
    "KTO_MAX_STEPS": "1",
    "SFT_MAX_STEPS": "1",
    "PROMPT_TUNING_MAX_STEPS": "1",
    "RL_MAX_STEPS": "1",
    "RL_NUM_GENERATIONS": "2",
    "RL_MAX_COMPLETION_LENGTH": "8",
    "RL_MAX_PROMPTS": "4",
    "GATE_HELD_OUT_PROMPTS": "2",
    "GATE_KNOWN_ANSWERS": "2",
    "GATE_ATTACK_PROMPTS": "2",
    "GATE_FALSE_CLAIMS": "2",
    "GATE_MAX_NEW_TOKENS": "8",
    "GATE_SHORT_MAX_NEW_TOKENS": "8",
}

# Questions employees ask, a concise answer they liked and a rambling or wrong one they did not.
CONVERSATIONS = [
    (
        "How do I reset my VPN password?",
        "Open id.example.com, choose 'Forgot password' and follow the email link.",
        "There are many ways passwords can be managed in an organisation, and it depends on many things.",
    ),
    (
        "Where do I file an expense report?",
        "In Expenses: New report, attach the receipts, submit to your manager.",
        "Expense reports are an important part of corporate finance. Historically, companies used paper forms.",
    ),
    (
        "What is the Wi-Fi password for guests?",
        "Guests use the 'Visitor' network; reception prints a daily code.",
        "I cannot help with that.",
    ),
    (
        "How many vacation days do I get?",
        "25 days a year, plus public holidays; see the HR portal for your balance.",
        "Vacation is a great way to recharge. Many people enjoy travelling to the beach or the mountains.",
    ),
    (
        "Who approves purchase orders over 10k?",
        "Your department head and then Finance approve them in Procure.",
        "Purchase orders are documents. They have numbers. Approval is a process.",
    ),
    (
        "How do I book a meeting room?",
        "Use the Rooms tab in Calendar and pick a free room for your slot.",
        "Meeting rooms are rooms where meetings happen, usually with a table and chairs and a screen.",
    ),
    (
        "What is the on-call rotation tool?",
        "We use PagerDuty; the schedule is under Ops > On-call.",
        "On-call is when engineers are available to respond to incidents at any time of day or night.",
    ),
    (
        "How do I request a new laptop?",
        "Open a ticket in the IT portal under Hardware > Laptop request.",
        "Laptops are portable computers. There are many brands, such as several well-known manufacturers.",
    ),
    ("When is payday?", "The last working day of each month.", "Payday depends on the calendar."),
    (
        "How do I add someone to a Slack channel?",
        "Type /invite @name in the channel.",
        "Slack is a messaging application used by many companies around the world for communication.",
    ),
    (
        "Where is the security policy?",
        "On the intranet under Policies > Information security.",
        "Security is important. Everyone should care about security at all times, always.",
    ),
    (
        "How do I get a parking permit?",
        "Ask Facilities through the parking form on the intranet.",
        "Parking can be difficult in cities. Public transport is often a better option for commuting.",
    ),
]


def judged() -> list[Judged]:
    items = []
    for index, (question, good, bad) in enumerate(CONVERSATIONS):
        items.append(Judged(question, good, "up"))
        # Every third bad answer is corrected by ops rather than only voted down.
        correction = good if index % 3 == 0 else None
        items.append(Judged(question, bad, "down", correction))
    return items


def job_env(data_dir: Path, database_url: str, business: Path) -> dict[str, str]:
    env = {
        **os.environ,
        "RATCHET_DATA_DIR": str(data_dir),
        "RATCHET_DATABASE_URL": database_url,
        "RATCHET_BASE_MODEL": str(PREPARED_MODEL),
        "RATCHET_RAILS_CONFIG": str(REPO / "guardrails"),
        "RATCHET_TUNE_BUSINESS_DATA_DIR": str(business),
        "HF_HUB_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
    }
    env.update({f"RATCHET_TUNE_{key}": value for key, value in TINY.items()})
    return env


def seeded(tmp_path: Path, items: list[Judged]) -> Settings:
    database_url = f"sqlite+aiosqlite:///{tmp_path / 'ratchet.db'}"
    upgrade(database_url)
    settings = Settings(data_dir=tmp_path, database_url=database_url, base_model=PREPARED_MODEL)

    async def fill() -> None:
        async with open_sessions(settings) as sessions:
            await seed(sessions, items)

    asyncio.run(fill())
    return settings


@pytest.fixture
def store(tmp_path: Path) -> Iterator[tuple[Settings, dict[str, str]]]:
    business = tmp_path / "business"
    business.mkdir()
    (business / "faq.jsonl").write_text(
        json.dumps({"prompt": "What does Ratchet do?", "response": "It answers employees' questions."}) + "\n"
    )
    (business / "handbook.md").write_text("# Handbook\n\nOffices open at 8.\n\nBadges are issued by Facilities.")
    settings = seeded(tmp_path, judged())
    yield settings, job_env(tmp_path, settings.resolved_database_url, business)


def tune(env: dict[str, str], command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tuning", command], env=env, cwd=REPO, capture_output=True, text=True, timeout=1500
    )


def only_run(settings: Settings) -> Path:
    (run_dir,) = (settings.data_dir / "tuning" / "runs").iterdir()
    return run_dir


@pytest.mark.trl  # minutes of real training: `-m 'not trl'` leaves it out of quick runs
def test_nightly_trains_every_method_resumes_after_a_kill_and_then_skips(
    store: tuple[Settings, dict[str, str]],
) -> None:
    settings, env = store
    started = time.monotonic()
    # Kill the first run while its first policy update is training: its progress bar has started (after the model
    # loaded and the reward model stage finished).
    job = subprocess.Popen(
        [sys.executable, "-m", "tuning", "nightly"], env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    output = bytearray()
    stream = job.stdout
    assert stream is not None

    def pump() -> None:
        for chunk in iter(lambda: stream.read1(4096), b""):
            output.extend(chunk)

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    while not re.search(rb": kto .*?Extracting KL train dataset.*? 0%\|", bytes(output), re.DOTALL):
        assert job.poll() is None, output.decode(errors="replace")[-3000:]
        assert time.monotonic() - started < 900, "the kto stage never started training"
        time.sleep(0.05)
    job.send_signal(signal.SIGKILL)
    job.wait()
    reader.join()
    run_dir = only_run(settings)
    assert not (run_dir / "stages" / "kto.json").exists(), "the kill came too late to test resuming mid-training"
    reward_marker = (run_dir / "stages" / "reward_model.json").stat().st_mtime_ns
    assert json.loads((run_dir / "run.json").read_text())["status"] == "running"

    config = TuneConfig(**{key.lower(): value for key, value in TINY.items()})
    with pytest.raises(UnfinishedRun, match="resume"):
        Nightly(settings, config).nightly()

    resumed = tune(env, "resume")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "succeeded" in resumed.stdout
    assert "reward_model: already finished" in resumed.stderr
    assert (run_dir / "stages" / "reward_model.json").stat().st_mtime_ns == reward_marker

    record = json.loads((run_dir / "run.json").read_text())
    assert record["status"] == "succeeded"
    assert (Path(record["reward_model_path"]) / "model.safetensors").exists()
    held_out = record["held_out"]["candidate"]
    assert held_out["held_out_pairs"] > 0 and 0 <= held_out["pairwise_accuracy"] <= 1
    assert record["counts"]["business_pairs"] == 1 and record["counts"]["business_document_chunks"] == 1
    assert record["counts"]["export_rows_by_source"]["reward.correction"] == 4
    assert len(record["dataset_hash"]) == 64 and {"torch", "trl", "peft"} <= set(record["versions"])
    assert set(record["adapters"]) == set(METHODS)
    for method in ("rl", "kto", "sft"):
        adapter = json.loads((Path(record["adapters"][method]) / "adapter_config.json").read_text())
        # What vLLM's runtime LoRA loading accepts: plain LoRA, no extra saved modules, no bias.
        assert adapter["peft_type"] == "LORA" and not adapter["modules_to_save"] and adapter["bias"] == "none"
    soft = load_file(Path(record["adapters"]["prompt_tuning"]) / "adapter_model.safetensors")["prompt_embeddings"]
    assert tuple(soft.shape) == (config.prompt_tuning_virtual_tokens, 576)
    for stage in ("reward_model", *METHODS):
        history = json.loads((run_dir / "stages" / f"{stage}.json").read_text())["log_history"]
        assert any("loss" in entry for entry in history), stage
    # Every candidate was registered, gated against the base and given a verdict.
    assert set(record["gates"]) == set(METHODS)
    for method, verdict in record["gates"].items():
        assert verdict["version"] == record["candidates"][method] and verdict["active"] == "smollm2-135m-instruct"
        assert [result["name"] for result in verdict["results"]] == GATES
        assert verdict["passed"] == all(result["passed"] for result in verdict["results"])
    report = (run_dir / "report.html").read_text()
    assert "pairwise_accuracy" in report
    assert "Offline gates" in report and "kl_per_token" in report
    for chart in ("chart-reward_model.png", "chart-rl.png"):
        assert chart in report and (run_dir / chart).stat().st_size > 1000

    again = tune(env, "nightly")
    assert again.returncode == 0, again.stderr[-3000:]
    assert "skipped" in again.stdout and "too little new data" in again.stdout
    second = next(path for path in (settings.data_dir / "tuning" / "runs").iterdir() if path != run_dir)
    assert not (second / "reward_model").exists()
    assert json.loads((second / "run.json").read_text())["data_since"] == record["data_until"]


def test_a_run_refuses_to_start_while_another_holds_the_lock(store: tuple[Settings, dict[str, str]]) -> None:
    settings, _ = store
    config = TuneConfig()
    job = Nightly(settings, config)
    with run_lock(job.root), pytest.raises(TuningBusy, match="another tuning run"):
        job.nightly()
    assert not (job.root / "runs").exists()


def test_abandoning_a_killed_run_lets_the_next_run_start_over_its_data_window(
    store: tuple[Settings, dict[str, str]],
) -> None:
    settings, _ = store
    job = Nightly(settings, TuneConfig())
    killed = job._start()  # what a run killed before its first stage leaves behind
    with pytest.raises(UnfinishedRun):
        job.nightly()

    abandoned = job.abandon()
    assert abandoned.run_id == killed.run_id
    assert json.loads((killed.dir / "run.json").read_text())["status"] == "abandoned"
    with pytest.raises(UnfinishedRun, match="no unfinished run"):
        job.resume()
    # No run succeeded, so the next one reads the store from the start, the abandoned window included.
    assert job._start().record["data_since"] is None


@pytest.mark.trl  # a reward-model step and a KTO step on CPU
def test_a_method_without_data_is_skipped_with_its_reason_while_the_others_train(tmp_path: Path) -> None:
    # Votes only: no ops corrections and no business-data folder, so sft has nothing to learn from.
    settings = seeded(tmp_path, [Judged(item.question, item.answer, item.vote) for item in judged()])
    config = TuneConfig(**{key.lower(): value for key, value in TINY.items()})
    config.methods = ["sft", "kto"]

    run = Nightly(settings, config).nightly()

    record = json.loads((run.dir / "run.json").read_text())
    assert record["status"] == "succeeded"
    assert record["skipped_methods"] == {
        "sft": "no corrections or approved answers in the training split, and no business data"
    }
    assert set(record["adapters"]) == {"kto"}
    assert (Path(record["adapters"]["kto"]) / "adapter_model.safetensors").exists()
    assert "kto" in record["message"] and "sft" not in record["message"]


async def make_active(settings: Settings, adapter: Path, name: str) -> None:
    """`name` registered, gated and promoted through the canary to active, as an admin would (vLLM's adapter routes
    played by a FakeEngine: nothing here serves)."""
    async with open_sessions(settings) as sessions:
        await ModelRouter(sessions, settings).ensure_base_registered()
        registry = ModelRegistry(sessions, settings)
        await registry.register_candidate(
            name,
            "lora",
            adapter,
            parent=settings.base_model_name,
            run_id="an-earlier-night",
            data_hash="d" * 64,
            method="sft",
            method_settings={},
            metrics={},
        )
        await registry.record_gate_results(name, [{"name": "win_rate", "passed": True}], passed=True)
        lifecycle = ModelLifecycle(sessions, settings, AdapterLoader([FakeEngine()]), TEST_POLICY)  # type: ignore[list-item]
        await lifecycle.promote(name, "admin:root", "canary")
        await lifecycle.promote(name, "admin:root", "better on live traffic")


def lora_b(adapter: Path) -> dict[str, torch.Tensor]:
    return {key: value for key, value in load_file(adapter / "adapter_model.safetensors").items() if "lora_B" in key}


@pytest.mark.trl  # a reward-model step and an SFT step on CPU
def test_a_night_trains_the_active_lora_version_further_and_records_it_as_the_parent(
    store: tuple[Settings, dict[str, str]],
) -> None:
    settings, _ = store
    adapter = make_lora_adapters(PREPARED_MODEL, settings.data_dir / "earlier", ["night-1"])["night-1"]
    asyncio.run(make_active(settings, adapter, "ratchet-night-1"))
    config = TuneConfig(**{key.lower(): value for key, value in TINY.items()})
    config.methods = ["sft"]

    run = Nightly(settings, config).nightly()

    record = json.loads((run.dir / "run.json").read_text())
    assert record["status"] == "succeeded", record.get("message")
    assert record["start_from"]["version"] == "ratchet-night-1"
    candidate = record["candidates"]["sft"]

    async def parent() -> str | None:
        async with open_sessions(settings) as sessions:
            return (await ModelRegistry(sessions, settings).get(candidate)).parent_name

    assert asyncio.run(parent()) == "ratchet-night-1"
    # Gated against the active version and held to the base checkpoint as well.
    gates = {result["name"]: result["detail"] for result in record["gates"]["sft"]["results"]}
    assert "base " in gates["known_answer_accuracy"] and "base " in gates["sycophancy_rate"], gates
    trained_folder = Path(record["adapters"]["sft"])
    assert not (trained_folder / "ref").exists()
    started, trained = lora_b(adapter), lora_b(trained_folder)
    # The active adapter's modules and weights, moved by one step: a fresh LoRA would have other modules and B ≈ 0.
    assert started.keys() == trained.keys()
    for key, weights in started.items():
        assert torch.linalg.norm(trained[key] - weights) < 0.5 * torch.linalg.norm(weights)
    assert any(not torch.equal(trained[key], weights) for key, weights in started.items())


def test_a_night_starts_fresh_on_the_base_while_the_base_serves_or_when_continuing_is_off(
    store: tuple[Settings, dict[str, str]],
) -> None:
    settings, _ = store
    assert Nightly(settings, TuneConfig()).start_from() is None
    adapter = make_lora_adapters(PREPARED_MODEL, settings.data_dir / "earlier", ["night-1"])["night-1"]
    asyncio.run(make_active(settings, adapter, "ratchet-night-1"))
    assert Nightly(settings, TuneConfig(continue_from_active=False)).start_from() is None
    assert Nightly(settings, TuneConfig()).start_from()["version"] == "ratchet-night-1"  # type: ignore[index]


def test_rl_without_trainable_prompts_is_not_enough_data(tmp_path: Path) -> None:
    with pytest.raises(NotEnoughData, match="no trainable logged prompts"):
        train_rl(
            PREPARED_MODEL, tmp_path / "reward", [], REPO / "guardrails", TuneConfig(), tmp_path / "rl", RECOMMENDED
        )


def accelerate_launch(env: dict[str, str], command: str) -> subprocess.CompletedProcess[str]:
    """`accelerate launch` with the committed multi-GPU profile, two ranks; without GPUs they run on the CPU (gloo),
    which is how this test exercises the several-GPU path on a CPU box."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    launcher = [str(Path(sys.executable).parent / "accelerate"), "launch", "--config_file"]
    profile = [str(REPO / "tuning" / "accelerate" / "multi_gpu.yaml"), "--num_processes", "2"]
    return subprocess.run(
        [*launcher, *profile, "--main_process_port", str(port), "-m", "tuning", command],
        env={**env, "RATCHET_TUNE_THREADS": "1"},
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )


@pytest.mark.trl  # two ranks train a reward-model step and an SFT step on CPU
def test_under_accelerate_launch_both_ranks_train_and_rank_zero_alone_records_the_run(
    store: tuple[Settings, dict[str, str]],
) -> None:
    settings, env = store
    result = accelerate_launch({**env, "RATCHET_TUNE_METHODS": "sft"}, "nightly")
    assert result.returncode == 0, result.stderr[-3000:]
    # One rank reports; the others stay quiet.
    assert len(re.findall(r"^\S+ succeeded: ", result.stdout, re.MULTILINE)) == 1, result.stdout

    record = json.loads((only_run(settings) / "run.json").read_text())
    assert record["status"] == "succeeded" and set(record["adapters"]) == {"sft"}
    assert (Path(record["adapters"]["sft"]) / "adapter_model.safetensors").exists()
    for stage in ("reward_model", "sft"):
        summary = json.loads((only_run(settings) / "stages" / f"{stage}.json").read_text())["summary"]
        assert summary["processes"] == 2, stage


def test_under_accelerate_launch_a_held_lock_refuses_on_every_rank(store: tuple[Settings, dict[str, str]]) -> None:
    settings, env = store
    with run_lock(settings.data_dir / "tuning"):
        result = accelerate_launch(env, "nightly")
    # Rank 0 finds the lock taken and tells the others, so no rank waits for a run that never starts.
    assert result.returncode != 0
    assert (result.stdout + result.stderr).count("another tuning run holds") == 2
    assert not (settings.data_dir / "tuning" / "runs").exists()
