"""The one place Ratchet's configuration is read. Every knob is an env var ``RATCHET_<NAME>``."""

from __future__ import annotations

import hashlib
import ipaddress
import os
import re
from functools import cached_property, lru_cache
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_SYSTEM_PROMPT = (
    "You are Ratchet, the company's internal assistant. Answer employees' questions helpfully, "
    "accurately and concisely. If you do not know, say so."
)


class Settings(BaseSettings):
    """Ratchet settings. Field docs are the README's settings table (see `ratchet settings`)."""

    # Inputs stay out of validation errors: they may be secrets.
    model_config = SettingsConfigDict(env_prefix="RATCHET_", env_file=".env", extra="ignore", hide_input_in_errors=True)

    data_dir: Path = Field(
        Path("var"),
        description="Where the database, models, adapters and derived data (the fitted jailbreak classifier) live.",
    )
    database_url: SecretStr = Field(
        SecretStr(""),
        description="SQLAlchemy async URL; empty means a SQLite file in the data dir. Secret: shown without its "
        "password.",
    )
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
    # Generation defaults for what a client leaves out (server/models/generation_defaults.py); empty means the
    # model's own: its generation_config.json, which `ratchet model prepare` fills for SmolLM2.
    generation_temperature: float | None = Field(
        None, ge=0, le=2, description="Temperature when the client sends none; empty means the model's (SmolLM2: 0.4)."
    )
    generation_top_p: float | None = Field(
        None, gt=0, le=1, description="top_p when the client sends none; empty means the model's (SmolLM2: 0.9)."
    )
    generation_max_tokens: int | None = Field(
        None, ge=1, description="max_tokens when the client sends none; empty means the model's (SmolLM2: 512)."
    )
    generation_repetition_penalty: float | None = Field(
        None, gt=0, le=2, description="vLLM's repetition penalty (1 is none); empty means the model's (SmolLM2: 1)."
    )
    generation_frequency_penalty: float | None = Field(
        None,
        ge=-2,
        le=2,
        description="OpenAI's frequency penalty (0 is none); empty means the model's (SmolLM2: 0.4).",
    )

    vllm_url: str = Field("", description="External vLLM server URL; empty means Ratchet starts its own.")
    vllm_replica_urls: str = Field(
        "",
        description="Comma-separated URLs of each vLLM replica behind RATCHET_VLLM_URL (a router): model versions "
        "are loaded into every one. Empty: the one engine at RATCHET_VLLM_URL.",
    )
    vllm_replicas_dns: str = Field(
        "",
        description="host:port whose DNS records are the vLLM replicas (a Kubernetes headless Service), re-read "
        "on every reconcile pass; used when RATCHET_VLLM_REPLICA_URLS is empty.",
    )
    vllm_port: int = Field(8001, description="Port of the managed vLLM server (on 127.0.0.1).")
    vllm_dtype: str = Field(
        "auto",
        description="Managed vLLM dtype. auto: on CPU bfloat16 with AVX-512, float32 without (bfloat16 measured 2.4x "
        "slower at 16 streams on an AVX2-only CPU, bench/vllm_cpu_settings.py); vLLM's own choice on a GPU.",
    )
    vllm_cpu_threads: int = Field(
        0,
        ge=0,
        description="Cores the managed vLLM engines on CPU use, the first N this process may run on; 0 means all. "
        "RATCHET_VLLM_CPU_LAYOUT says how the engines share them.",
    )
    vllm_cpu_layout: Literal["auto", "shared", "split"] = Field(
        "auto",
        description="How the vLLM engines on CPU share the cores. shared: every engine binds all of them. split: two "
        "halves, the main engine on the first, each version served merged on the half with fewer engines, so a "
        "canary's engine neither starves nor slows the one serving everyone (two engines on the same two cores: "
        "4.6-8.8x the p95; one engine on one of two cores: about the same p95 at 4 chats, 0.78-0.81x the peak "
        "throughput at 16, docs/models.md). auto: split where versions are served merged on vLLM-cpu, shared "
        "otherwise.",
    )
    vllm_kv_cache_gib: int = Field(2, description="KV cache size of the managed vLLM on CPU, in GiB.")
    vllm_max_model_len: int = Field(2048, description="Longest context (prompt + answer) in tokens.")
    vllm_max_loras: int = Field(4, description="LoRA adapters vLLM keeps loaded at once.")
    vllm_max_lora_rank: int = Field(16, description="Largest LoRA rank vLLM accepts.")
    serve_lora_as: Literal["auto", "adapter", "merged"] = Field(
        "auto",
        description="How a live LoRA version is served. adapter: loaded into the LoRA-enabled vLLM. merged: merged "
        "into a checkpoint of its own, served by a vLLM of its own without LoRA (the managed vLLM then runs without "
        "LoRA too), switched blue/green; only with the managed vLLM. auto: merged with the managed vLLM-cpu on 2 cores "
        "or more (LoRA decodes at ~0.27x there, docs/models.md; a canary's engine needs cores of its own), adapter "
        "otherwise.",
    )
    canary_fraction: float = Field(
        0.2, gt=0, lt=1, description="Share of an alias's users a canary version answers (sticky per user)."
    )
    canary_check_interval_s: float = Field(
        5, gt=0, description="Seconds between live-canary verdicts on the votes, trips and errors so far."
    )
    # The live canary's vote test (CanaryPolicy in server/models/canary.py); the defaults are CanaryPolicy's.
    canary_margin: float = Field(
        0.02,
        ge=0,
        lt=1,
        description="Non-inferiority margin on thumbs-up rate: a canary shown to be worse by less than this "
        "is promoted.",
    )
    canary_min_votes_per_arm: int = Field(
        50, ge=1, description="Weighted votes each arm needs (after the per-user cap) before the canary decides."
    )
    canary_min_users_per_arm: int = Field(10, ge=2, description="Voters each arm needs before the canary decides.")
    canary_max_votes_per_user: int = Field(
        20, ge=1, description="A user's votes weigh at most this many in the canary's test: no one voter decides alone."
    )
    model_sync_interval_s: float = Field(
        1,
        gt=0,
        description="Seconds between checks that vLLM has every live model version loaded (re-loading after a "
        "restart) and has unloaded the drained ones.",
    )
    model_drain_grace_s: float = Field(
        15,
        ge=0,
        description="A version no longer routed stays loaded at least this long, and until no answer it is "
        "writing is pending, before it is unloaded.",
    )
    vllm_extra_args: str = Field("", description="Extra command-line arguments for the managed vLLM.")
    vllm_start_timeout_s: float = Field(600, description="How long to wait for the managed vLLM to be ready.")
    vllm_request_timeout_s: float = Field(300, description="Timeout of one generation request to vLLM.")

    token_cache_ttl_s: float = Field(
        10, description="Seconds a verified API token is cached in memory (revocation takes this long)."
    )
    trusted_user_header: str = Field(
        "",
        description="Header an SSO proxy sets to the user's name; empty (default) turns the mode off. Needs "
        "RATCHET_TRUSTED_PROXY_SECRET or RATCHET_TRUSTED_PROXIES, or the app refuses to start.",
    )
    trusted_proxy_secret: SecretStr = Field(
        SecretStr(""),
        description="Secret the SSO proxy sends in RATCHET_TRUSTED_PROXY_SECRET_HEADER; the user header is only "
        "believed with it (compared in constant time). Secret: never shown.",
    )
    trusted_proxy_secret_header: str = Field(
        "X-Ratchet-Proxy-Secret", description="Header that carries RATCHET_TRUSTED_PROXY_SECRET."
    )
    trusted_proxies: str = Field(
        "",
        description="Comma-separated addresses or networks (CIDR) of the SSO proxy; the user header is only "
        "believed from them (the peer address, not X-Forwarded-For).",
    )
    redis_url: SecretStr = Field(
        SecretStr(""),
        description="Redis URL for what replicas share (rate-limit counts); empty keeps it in each process's "
        "memory. Secret: shown without its password.",
    )
    rate_limit_chat_per_minute: int = Field(
        30, ge=0, description="Chat completions and regenerations one user may start per minute; 0: no limit."
    )
    rate_limit_feedback_per_minute: int = Field(
        120, ge=0, description="Votes one user may cast or withdraw per minute; 0: no limit."
    )
    max_body_bytes: int = Field(
        1_048_576, ge=1024, description="Largest request body accepted on any route (413 beyond, nothing read)."
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

    slack_bot_token: SecretStr = Field(
        SecretStr(""), description="Slack bot token (`xoxb-…`); with the signing secret it turns the Slack bot on."
    )
    slack_signing_secret: SecretStr = Field(
        SecretStr(""), description="Slack app signing secret: every request from Slack is verified with it."
    )
    slack_app_token: SecretStr = Field(
        SecretStr(""), description="Slack app-level token (`xapp-…`): use Socket Mode instead of a public URL."
    )
    slack_api_url: str = Field("https://slack.com/api/", description="Base URL of Slack's Web API.")
    slack_delivery: Literal["stream", "update", "once"] = Field(
        "stream",
        description="How answers reach Slack: `stream` (chat streaming), `update` (chat.update in chunks) or "
        "`once` (posted whole when done).",
    )
    slack_ops_channel: str = Field(
        "", description="Slack channel id told about new guardrail blocks (high-priority review items); empty: off."
    )
    public_url: str = Field(
        "", description="The app's public base URL, for links to the review page (e.g. in Slack notices)."
    )

    @field_validator("trusted_proxies")
    @classmethod
    def _check_proxies(cls, value: str) -> str:
        for item in value.split(","):
            if item.strip():
                ipaddress.ip_network(item.strip())  # a ValueError names the malformed entry
        return value

    @model_validator(mode="after")
    def _check_connections(self) -> Settings:
        if self.trusted_user_header and not (self.trusted_proxy_secret.get_secret_value() or self.trusted_proxies):
            raise ValueError(
                "RATCHET_TRUSTED_USER_HEADER needs RATCHET_TRUSTED_PROXY_SECRET or RATCHET_TRUSTED_PROXIES: "
                "without either, anyone who can reach the app could claim to be any user, admins included."
            )
        if self.vllm_replicas_dns and not re.fullmatch(r"[^\s:]+:\d{1,5}", self.vllm_replicas_dns):
            raise ValueError("RATCHET_VLLM_REPLICAS_DNS must be host:port, e.g. vllm-replicas.ratchet.svc:8000.")
        if self.serve_lora_as == "merged" and (self.vllm_url or self.vllm_replica_urls or self.vllm_replicas_dns):
            raise ValueError(
                "RATCHET_SERVE_LORA_AS=merged needs the managed vLLM (empty RATCHET_VLLM_URL): the app starts an "
                "engine per merged version on this host."
            )
        if urlsplit(self.vllm_url).password is not None:
            raise ValueError("RATCHET_VLLM_URL must not carry a password: it would appear in error messages.")
        return self

    @cached_property
    def trusted_proxy_networks(self) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
        return [ipaddress.ip_network(item.strip()) for item in self.trusted_proxies.split(",") if item.strip()]

    @cached_property
    def resolved_database_url(self) -> str:
        if url := self.database_url.get_secret_value():
            return url
        return f"sqlite+aiosqlite:///{(self.data_dir / 'ratchet.db').resolve()}"

    @cached_property
    def base_model_dir(self) -> Path:
        if self.base_model is not None:
            return self.base_model
        return self.data_dir / "models" / self.base_model_name

    @cached_property
    def merged_dir(self) -> Path:
        """Where LoRA versions merged into checkpoints of their own are kept (derived: rebuilt when missing)."""
        return self.data_dir / "merged"

    @cached_property
    def adapters_dir(self) -> Path:
        """Where registered adapter versions are kept, one immutable folder per version name."""
        return self.data_dir / "adapters"

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
    def slack_enabled(self) -> bool:
        return bool(self.slack_signing_secret.get_secret_value() and self.slack_bot_token.get_secret_value())

    @cached_property
    def cpu_threads(self) -> int:
        return self.vllm_cpu_threads or len(os.sched_getaffinity(0))


_SECRET_QUERY_KEY = re.compile(r"(?i)(password|passwd|secret|token|key)")


def masked_url(url: str) -> str:
    """`url` with its password (and any password-like query value) replaced by `***`, for printouts and logs."""
    parts = urlsplit(url)
    userinfo, at, host = parts.netloc.rpartition("@")
    pairs = [item.partition("=") for item in parts.query.split("&") if item]
    has_password = bool(at) and ":" in userinfo
    if not has_password and not any(_SECRET_QUERY_KEY.search(key) for key, _, _ in pairs):
        return url  # untouched: a round trip through urlsplit can change a URL (sqlite:////abs/path)
    if has_password:
        parts = parts._replace(netloc=f"{userinfo.partition(':')[0]}:***@{host}")
    query = "&".join(
        f"{key}=***" if _SECRET_QUERY_KEY.search(key) else f"{key}{sep}{value}" for key, sep, value in pairs
    )
    return parts._replace(query=query).geturl()


@lru_cache
def get_settings() -> Settings:
    return Settings()
