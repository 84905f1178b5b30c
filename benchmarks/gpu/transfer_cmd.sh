#!/usr/bin/env bash
# Print the device-tool `run` call of transfer N (1-based), or of all transfers.
#   benchmarks/gpu/transfer_cmd.sh N      | all      | count
# Needs benchmarks/gpu/chunks/PLAN.txt (written by prepare.sh). Fire the calls back to
# back: the GPU machine is given back after 30 s without a call.
# Extra env for the last call: SMOKE_CONFIGS (default fdo,fdo+suffix), BENCH_PROMPTS (64),
# BENCH_TOKENS (256), SMOKE_ARGS.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
plan="$here/chunks/PLAN.txt"
[ -f "$plan" ] || { echo "no $plan: run benchmarks/gpu/prepare.sh first" >&2; exit 1; }
mapfile -t rows < <(grep -v '^#' "$plan")
total=${#rows[@]}

cmd_for() {
    local n=$1 path st k tot bytes
    read -r path st k tot bytes <<< "${rows[$((n - 1))]}"
    local c="mkdir -p /tmp/dw && cp $path/* /tmp/dw/"
    local to=60
    if [ "$n" -eq 1 ]; then
        # preflight: what the fresh machine has (cheap)
        c="$c && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader && ldd --version | head -1 && nproc && /opt/torch/.venv/bin/python3 -m pip list 2>/dev/null | grep -iE '^(torch|transformers|numpy|numba|protobuf|grpcio|nanobind|setuptools|triton) '"
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

case "${1:-}" in
    count) echo "$total" ;;
    all) for i in $(seq 1 "$total"); do cmd_for "$i"; echo; done ;;
    ''|*[!0-9]*) echo "usage: $0 N|all|count" >&2; exit 2 ;;
    *) [ "$1" -ge 1 ] && [ "$1" -le "$total" ] || { echo "N must be 1..$total" >&2; exit 2; }; cmd_for "$1" ;;
esac
