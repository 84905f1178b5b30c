#!/usr/bin/env bash
# GPU machine: one real OpenRLHF GRPO run through `python -m openrlhf_das.cli.train`, DAS on
# (`das`) or stock OpenRLHF (`nodas`), for the DAS-vs-stock comparison (docs/gpu.md, "Training
# stack"). One GPU: actor (DeepSpeed ZeRO-2, bf16, SDPA) and one vLLM engine colocated
# (--train.colocate_all, CUDA-IPC weight sync, no sleep mode), GRPO (group_norm, KL off).
#
#   bash benchmarks/gpu/grpo_compare.sh das|nodas        (after install.sh all with the train stream)
#
# Both arms: same prompts (benchmarks/gpu/prompts/math_train_grpo.jsonl, MATH-500 rows of the
# `math` data recipe), same seed, same engine settings (CUDA graphs FULL_DECODE_ONLY without
# torch.compile, sync scheduling: gpu_compat's OPENRLHF_DAS_VLLM_ENGINE_ARGS) and the same
# DeepSpeed optimizer (torch AdamW: OPENRLHF_DAS_TORCH_ADAM=1, no nvcc JIT build). The DAS arm adds
# --das --das.config configs/das/math.yaml --das.pad_drafts true --das.gate.mode off
# --das.length_policy false --das.flat_budget.tokens 4 (drafts padded to k so every decode step
# replays a captured graph; since every step then pays for k draft tokens, every request drafts k).
#
# Default size: 24 prompts x 5 episodes / 4 prompts per step = 30 steps, 8 samples per prompt
# (32 per step), <= 512 new tokens, T = 1.0. Measured on one H200 (docs/gpu.md, session 4): start
# ~2 min, then ~10 s a step (generation ~5 s, training ~2.5 s, broadcast ~1.7 s); an arm took
# 406-457 s, so the bring-up (~130 s) and both arms fit one 30-minute device budget.
# Memory: the defaults (engine 0.25 of the GPU, micro-batches 2/4) leave room for the
# 151,936-entry logits; 0.5 / 8 ran out of memory in the first backward pass.
# Several GPUs (the multi-GPU issue): ENGINES=N runs N engines, one per GPU, and an N-GPU actor,
# all colocated; with --das, problems stick to engines (engine_for_problem) and each engine gets
# its problems' history. Short run: PROMPTS=16 EPISODES=3 (12 steps).
# Async scheduling: ASYNC=1 keeps vLLM's async scheduling in both arms (stock OpenRLHF = (a) of
# docs/gpu.md instead of (a')) and runs the DAS arm with --das.async_scheduling true (speculative
# method ngram_gpu with the DAS async proposer: the faster mode on the H100 rollout benchmark, not
# yet run through OpenRLHF on a GPU). The DAS flags are otherwise the same.
# GPU drafter: DRAFTER=gpu (needs ASYNC=1, which it sets) runs the DAS arm with the device-resident
# drafter (--das.async_scheduling true --das.device_drafter.enabled true: mode das_gpu of the
# rollout benchmark) instead of the padded host-drafter flags; the stock arm is the same as with ASYNC=1.
# Partial rollouts: PARTIAL=1 runs both arms on OpenRLHF's async trainer with its partial mode
# (--train.async_enable --train.partial_rollout_enable, --rollout.vllm_generate_batch_size
# 2 x ROLLOUT_BS) and the DAS arm with --das.partial_rollout true; the arms are then named
# das_partial / nodas_partial (their own work and result folders, their own compare).
# Issue 22: PRESET=issue22 sets the defaults of that comparison (each still overridable):
# Qwen2.5-Coder-1.5B-Instruct, <= 2048 new tokens (MAX_LEN 2560), ASYNC=1, DRAFTER=gpu,
# 24 prompts x 9 episodes = 54 steps, checkpoints every 5 steps (an arm spans several calls:
# RESUME=1), micro-batches 1 (train) / 2 (rollout) for the 1.5B model's 2560-token samples next
# to the engine. Its four calls per arm pair: `PRESET=issue22 bash grpo_compare.sh nodas`, then
# `... das`, each repeated with RESUME=1 until its 54 steps are done; PARTIAL=1 for the second pair.
# Stock engine as users run it: STOCK_ENGINE=defaults (nodas arm only; arm folder nodas_defaults)
# gives the stock arm vLLM's own engine settings instead of the benchmark's (V1 runner, mode 0,
# FULL_DECODE_ONLY, the DAS arm's): the runner vLLM picks (V2 for dense models on 0.26, which
# refuses ngram_gpu, so DAS cannot have it), VLLM_COMPILE and FULL_AND_PIECEWISE graphs (engine
# start ~100 s; docs/gpu.md, call 1a of the next session).
# Knobs (env): PRESET ASYNC DRAFTER PARTIAL STOCK_ENGINE ENGINES PROMPTS EPISODES ROLLOUT_BS N_SAMPLES MAX_NEW MAX_LEN SEED LR GPU_UTIL MICRO_TRAIN
# MICRO_ROLLOUT SAVE_STEPS (10; -1 = no checkpoints) TIME_LIMIT (530 s: the driver gets SIGINT
# then, so one device call of 600 s still copies the results) RESUME (1: continue from the last
# checkpoint) DRY_RUN (print the command only) MODEL DATA GRPO_WORK (/tmp/grpo).
#
# Output (the device tool returns $OUT): $OUT/grpo/<arm>/{train.log, steps.json, steps.csv,
# tb/ (TensorBoard), das/ (DAS run dir: meta.json, steps.jsonl), timing.txt}; the second arm's
# call also writes $OUT/grpo/compare.{png,json} (grpo_plot.py plot over both arms). State that a resumed
# run needs (checkpoints, the DAS history) stays in $GRPO_WORK/<arm>/ on the machine.
#
# Cut by the 10-minute call limit? The last checkpoint (every SAVE_STEPS steps) survives in
# /tmp/grpo/<arm>/ckpt while the machine stays warm: call `RESUME=1 bash benchmarks/gpu/grpo_compare.sh
# <arm>` again; OpenRLHF reloads model, optimizer, step and data-loader position
# (--ckpt.load_enable) and DAS the history of that checkpoint (run dir under the checkpoint path:
# resume/global_stepN/, pushed to the engine before the first resumed step). steps.json merges
# both calls' logs (train.log is appended; a repeated step keeps its last record).
set -uo pipefail
ARM=${1:-}
case "$ARM" in das|nodas) ;; *) echo "usage: $0 das|nodas" >&2; exit 2 ;; esac
PRESET=${PRESET:-}
case "$PRESET" in
  '') ;;
  issue22)  # defaults only: any knob set in the environment wins
    : "${MODEL_NAME:=qwen2.5-coder-1.5b-instruct}" "${MAX_NEW:=2048}" "${MAX_LEN:=2560}" "${ASYNC:=1}"
    : "${DRAFTER:=gpu}" "${EPISODES:=9}" "${SAVE_STEPS:=5}" "${MICRO_TRAIN:=1}" "${MICRO_ROLLOUT:=2}" ;;
  *) echo "PRESET must be issue22 or empty (got '$PRESET')" >&2; exit 2 ;;
