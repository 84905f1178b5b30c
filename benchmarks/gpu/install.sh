#!/usr/bin/env bash
# GPU-machine side of the bring-up (see docs/gpu.md). Each transfer copied its chunk
# folder's files into /tmp/dw; this joins them and installs.
#
#   install.sh bg-deps   (transfer that completes the "sw" stream) start `deps` in the
#                        background (setsid), from a copy of these scripts in /tmp/dw/bin and
#                        with that folder as its working folder (the next transfer replaces the repo's)
#   install.sh deps      join + verify "sw", pip install the wheels into /tmp/site, build
#                        arctic-inference from its sdist, install this project's wheel
#   install.sh models    join + verify "models", materialize each GGUF into /tmp/models/NAME
#   install.sh train     join + verify "train" (OpenRLHF 0.11.2, Ray 2.55.0, DeepSpeed 0.19.6 and
#                        what they need), install it into /tmp/site next to vLLM, import check
#                        (needs deps done: run after it)
#   install.sh smoke     vLLM smoke test (smoke.py; SMOKE_CONFIGS, SMOKE_ARGS)
#   install.sh all       (last transfer) wait for / run deps, then train (when its parts are in
#                        /tmp/dw; in parallel with models), models, then smoke
#   install.sh ready     the same without the smoke test
#
# Prints how long each part took. Env: DW=/tmp/dw, OUT (the device tool's output folder).
set -uo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
DW="${DW:-/tmp/dw}"
PAY="${PAY:-/tmp/payload}"
# shellcheck source=env.sh
source "$HERE/env.sh"
PY="$GPU_PY"
[ -x "$PY" ] || PY="$(command -v python3)"
SITE="$GPU_SITE"
LOCK="$HERE/wheels.lock"
T_ALL=$(date +%s.%N)

ts() { date +%s.%N; }
took() {  # took NAME START
    awk -v n="$1" -v a="$2" -v b="$(ts)" 'BEGIN { printf "[time] %-28s %6.1f s\n", n, b - a }'
}
die() { echo "[install] ERROR: $*" >&2; exit 1; }

join_stream() {  # join_stream STREAM: check the parts, cat | tar x, verify
    local st=$1 t; t=$(ts)
    [ -f "$PAY/$st/.joined" ] && { echo "[install] $st already joined"; return 0; }
    local infos=( "$DW/$st".tar.*.info )
    [ -f "${infos[0]}" ] || die "no $st parts in $DW (did the transfers run?)"
    local total; total=$(awk '{print $3}' "${infos[0]}")
    [ "${#infos[@]}" -eq "$total" ] || die "$st: ${#infos[@]} of $total parts in $DW; missing: $(for k in $(seq -f %02g 1 "$total"); do [ -f "$DW/$st.tar.$k" ] || printf '%s ' "$k"; done)"
    for i in "${infos[@]}"; do
        local p=${i%.info} n; n=$(awk '{print $5}' "$i")
        [ "$(stat -c %s "$p")" = "$n" ] || die "$p: size $(stat -c %s "$p") != $n"
    done
    rm -rf "$PAY/$st"; mkdir -p "$PAY/$st"
    # shellcheck disable=SC2046
    cat $(ls "$DW/$st".tar.[0-9][0-9] | sort) | tar -x -C "$PAY/$st" || die "$st: tar failed"
    took "join $st" "$t"; t=$(ts)
    "$PY" "$HERE/verify.py" "$PAY/$st" "$LOCK" || die "$st: verification failed"
    touch "$PAY/$st/.joined"
    took "verify $st (sha256)" "$t"
}

