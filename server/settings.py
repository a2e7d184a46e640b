"""The one place Ratchet's configuration is read. Every knob is an env var ``RATCHET_<NAME>``."""

from __future__ import annotations

import hashlib
import os
from functools import cached_property, lru_cache
from pathlib import Path

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_SYSTEM_PROMPT = (
    "You are Ratchet, the company's internal assistant. Answer employees' questions helpfully, "
    "accurately and concisely. If you do not know, say so."
)


class Settings(BaseSettings):
    """Ratchet settings. Field docs are the README's settings table (see `ratchet settings`)."""

    model_config = SettingsConfigDict(env_prefix="RATCHET_", env_file=".env", extra="ignore")

    data_dir: Path = Field(Path("var"), description="Where the database, models and adapters live.")
    database_url: str = Field("", description="SQLAlchemy async URL; empty means a SQLite file in the data dir.")
    db_pool_size: int = Field(
        32, description="PostgreSQL connections the API keeps open; size it to the concurrent requests expected."
    )
    db_max_overflow: int = Field(
        8, description="Extra PostgreSQL connections opened in a burst beyond the pool, closed when returned."
    )
    host: str = Field("127.0.0.1", description="Address the API listens on.")
    port: int = Field(8000, description="Port the API listens on.")
    log_level: str = Field("info", description="Log level of the app (debug, info, warning, error).")

    base_model: Path | None = Field(
        None,
        description="Hugging Face-format checkpoint directory to serve; empty means the prepared SmolLM2.",
    )
    base_model_name: str = Field(
        "smollm2-135m-instruct", description="Concrete version name under which vLLM serves the base model."
    )
    default_model_alias: str = Field("ratchet", description="Model alias clients ask for by default.")
    system_prompt: str = Field(DEFAULT_SYSTEM_PROMPT, description="System prompt added when a chat has none.")
    default_max_tokens: int = Field(512, description="max_tokens when the client sends none.")

    vllm_url: str = Field("", description="External vLLM server URL; empty means Ratchet starts its own.")
    vllm_port: int = Field(8001, description="Port of the managed vLLM server (on 127.0.0.1).")
    vllm_dtype: str = Field(
        "bfloat16", description="Managed vLLM dtype; bfloat16 measured fastest here (bench/vllm_cpu_settings.py)."
    )
    vllm_cpu_threads: int = Field(
        0, description="OpenMP threads of the managed vLLM on CPU, bound to cores 0..N-1; 0 means all cores."
    )
    vllm_kv_cache_gib: int = Field(2, description="KV cache size of the managed vLLM on CPU, in GiB.")
    vllm_max_model_len: int = Field(2048, description="Longest context (prompt + answer) in tokens.")
    vllm_max_loras: int = Field(4, description="LoRA adapters vLLM keeps loaded at once.")
    vllm_max_lora_rank: int = Field(16, description="Largest LoRA rank vLLM accepts.")
    vllm_extra_args: str = Field("", description="Extra command-line arguments for the managed vLLM.")
    vllm_start_timeout_s: float = Field(600, description="How long to wait for the managed vLLM to be ready.")
    vllm_request_timeout_s: float = Field(300, description="Timeout of one generation request to vLLM.")

    token_cache_ttl_s: float = Field(
        10, description="Seconds a verified API token is cached in memory (revocation takes this long)."
    )
    trusted_user_header: str = Field(
        "", description="Header an SSO proxy sets to the user's name; empty (default) turns the mode off."
    )
    rails_enabled: bool = Field(
        True, description="Run the guardrails (input rails before, output rails after every answer)."
    )
    rails_config: Path = Field(
        Path("guardrails"),
        description="NeMo Guardrails config folder of the rails; reloaded by `ratchet rails reload` or SIGHUP.",
    )
    rails_speculative_generation: bool = Field(
        True,
        description="Start generating while the input rails check a question, hiding the check behind vLLM's "
        "prefill; a question they refuse or rewrite has that generation aborted and thrown away. False: check, "
        "then generate.",
    )
    ui_secret: SecretStr = Field(
        SecretStr(""),
        description="Key that encrypts web UI session cookies and signs CSRF tokens; empty means one is generated "
        "once into <data dir>/ui-secret (mode 600). Set the same value on every replica.",
    )
    ui_session_max_age_s: int = Field(
        12 * 3600, description="How long a web UI sign-in lasts before the user signs in again."
    )
    export_max_pairs_per_prompt: int = Field(
        8, description="Most preference pairs a training export builds from the answers to one identical prompt."
    )

    @cached_property
    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite+aiosqlite:///{(self.data_dir / 'ratchet.db').resolve()}"

    @cached_property
    def base_model_dir(self) -> Path:
        if self.base_model is not None:
            return self.base_model
        return self.data_dir / "models" / self.base_model_name

    @cached_property
    def system_prompt_version(self) -> str:
        return "sp-" + hashlib.sha256(self.system_prompt.encode()).hexdigest()[:12]

    @cached_property
    def managed_vllm(self) -> bool:
        return not self.vllm_url

    @cached_property
    def engine_url(self) -> str:
        return (self.vllm_url or f"http://127.0.0.1:{self.vllm_port}").rstrip("/")

    @cached_property
    def cpu_threads(self) -> int:
        return self.vllm_cpu_threads or len(os.sched_getaffinity(0))


@lru_cache
def get_settings() -> Settings:
    return Settings()