esac
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
# shellcheck source=env.sh
source "$REPO/benchmarks/gpu/env.sh"
PY="$GPU_PY"; [ -x "$PY" ] || PY=$(command -v python3)
T0=$(date +%s.%N)
took() { awk -v n="$1" -v a="$2" -v b="$(date +%s.%N)" 'BEGIN { printf "[time] %-28s %6.1f s\n", n, b - a }'; }

MODEL=${MODEL:-$GPU_MODELS_DIR/${MODEL_NAME:-qwen2.5-coder-0.5b-instruct}}
DATA=${DATA:-$REPO/benchmarks/gpu/prompts/math_train_grpo.jsonl}
PROMPTS=${PROMPTS:-24}; EPISODES=${EPISODES:-5}; ROLLOUT_BS=${ROLLOUT_BS:-4}; N_SAMPLES=${N_SAMPLES:-8}
MAX_NEW=${MAX_NEW:-512}; MAX_LEN=${MAX_LEN:-1536}; SEED=${SEED:-42}; LR=${LR:-1e-6}
GPU_UTIL=${GPU_UTIL:-0.25}; MICRO_TRAIN=${MICRO_TRAIN:-2}; MICRO_ROLLOUT=${MICRO_ROLLOUT:-4}
export PYTORCH_CUDA_ALLOC_CONF=${PYTORCH_CUDA_ALLOC_CONF:-expandable_segments:True}
SAVE_STEPS=${SAVE_STEPS:-10}; TIME_LIMIT=${TIME_LIMIT:-530}; RESUME=${RESUME:-0}
ENGINES=${ENGINES:-1}   # GPUs: N vLLM engines (one per GPU) colocated with an N-GPU ZeRO-2 actor
case "$ENGINES" in ''|*[!0-9]*|0) echo "ENGINES must be a positive integer (got '$ENGINES')" >&2; exit 2 ;; esac
DRAFTER=${DRAFTER:-host}
case "$DRAFTER" in host) ;; gpu) ASYNC=${ASYNC:-1} ;; *) echo "DRAFTER must be host or gpu (got '$DRAFTER')" >&2; exit 2 ;; esac
ASYNC=${ASYNC:-0}
case "$ASYNC" in 0|1) ;; *) echo "ASYNC must be 0 or 1 (got '$ASYNC')" >&2; exit 2 ;; esac
[ "$DRAFTER" = gpu ] && [ "$ASYNC" != 1 ] && { echo "DRAFTER=gpu needs ASYNC=1 (the device drafter runs under async scheduling)" >&2; exit 2; }
PARTIAL=${PARTIAL:-0}
case "$PARTIAL" in 0|1) ;; *) echo "PARTIAL must be 0 or 1 (got '$PARTIAL')" >&2; exit 2 ;; esac
STOCK_ENGINE=${STOCK_ENGINE:-bench}
case "$STOCK_ENGINE" in bench) ;; defaults) [ "$ARM" = nodas ] || { echo "STOCK_ENGINE=defaults is for the nodas arm (DAS needs the V1 runner)" >&2; exit 2; } ;;
  *) echo "STOCK_ENGINE must be bench or defaults (got '$STOCK_ENGINE')" >&2; exit 2 ;; esac
