#!/usr/bin/env bash
# CPU-machine side of the GPU bring-up (see docs/gpu.md).
#
#   benchmarks/gpu/prepare.sh            download what wheels.lock pins (re-using earlier
#                                        downloads), build sidecars + project wheel, cut
#                                        the payload into <= 60 MiB chunk folders
#   benchmarks/gpu/prepare.sh --relock   resolve the dependencies again, rewrite wheels.lock
#
# Options (env): CHUNK_MIB=60, GPU_MODELS=smollm2-135m-instruct,qwen2.5-coder-0.5b-instruct
#                (also known: qwen2.5-coder-1.5b-instruct, 19 more transfers)
# Everything big lives under benchmarks/gpu/chunks/ (git-ignored): dl/ (downloads),
# venv-cpu/ (transformers 5.17 + gguf, CPU torch, for the sidecars), payload/, cNN/.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
venv="$here/chunks/venv-cpu"
if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c "import transformers, gguf, torch, packaging" 2>/dev/null; then
    echo "[prepare] creating $venv (transformers==5.17.0, gguf==0.19.0, CPU torch)"
    mkdir -p "$here/chunks"
    python3 -m venv "$venv"
    # torch==2.13.0 resolves to the CPU build on these machines; it only serves
    # arctic-inference's setup.py (imports torch) and transformers' GGUF tokenizer code.
    "$venv/bin/python" -m pip install -q "torch==2.13.0" "transformers==5.17.0" "gguf==0.19.0" \
        "packaging" "setuptools" "wheel"
fi
exec "$venv/bin/python" "$here/prepare.py" "$@"
