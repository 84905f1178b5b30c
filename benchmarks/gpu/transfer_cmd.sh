#!/usr/bin/env bash
# Print the device-tool `run` call of transfer N (1-based), or of all transfers.
#   benchmarks/gpu/transfer_cmd.sh N      | all      | count    | grpo (the two GRPO calls after them)
# Needs benchmarks/gpu/chunks/PLAN.txt (written by prepare.sh; rows in transfer order). Fire the
# calls back to back: the GPU machine is given back after 30 s without a call. With the `train`
# stream (default), its chunks (c17, c18) go right before the last `models` chunk (c16), whose
# call runs `install.sh all`: deps, train, models, smoke.
# Extra env for the last call: SMOKE_CONFIGS (default fdo,fdo+suffix), BENCH_PROMPTS (64),
# BENCH_TOKENS (256), SMOKE_ARGS.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
plan="$here/chunks/PLAN.txt"
[ -f "$plan" ] || { echo "no $plan: run benchmarks/gpu/prepare.sh first" >&2; exit 1; }
mapfile -t rows < <(grep -v '^#' "$plan")
total=${#rows[@]}

# The device tool copies the working tree (tracked + untracked-not-ignored files) with each carry,
# 64 MiB in all: warn when the tree plus the largest chunk does not fit.
tree_bytes=$(cd "$here/../.." && git ls-files -z --cached --others --exclude-standard \
    | xargs -0 stat -c %s 2>/dev/null | awk '{s += $1} END {print s + 0}') || true  # moved-out files: stat fails
max_chunk=$(printf '%s\n' "${rows[@]}" | awk '$5 > m {m = $5} END {print m + 0}')
if [ $((tree_bytes + max_chunk)) -gt $((64 * 1024 * 1024)) ]; then
    echo "warning: working tree ($tree_bytes bytes) + largest chunk ($max_chunk bytes) > 64 MiB:" \
        "the device tool refuses the call. Move big tracked files (e.g. benchmarks/gpu/results)" \
        "out of the tree during the transfers, or re-run prepare.sh with a smaller CHUNK_MIB." >&2
fi

cmd_for() {
    local n=$1 path st k tot bytes
    read -r path st k tot bytes <<< "${rows[$((n - 1))]}"
    local c="mkdir -p /tmp/dw && cp $path/* /tmp/dw/"
    local to=60
    if [ "$n" -eq 1 ]; then
        # preflight: what the fresh machine has (cheap)
        c="$c && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader && ldd --version | head -1 && nproc && /opt/torch/.venv/bin/python3 -m pip list 2>/dev/null | grep -iE '^(torch|transformers|numpy|numba|protobuf|grpcio|nanobind|setuptools|triton|pyarrow|fsspec|pandas|huggingface-hub|peft|accelerate|tensorboard|matplotlib|aiohttp|packaging) ' && { command -v nvcc || echo 'nvcc: none on PATH'; } && ls -d /usr/local/cuda* 2>/dev/null | head -3"
    fi
    if [ "$st" = sw ] && [ "$k" = "$tot" ]; then
        c="$c && bash benchmarks/gpu/install.sh bg-deps"
    elif [ "$n" -gt 1 ]; then
        c="$c && ls /tmp/dw | grep -c 'tar\.[0-9]*$' && { tail -n 2 /tmp/dw/deps.log 2>/dev/null || true; }"
    fi
    if [ "$n" -eq "$total" ]; then
        local envs=""
        for v in SMOKE_CONFIGS BENCH_PROMPTS BENCH_TOKENS SMOKE_ARGS; do
            [ -n "${!v:-}" ] && envs="$envs $v='${!v}'"
        done
        c="mkdir -p /tmp/dw && cp $path/* /tmp/dw/ && set -o pipefail && ${envs:+export$envs && }bash benchmarks/gpu/install.sh all 2>&1 | tee \$OUT/install.log"
        to=600
    fi
    printf '# transfer %d/%d (%s %s/%s, %s bytes)\ncarry: ["%s"]\ntimeout_s: %s\ncommand: %s\n' \
        "$n" "$total" "$st" "$k" "$tot" "$bytes" "$path" "$to" "$c"
}

grpo_cmds() {  # the calls after the bring-up (train stream installed): one per arm, same warm machine
    local arm
    for arm in nodas das; do
        printf '# GRPO %s (benchmarks/gpu/grpo_compare.sh; ~7-8.5 min)\ncarry: []\ntimeout_s: 600\ncommand: set -o pipefail && bash benchmarks/gpu/grpo_compare.sh %s 2>&1 | tail -n 150\n\n' "$arm" "$arm"
    done
    echo "# cut by the call limit? repeat that arm's call with: RESUME=1 bash benchmarks/gpu/grpo_compare.sh ARM"
    echo "# the das call also writes \$OUT/grpo/compare.{png,json}; locally: benchmarks/gpu/grpo_plot.py plot --nodas .../nodas/steps.json --das .../das/steps.json --out PREFIX"
}

case "${1:-}" in
    count) echo "$total" ;;
    grpo) grpo_cmds ;;
    all) for i in $(seq 1 "$total"); do cmd_for "$i"; echo; done ;;
    ''|*[!0-9]*) echo "usage: $0 N|all|count|grpo" >&2; exit 2 ;;
    *) [ "$1" -ge 1 ] && [ "$1" -le "$total" ] || { echo "N must be 1..$total" >&2; exit 2; }; cmd_for "$1" ;;
esac