NAME=$ARM; [ "$STOCK_ENGINE" = defaults ] && NAME=${ARM}_defaults
[ "$PARTIAL" = 1 ] && NAME=${NAME}_partial   # work/result folder of this arm
WORK=${GRPO_WORK:-/tmp/grpo}/$NAME
RES=${OUT:-$WORK/out}/grpo/$NAME
SPE=$(( (PROMPTS + ROLLOUT_BS - 1) / ROLLOUT_BS ))   # steps per episode

# The same shims in both arms, in every process (gpu_compat docstring): the sitecustomize folder
# on PYTHONPATH applies them from interpreter start; the repo first so every process (driver, Ray
# workers, vLLM engine processes) imports this checkout's openrlhf_das.
export OPENRLHF_DAS_TORCH_ADAM=${OPENRLHF_DAS_TORCH_ADAM:-1}
if [ "$STOCK_ENGINE" = defaults ]; then  # vLLM's own engine: the runner it picks, its compile and graphs
  unset VLLM_USE_V2_MODEL_RUNNER
  engine_args='{'; [ "$ASYNC" = 1 ] || engine_args+='"async_scheduling": false'
else
  engine_args='{"compilation_config": {"mode": 0, "cudagraph_mode": "FULL_DECODE_ONLY"}'
  [ "$ASYNC" = 1 ] || engine_args+=', "async_scheduling": false'
fi
export OPENRLHF_DAS_VLLM_ENGINE_ARGS=${OPENRLHF_DAS_VLLM_ENGINE_ARGS:-"$engine_args}"}
export PYTHONPATH="$REPO:$PYTHONPATH:$REPO/benchmarks/gpu/gpu_compat_site"
export RAY_DEDUP_LOGS=0 RAY_USAGE_STATS_ENABLED=0

