# The long-tail workload's engine_rollouts.py flags, shared by longtail.sh and host_profile.sh
# (source it after env.sh; every call of a session must use the same LT_* values so that
# `engine_rollouts.py --merge` and `pool_runs.py` accept the files). Env (defaults):
#   LT_MODEL=qwen2.5-coder-1.5b-instruct  LT_PROBLEMS=16  LT_SAMPLES=8  LT_TOKENS=4096  LT_TEMPERATURE=1.0
# lt_workload EPOCHS: prints the flags, one per line (read them with mapfile).
lt_workload() {
    local epochs="${1:?lt_workload EPOCHS}"
    local tokens="${LT_TOKENS:-4096}"
    printf '%s\n' --model "$GPU_MODELS_DIR/${LT_MODEL:-qwen2.5-coder-1.5b-instruct}" \
        --prompts-file benchmarks/gpu/prompts/math500-qwen2.5-coder-0.5b.json \
        --problems "${LT_PROBLEMS:-16}" --samples "${LT_SAMPLES:-8}" --epochs "$epochs" \
        --max-tokens "$tokens" --max-model-len "$((tokens + 1024))" --temperature "${LT_TEMPERATURE:-1.0}" \
        --device cuda --das pad_drafts=true
}