stage_deps() {
    local t0 t; t0=$(ts)
    # the background stage (bg-deps) runs in $DW/bin; a folder that is gone breaks pip
    echo "[install] deps: working folder $(pwd -P 2>/dev/null || echo '(gone)')"
    join_stream sw
    local W="$PAY/sw/wheels"
    rm -rf "$SITE" "$SITE.deps" "$SITE.arctic" "$SITE.proj"
    t=$(ts)
    # vLLM (290 MB wheel) and the 87 small wheels go in side by side, then merge
    "$PY" -m pip install -q --no-index --no-deps --no-compile --disable-pip-version-check --root-user-action=ignore \
        --target "$SITE" "$W"/vllm-*.whl > "$DW/pip-vllm.log" 2>&1 &
    local pid_vllm=$!
    # shellcheck disable=SC2046
    "$PY" -m pip install -q --no-index --no-deps --no-compile --disable-pip-version-check --root-user-action=ignore \
        --target "$SITE.deps" $(ls "$W"/*.whl | grep -v '/vllm-') || die "pip install (deps) failed"
    took "pip install deps" "$t"; t=$(ts)
    # arctic-inference: its build runs grpc_tools (carried) + cmake/nanobind/torch (image)
    local sd; sd=$(ls "$PAY"/sw/sdist/arctic_inference-*.tar.gz)
    mkdir -p "$PAY/built"
    if PYTHONPATH="$SITE.deps" "$PY" -m pip wheel -q --no-index --no-deps --no-build-isolation \
            --disable-pip-version-check -w "$PAY/built" "$sd" > "$DW/arctic-build.log" 2>&1 \
        && "$PY" -m pip install -q --no-index --no-deps --no-compile --disable-pip-version-check --root-user-action=ignore \
            --target "$SITE.arctic" "$PAY"/built/arctic_inference-*.whl; then
        took "build arctic-inference" "$t"
    else
        tail -30 "$DW/arctic-build.log"
        echo "[install] WARNING: arctic-inference build failed (speculative method 'suffix' unavailable)"
    fi
    t=$(ts)
    if ls "$PAY"/sw/project/*.whl > /dev/null 2>&1; then
        "$PY" -m pip install -q --no-index --no-deps --no-compile --disable-pip-version-check --root-user-action=ignore \
            --target "$SITE.proj" "$PAY"/sw/project/*.whl || die "project wheel install failed"
    else
        echo "[install] no project wheel in the payload"
    fi
    wait "$pid_vllm" || { cat "$DW/pip-vllm.log"; die "pip install vllm failed"; }
    for d in "$SITE.deps" "$SITE.arctic" "$SITE.proj"; do
        [ -d "$d" ] && cp -al "$d/." "$SITE/" && rm -rf "$d"
    done
    took "pip install vllm + merge" "$t"
    echo "[install] $(du -sm "$SITE" | cut -f1) MiB in $SITE"
    t=$(ts)
    # byte-compile now (this stage runs in the background during the model transfers):
    # on a cold site, vLLM's first engine start spent ~30 s compiling modules in its
    # model-inspection subprocess
    "$PY" -m compileall -q -j 0 "$SITE" > /dev/null 2>&1 || true
    took "compileall $SITE" "$t"
    t=$(ts)
    "$PY" -c "import vllm, xgrammar, gguf; import importlib.metadata as m; print('[install] import vllm', vllm.__version__, '| xgrammar', m.version('xgrammar'))" \
        || die "import vllm failed"
    "$PY" -c "from arctic_inference.suffix_decoding import SuffixDecodingCache; print('[install] arctic-inference suffix tree OK')" \
        || echo "[install] WARNING: arctic_inference.suffix_decoding not importable"
    "$PY" -c "import suffix_gpu; print('[install] import suffix_gpu', suffix_gpu.__version__)" \
        || echo "[install] WARNING: suffix_gpu not importable"
    "$PY" -c "import openrlhf_das; print('[install] import openrlhf_das OK')" 2>/dev/null \
        || echo "[install] openrlhf_das not importable (no project wheel?)"
    took "import checks" "$t"
    took "stage deps" "$t0"
}

stage_models() {
    local t0 t; t0=$(ts)
    join_stream models
    t=$(ts)
    mkdir -p "$GPU_MODELS_DIR"
    local pids=() name file
    while read -r name file; do
        "$PY" "$HERE/materialize.py" weights "$PAY/models/gguf/$file" "$PAY/models/sidecar/$name" \
            "$GPU_MODELS_DIR/$name" &
        pids+=($!)
    done < "$PAY/models/models.txt"
    for p in "${pids[@]}"; do wait "$p" || die "materialize failed"; done
    took "materialize (parallel)" "$t"
    ls -d "$GPU_MODELS_DIR"/*/
    took "stage models" "$t0"
}

stage_train() {  # after deps: installs into the same $SITE
    local t0 t; t0=$(ts)
    join_stream train
    local T="$PAY/train"
    rm -rf "$SITE.train"
    t=$(ts)
    # shellcheck disable=SC2046
    "$PY" -m pip install -q --no-index --no-deps --no-compile --disable-pip-version-check --root-user-action=ignore \
        --target "$SITE.train" $(ls "$T"/wheels/*.whl "$T"/built/*.whl) > "$DW/pip-train.log" 2>&1 \
        || { cat "$DW/pip-train.log"; die "pip install (train) failed"; }
    # same top-level names in both would be a version clash: say so (bin/ is merged file by file)
    local clash; clash=$(comm -12 <(ls "$SITE" | sort) <(ls "$SITE.train" | grep -vx bin | sort) | tr '\n' ' ')
    [ -n "$clash" ] && echo "[install] WARNING: train overwrites in $SITE: $clash"
    cp -al --remove-destination "$SITE.train/." "$SITE/" && rm -rf "$SITE.train" || die "merging train into $SITE failed"
    took "pip install train + merge" "$t"; t=$(ts)
    "$PY" -m compileall -q -j 0 "$SITE"/{ray,deepspeed,openrlhf,datasets,torchdata,math_verify,latex2sympy2_extended} > /dev/null 2>&1 || true
    took "compileall (train)" "$t"; t=$(ts)
    # The import check runs as training does: flash-attn shim (openrlhf.models imports two of
    # flash_attn's helpers) + gpu_compat, as openrlhf_das.cli.train sets them up.
    OPENRLHF_DAS_TORCH_ADAM="${OPENRLHF_DAS_TORCH_ADAM:-1}" GPU_COMPAT_DIR="$HERE" "$PY" - <<'PYEOF' || die "train import check failed"
import importlib.metadata as md, os, sys, time
t = time.time()
from openrlhf_das.integrations.openrlhf.flash_attn_shim import ensure_flash_attn
sys.path.insert(0, os.environ["GPU_COMPAT_DIR"])  # benchmarks/gpu (or its copy in $DW/bin)
import gpu_compat
print("[install] flash-attn shim in use:", ensure_flash_attn(), "| gpu_compat:", gpu_compat.apply())
import distutils.ccompiler  # DeepSpeed's op builder imports it (Python 3.12: setuptools' shim)
import ray, deepspeed, datasets, torchdata, math_verify
import openrlhf
from openrlhf.cli import train_ppo_ray  # module level: ray, launcher, actors, vllm_engine
import openrlhf.trainer.ppo_trainer, openrlhf.trainer.ray.vllm_engine, openrlhf.trainer.ray.vllm_worker_wrap
import openrlhf.utils.deepspeed.deepspeed as ds_mod
cfg = ds_mod.get_train_ds_config(False, adam_offload=False, optim_config={"type": "AdamW", "params": {"lr": 1e-6}})
assert cfg["optimizer"]["params"].get("torch_adam") is True, cfg["optimizer"]
import openrlhf_das.integrations.openrlhf.engines, openrlhf_das.integrations.openrlhf.samples  # the DAS arm
from openrlhf_das.integrations.openrlhf.reward_funcs.math_reward_func import reward_func
from openrlhf_das.data.math_reward import math_reward
assert math_reward("so \\boxed{\\frac{1}{2}}", "0.5") == 1.0
import deepspeed.ops.op_builder.builder as b
print("[install] ray", ray.__version__, "| deepspeed", deepspeed.__version__, "| openrlhf", md.version("openrlhf"),
      "| datasets", datasets.__version__, "| pyarrow", md.version("pyarrow"), "| fsspec", md.version("fsspec"),
      "| nvcc", gpu_compat.find_nvcc(), "| imports %.1f s" % (time.time() - t))
PYEOF
    took "import checks (train)" "$t"
    took "stage train" "$t0"
}

stage_smoke() {
    local t; t=$(ts)
    local model="${SMOKE_MODEL:-$GPU_MODELS_DIR/qwen2.5-coder-0.5b-instruct}"
    [ -d "$model" ] || model=$(ls -d "$GPU_MODELS_DIR"/*/ | head -1)
    local out="${OUT:-$DW}"
    # shellcheck disable=SC2086
    "$PY" "$HERE/smoke.py" --model "$model" --configs "${SMOKE_CONFIGS:-fdo,fdo+suffix}" \
        --json "$out/smoke.json" ${SMOKE_ARGS:-} || echo "[install] smoke test FAILED (rc=$?)"
    took "smoke" "$t"
}

has_train() { ls "$DW"/train.tar.*.info > /dev/null 2>&1; }

wait_deps() {  # deps may be running in the background since the "sw" transfer
    local t; t=$(ts)
    if [ -f "$DW/deps.done" ]; then echo "[install] deps finished in the background:"; cat "$DW/deps.log"; return 0; fi
    if [ -f "$DW/deps.pid" ] && kill -0 "$(cat "$DW/deps.pid")" 2>/dev/null; then
        echo "[install] waiting for the background deps stage"
        while kill -0 "$(cat "$DW/deps.pid")" 2>/dev/null && [ ! -f "$DW/deps.done" ]; do sleep 1; done
        took "waited for deps" "$t"
        cat "$DW/deps.log"
        [ -f "$DW/deps.done" ] && return 0
        die "background deps stage failed"
    fi
    [ -f "$DW/deps.failed" ] && { cat "$DW/deps.log"; echo "[install] background deps failed; retrying inline"; }
    stage_deps
}

mode="${1:-all}"
case "$mode" in
    bg-deps)
        # run from a copy: the next transfer re-syncs the repo's files under us. That replaces
        # the repository folder too, so the stage must not run in it either (pip's os.getcwd()
        # then raises FileNotFoundError): it runs in its own folder, $DW/bin
        mkdir -p "$DW/bin"
        cp "$HERE"/{install.sh,env.sh,verify.py,materialize.py,smoke.py,gpu_compat.py,wheels.lock} "$DW/bin/"
        rm -f "$DW/deps.done" "$DW/deps.failed"
        cd "$DW/bin" || die "cannot cd into $DW/bin"
        setsid nohup bash -c "bash '$DW/bin/install.sh' deps > '$DW/deps.log' 2>&1 && touch '$DW/deps.done' || touch '$DW/deps.failed'" \
            < /dev/null > /dev/null 2>&1 &
        echo $! > "$DW/deps.pid"
        echo "[install] deps stage started in the background (pid $(cat "$DW/deps.pid"), log $DW/deps.log)"
        ;;
    deps) stage_deps ;;
    models) stage_models ;;
    train) stage_train ;;
    smoke) stage_smoke ;;
    all|ready)
        join_stream models   # needs nothing from deps
        wait_deps
        if has_train; then  # in parallel with the models (CPU-bound materialize)
            rm -f "$DW/train.rc"
            ( ( stage_train ) > "$DW/train.log" 2>&1; echo $? > "$DW/train.rc" ) &
            pid_train=$!
        fi
        stage_models
        if has_train; then
            wait "$pid_train"
            cat "$DW/train.log"
            [ "$(cat "$DW/train.rc")" = 0 ] || die "stage train failed (log above)"
        fi
        [ "$mode" = all ] && stage_smoke
        took "install.sh $mode" "$T_ALL"
        ;;
    *) die "usage: install.sh {bg-deps|deps|models|train|smoke|all|ready}" ;;
esac