REWARD=$(cd "$REPO" && "$PY" -m openrlhf_das.integrations.openrlhf.reward_funcs math) || REWARD=$REPO/openrlhf_das/integrations/openrlhf/reward_funcs/math_reward_func.py
args=(
  --ref.num_nodes 1 --ref.num_gpus_per_node "$ENGINES"
  --actor.num_nodes 1 --actor.num_gpus_per_node "$ENGINES"
  --vllm.num_engines "$ENGINES" --vllm.tensor_parallel_size 1
  --train.colocate_all --vllm.gpu_memory_utilization "$GPU_UTIL" --vllm.sync_backend nccl
  --algo.advantage.estimator group_norm --algo.kl.init_coef 0
  --actor.model_name_or_path "$MODEL"
  --reward.remote_url "$REWARD"
  --ckpt.output_dir "$WORK/final" --ckpt.path "$WORK/ckpt" --ckpt.save_steps "$SAVE_STEPS" --ckpt.max_num 1
  --train.batch_size $((ROLLOUT_BS * N_SAMPLES)) --rollout.batch_size "$ROLLOUT_BS"
  --rollout.n_samples_per_prompt "$N_SAMPLES"
  --train.micro_batch_size "$MICRO_TRAIN" --rollout.micro_batch_size "$MICRO_ROLLOUT"
  --train.num_episodes "$EPISODES" --train.max_epochs 1 --data.max_samples "$PROMPTS"
  --data.max_len "$MAX_LEN" --rollout.max_new_tokens "$MAX_NEW"
  --rollout.temperature 1.0 --rollout.top_p 1.0 --train.seed "$SEED"
  --ds.zero_stage 2 --ds.param_dtype bf16 --ds.attn_implementation sdpa --actor.adam.lr "$LR"
  --data.prompt_dataset "$DATA" --data.input_key prompt --data.label_key label --data.apply_chat_template
  --logger.tensorboard_dir "$WORK/tb" --logger.wandb.run_name "$NAME"
)
# partial rollouts (both arms): OpenRLHF's async trainer, samples in flight across weight syncs
[ "$PARTIAL" = 1 ] && args+=(--train.async_enable --train.partial_rollout_enable
                             --rollout.vllm_generate_batch_size $((2 * ROLLOUT_BS)))
[ "$RESUME" = 1 ] && args+=(--ckpt.load_enable)
# DAS arm: with FULL_DECODE_ONLY graphs every decode step verifies k padded draft tokens anyway
# (pad_drafts), so a gated or budget-0 step pays the verify cost for filler only: draft k for
# every request (no batch gate, flat budget k) — the best graph-mode setting in docs/gpu.md.
# GPU drafter (DRAFTER=gpu): the device drafter under async scheduling, no padding flags (the
# engine settings of the rollout benchmark's das_gpu mode).
if [ "$ARM" = das ] && [ "$DRAFTER" = gpu ]; then
  args+=(--das --das.config "$REPO/configs/das/math.yaml" --das.async_scheduling true
         --das.device_drafter.enabled true --das.run_dir "$WORK/ckpt/das")
elif [ "$ARM" = das ]; then
  args+=(--das --das.config "$REPO/configs/das/math.yaml" --das.pad_drafts true
         --das.gate.mode off --das.length_policy false --das.flat_budget.tokens 4
         --das.run_dir "$WORK/ckpt/das")
  [ "$ASYNC" = 1 ] && args+=(--das.async_scheduling true)
fi
[ "$ARM" = das ] && [ "$PARTIAL" = 1 ] && args+=(--das.partial_rollout true)
# acceptance per response-length bucket over this run's range (the config's own edges go to 16k)
[ "$ARM" = das ] && args+=(--das.length_buckets "[$((MAX_NEW / 4)),$((MAX_NEW / 2)),$((3 * MAX_NEW / 4))]")
cmd=("$PY" -m openrlhf_das.cli.train "${args[@]}")
echo "[grpo] $NAME: $PROMPTS prompts x $EPISODES episodes / $ROLLOUT_BS per step = $((SPE * EPISODES)) steps, n=$N_SAMPLES, max_new=$MAX_NEW, engines=$ENGINES, drafter=$DRAFTER, partial=$PARTIAL, model=$MODEL"
echo "[grpo] engine args: $OPENRLHF_DAS_VLLM_ENGINE_ARGS"
echo "[grpo] VLLM_USE_V2_MODEL_RUNNER=${VLLM_USE_V2_MODEL_RUNNER-<unset: vLLM picks>}"
echo "[grpo] ${cmd[*]}"
[ -n "${DRY_RUN:-}" ] && exit 0

