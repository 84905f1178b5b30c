# Source on the GPU machine after benchmarks/gpu/install.sh:  source benchmarks/gpu/env.sh
# (no variable named CC here or anywhere in these scripts: compilers read it)
export GPU_PY="${GPU_PY:-/opt/torch/.venv/bin/python3}"     # the image's Python 3.12 with torch 2.11
export GPU_SITE="${GPU_SITE:-/tmp/site}"                      # vLLM 0.26.0 + deps + arctic-inference + this project
export GPU_MODELS_DIR="${GPU_MODELS_DIR:-/tmp/models}"        # bf16 HF folders materialized from GGUF
case ":${PYTHONPATH:-}:" in *":$GPU_SITE:"*) ;; *) export PYTHONPATH="$GPU_SITE${PYTHONPATH:+:$PYTHONPATH}" ;; esac
case ":$PATH:" in *":$GPU_SITE/bin:"*) ;; *) export PATH="$GPU_SITE/bin:$(dirname "$GPU_PY"):$PATH" ;; esac  # cmake, ninja

export VLLM_USE_FLASHINFER_SAMPLER=0      # flashinfer is not carried; without this the engine core dies importing it
export VLLM_USE_V2_MODEL_RUNNER=0         # V2 runner + inductor did not finish starting (vllm-async-spec.md §5)
export VLLM_ENABLE_INDUCTOR_MAX_AUTOTUNE=0
export ARCTIC_INFERENCE_ENABLED=0         # arctic-inference's vLLM plugin stays off; `suffix` only needs its suffix tree
export VLLM_NO_USAGE_STATS=1 DO_NOT_TRACK=1
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1
export TOKENIZERS_PARALLELISM=false
export PYTHONUNBUFFERED=1
export VLLM_CACHE_ROOT="${VLLM_CACHE_ROOT:-/tmp/vllm-cache}"
export TRITON_CACHE_DIR="${TRITON_CACHE_DIR:-/tmp/triton-cache}"
# Engine settings that start in about a minute there (pass them to vllm.LLM / OpenRLHF):
#   compilation_config={"mode": 0, "cudagraph_mode": "FULL_DECODE_ONLY"}   (or enforce_eager=True)
