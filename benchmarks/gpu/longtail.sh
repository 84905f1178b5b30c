#!/usr/bin/env bash
# One device call of the long-tail rollout benchmark (docs/gpu.md, "The long-tail run"):
#   bash benchmarks/gpu/longtail.sh MODE [EXTRA engine_rollouts.py ARGS...]
# runs MODE[,MODE...] (any of engine_rollouts.py --modes: nospec, nospec_sync, das_async, das_gpu, ...) of one fixed workload and writes
# $OUT/$LT_TAG-MODES.json (+ .png, and log). Every call of a session must use the same LT_* values
# so that `engine_rollouts.py --merge` accepts the files. Run on the GPU machine after the
# bring-up (benchmarks/gpu/install.sh ready). Env (defaults):
#   LT_MODEL=qwen2.5-coder-1.5b-instruct  LT_PROBLEMS=16  LT_SAMPLES=8  LT_EPOCHS=4
#   LT_TOKENS=4096  LT_TEMPERATURE=1.0  LT_TAG=lt  LT_TIMEOUT=570 (seconds; the call limit is 600)
set -euo pipefail
mode="${1:?usage: longtail.sh MODE[,MODE...] [ARGS...]}"
name="${mode//,/-}"
shift
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
source "$here/env.sh"
source "$here/workload.sh"
export PYTHONPATH="$repo:$PYTHONPATH"
mapfile -t workload < <(lt_workload "${LT_EPOCHS:-4}")
tag="${LT_TAG:-lt}"
out="${OUT:-/tmp/out}"
mkdir -p "$out"
cd "$repo"
set +e
timeout "${LT_TIMEOUT:-570}" "$GPU_PY" benchmarks/engine_rollouts.py "${workload[@]}" --modes "$mode" --out "$out/$tag-$name.json" "$@" \
    > "$out/$tag-$name.log" 2>&1
rc=$?
set -e
grep -E '^\[engine_rollouts\]|^\{"|Graph capturing finished|DAS:|Error|error' "$out/$tag-$name.log" | tail -n 25
python3 - "$out/$tag-$name.json" <<'PY' || true
import json, sys
r = json.load(open(sys.argv[1]))
for m, res in r["results"].items():
    for e in res.get("epochs", []):
        d = e.get("das") or {}
        print(m, "epoch", e["epoch"], "s=%.2f" % e["seconds"], "tok=%d" % e["output_tokens"], "maxlen=%d" % e["max_response_length"],
              "start=%.1f" % res.get("engine_start_seconds", 0), "plain=%s" % d.get("plain_steps"), "steps=%s" % d.get("steps"),
              "gated=%s" % d.get("gated_steps"), "async_free=%s" % d.get("async_free_steps"),
              "acc=%s" % (d.get("acceptance") or {}).get("total"))
print(json.dumps(r["summary"]))
PY
exit $rc
