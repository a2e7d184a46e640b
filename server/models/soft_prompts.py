"""Soft prompts (prompt_tuning versions) as vLLM serves them: prompt embeddings.

vLLM has no prompt-tuning adapters; with `--enable-prompt-embeds` its /v1/completions takes the prompt as a
(tokens, hidden) tensor instead. PEFT trained the soft prompt in front of the whole chat-templated prompt
(`PeftModelForCausalLM.forward`: `cat(prompt_embeddings, embed_tokens(input_ids))`), so that is what is built here:
the chat template of the base checkpoint's tokenizer (with the generation prompt, as vLLM's chat endpoint renders
it), its token ids looked up in the base's input embedding matrix, the version's `prompt_embeddings` in front.

The tokenizer and the embedding matrix are read once, on the first soft-prompt request; each soft prompt is read
once per version name (names are immutable), after its files' hashes are checked as a LoRA's are before vLLM loads
it. All of it is CPU work on tensors: the async entry point runs it in a worker thread."""

from __future__ import annotations

import base64
import io
import json
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio

from server.db.models import ModelVersion
from server.engine.client import EngineUnavailableError
from server.engine.launcher import vllm_dtype
from server.models.artefacts import ArtefactChangedError, verify_hashes
from server.settings import Settings

if TYPE_CHECKING:
    import torch

PROMPT_EMBEDDINGS = "prompt_embeddings"
SOFT_PROMPT_FILE = "adapter_model.safetensors"
# Where Hugging Face causal LMs of the Llama family keep the input embedding matrix.
EMBED_KEYS = ("model.embed_tokens.weight", "embed_tokens.weight")
_WIRE_DTYPES = ("float32", "bfloat16", "float16")


class SoftPromptUnavailableError(EngineUnavailableError):
    """A soft prompt version cannot be served now (its files changed, the base checkpoint is not readable here);
    the answer fails with this reason, as when vLLM is down."""

    code = "soft_prompt_unavailable"


class SoftPrompts:
    """The base checkpoint's tokenizer and input embeddings, and each served soft prompt, for building the
    `prompt_embeds` of a chat turn."""

    def __init__(self, base_model_dir: Path, base_model_name: str, wire_dtype: str = "float32") -> None:
        self.base_model_dir = base_model_dir
        # The completions request goes to vLLM under the base model's name: the soft prompt is in the tensor.
        self.base_model_name = base_model_name
        # Sent in the dtype vLLM computes in (it casts to it anyway): half the bytes for bfloat16.
        self._wire_dtype = wire_dtype if wire_dtype in _WIRE_DTYPES else "float32"
        self._lock = threading.Lock()
        self._tokenizer: Any = None
        self._embeddings: torch.Tensor | None = None
        self._prompts: dict[str, torch.Tensor] = {}

    @classmethod
    def for_settings(cls, settings: Settings) -> SoftPrompts:
        return cls(settings.base_model_dir, settings.base_model_name, vllm_dtype(settings))

    async def prompt_embeds(self, version: ModelVersion, messages: Sequence[dict[str, Any]]) -> str:
        """The chat turn's prompt for `version`, as /v1/completions' `prompt_embeds` (base64 of `torch.save`)."""
        return await anyio.to_thread.run_sync(self.encoded, version, messages)

    def encoded(self, version: ModelVersion, messages: Sequence[dict[str, Any]]) -> str:
        import torch

        tensor = self.embeddings(version, messages).to(getattr(torch, self._wire_dtype)).contiguous()
        buffer = io.BytesIO()
        torch.save(tensor, buffer)
        return base64.b64encode(buffer.getvalue()).decode("ascii")

    def embeddings(self, version: ModelVersion, messages: Sequence[dict[str, Any]]) -> torch.Tensor:
        """`cat(soft prompt, embed_tokens(chat template ids))`, shape (virtual tokens + prompt tokens, hidden)."""
        import torch

        soft_prompt = self.soft_prompt(version)
        ids = self.prompt_ids(messages)
        embeddings = self._base_embeddings()
        return torch.cat([soft_prompt.to(embeddings.dtype), embeddings[torch.tensor(ids, dtype=torch.long)]])

    def prompt_ids(self, messages: Sequence[dict[str, Any]]) -> list[int]:
        """The token ids of the chat-templated prompt, as vLLM's chat endpoint renders and tokenizes it."""
        tokenizer = self._base_tokenizer()
        text = tokenizer.apply_chat_template(list(messages), tokenize=False, add_generation_prompt=True)
        return list(tokenizer(text, add_special_tokens=False)["input_ids"])

    def soft_prompt(self, version: ModelVersion) -> torch.Tensor:
        """The version's (num_virtual_tokens, hidden) soft prompt, read once its files hash as registered."""
        cached = self._prompts.get(version.name)
        if cached is not None:
            return cached
        if version.adapter_path is None:
            raise SoftPromptUnavailableError(f"{version.name} has no artefact to read its soft prompt from")
        from safetensors.torch import load_file

        path = Path(version.adapter_path)
        try:
            verify_hashes(path, version.artefact_hashes)
        except ArtefactChangedError as error:
            raise SoftPromptUnavailableError(f"{version.name}: {error}") from error
        tensor = load_file(str(path / SOFT_PROMPT_FILE))[PROMPT_EMBEDDINGS]
        hidden = self._base_embeddings().shape[1]
        if tensor.dim() != 2 or tensor.shape[1] != hidden:
            raise SoftPromptUnavailableError(
                f"{version.name}: its soft prompt is {tuple(tensor.shape)}, the base's hidden size is {hidden}"
            )
        with self._lock:
            return self._prompts.setdefault(version.name, tensor)

    def _base_tokenizer(self) -> Any:
        if self._tokenizer is None:
            with self._lock:
                if self._tokenizer is None:
                    from transformers import AutoTokenizer

                    try:
                        self._tokenizer = AutoTokenizer.from_pretrained(str(self.base_model_dir))
                    except OSError as error:
                        raise SoftPromptUnavailableError(
                            f"no tokenizer for soft prompts in {self.base_model_dir}: {error}"
                        ) from error
        return self._tokenizer

    def _base_embeddings(self) -> torch.Tensor:
        if self._embeddings is None:
            with self._lock:
                if self._embeddings is None:
                    self._embeddings = _read_embedding_matrix(self.base_model_dir)
        return self._embeddings


def _read_embedding_matrix(model_dir: Path) -> torch.Tensor:
    """The input embedding matrix alone from the checkpoint's safetensors (sharded or not)."""
    from safetensors import safe_open

    index = model_dir / "model.safetensors.index.json"
    if index.exists():
        weight_map: dict[str, str] = json.loads(index.read_text())["weight_map"]
        files = [model_dir / weight_map[key] for key in EMBED_KEYS if key in weight_map]
    else:
        files = sorted(model_dir.glob("*.safetensors"))
    for file in files:
        with safe_open(str(file), framework="pt") as weights:
            for key in EMBED_KEYS:
                if key in weights.keys():
                    return weights.get_tensor(key)
    raise SoftPromptUnavailableError(f"no input embedding matrix ({', '.join(EMBED_KEYS)}) in {model_dir}")