[ -d "$MODEL" ] || { echo "[grpo] no model at $MODEL (run install.sh all first)" >&2; exit 1; }
"$PY" -c "import importlib.util as u, sys; sys.exit(any(u.find_spec(m) is None for m in ('openrlhf', 'deepspeed', 'ray')))" \
    || { echo "[grpo] the train stream is not installed (install.sh train)" >&2; exit 1; }
if [ "$RESUME" != 1 ]; then rm -rf "$WORK"; fi
mkdir -p "$WORK" "$RES"
# a Ray cluster left by an earlier arm (a driver cut by the call limit) would be joined by
# OpenRLHF's ray.init(); this machine runs no other Ray
ray stop --force > /dev/null 2>&1 || true

t=$(date +%s.%N)
cd "$REPO" || exit 1
# SIGINT first (Ray and the driver shut down), SIGKILL 30 s later
timeout -s INT -k 30 "$TIME_LIMIT" "${cmd[@]}" 2>&1 | tee -a "$WORK/train.log"
rc=${PIPESTATUS[0]}
took "train ($NAME, rc=$rc)" "$t" | tee -a "$WORK/timing.txt"
[ "$rc" = 124 ] && echo "[grpo] cut at TIME_LIMIT=$TIME_LIMIT s: rerun with RESUME=1 to continue from the last checkpoint"
ray stop --force > /dev/null 2>&1 || true

t=$(date +%s.%N)
"$PY" "$REPO/benchmarks/gpu/grpo_plot.py" extract --arm "$NAME" --log "$WORK/train.log" --tb "$WORK/tb" \
    --das-run-dir "$WORK/ckpt/das" --steps-per-episode "$SPE" --out "$RES/steps.json"
cp "$WORK/train.log" "$WORK/timing.txt" "$RES/" 2>/dev/null
[ -d "$WORK/tb" ] && cp -r "$WORK/tb" "$RES/"
if [ -d "$WORK/ckpt/das" ]; then
    mkdir -p "$RES/das" && cp "$WORK/ckpt/das"/*.json* "$RES/das/" 2>/dev/null
fi
cp "$RES/steps.json" "$WORK/steps.json" 2>/dev/null
SUFFIX=""; [ "$PARTIAL" = 1 ] && SUFFIX=_partial
TARGET=0.80; [ "$PARTIAL" = 1 ] && TARGET=0.85   # issue 22's generation-time targets das/stock
G=${GRPO_WORK:-/tmp/grpo}
# every (stock arm, DAS arm) pair done on this machine: compare$SUFFIX against the benchmark's stock
# engine, compare_defaults$SUFFIX against vLLM's own (STOCK_ENGINE=defaults)
for stock in nodas nodas_defaults; do
    [ "$ARM" = das ] || [ "$NAME" = "$stock$SUFFIX" ] || continue
    if [ -s "$G/das$SUFFIX/steps.json" ] && [ -s "$G/$stock$SUFFIX/steps.json" ]; then
        "$PY" "$REPO/benchmarks/gpu/grpo_plot.py" plot --nodas "$G/$stock$SUFFIX/steps.json" \
            --das "$G/das$SUFFIX/steps.json" --out "$RES/../compare${stock#nodas}$SUFFIX" \
            --title "GRPO $(basename "$MODEL")${SUFFIX:+, partial rollouts}${stock#nodas}" --target-ratio "$TARGET" | tail -n 60
    fi
done
took "extract + copy" "$t"
took "grpo_compare.sh $NAME" "$T0" | tee -a "$RES/timing.txt"
exit "$rc"
