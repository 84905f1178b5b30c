#!/usr/bin/env bash
# Host-thread profiles of the long-tail workload (docs/gpu.md, "Where the host time goes"):
#   bash benchmarks/gpu/host_profile.sh MODE[,MODE...] [EXTRA engine_rollouts.py ARGS...]
# runs benchmarks/step_profile.py --profiler host for each MODE, one engine each, over epoch
# HP_EPOCH's windows HP_DELAYS / HP_STEPS (engine steps; default a bulk window, every request
# running and the gate closed, and a tail window), on the workload of longtail.sh (same LT_* env),
# and writes $OUT/$HP_TAG-MODE.json. Run on the GPU machine after the bring-up.
# Env (defaults): HP_EPOCH=1 HP_DELAYS=50,1200 HP_STEPS=150,300 HP_TAG=hp HP_TIMEOUT=220 (per mode; two modes fit one call after `install.sh ready`)
set -euo pipefail
modes="${1:?usage: host_profile.sh MODE[,MODE...] [ARGS...]}"
shift
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
source "$here/env.sh"
source "$here/workload.sh"
export PYTHONPATH="$repo:$PYTHONPATH"
epoch="${HP_EPOCH:-1}"
tag="${HP_TAG:-hp}"
out="${OUT:-/tmp/out}"
mkdir -p "$out"
cd "$repo"
mapfile -t workload < <(LT_PROBLEMS="${LT_PROBLEMS:-32}" lt_workload $((epoch + 1)))
rc=0
for mode in ${modes//,/ }; do
    set +e
    timeout "${HP_TIMEOUT:-220}" "$GPU_PY" benchmarks/step_profile.py --profiler host --mode "$mode" \
        --epoch "$epoch" --delay "${HP_DELAYS:-50,1200}" --steps "${HP_STEPS:-150,300}" --out "$out/$tag-$mode.json" -- \
        "${workload[@]}" "$@" > "$out/$tag-$mode.log" 2>&1
    r=$?
    set -e
    [ $r -eq 0 ] || { rc=$r; tail -n 20 "$out/$tag-$mode.log"; }
    python3 - "$out/$tag-$mode.json" <<'PY' || true
import json, sys
r = json.load(open(sys.argv[1]))
print(r["mode"], "epoch_seconds", [round(s, 2) for s in r["epoch_seconds"]])
for w in r.get("host", []):
    print(" window", {k: w.get(k) for k in ("delay", "steps_sampled", "wall_ms_per_step", "waiting_ms_per_step", "samples", "error")})
    for row in w.get("leaf", [])[:12]:
        print("   leaf %7.3f ms  %s" % (row["ms_per_step"], row["function"]))
PY
done
exit $rc
