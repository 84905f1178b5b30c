#!/usr/bin/env bash
# GPU-machine side of the bring-up (see docs/gpu.md). Each transfer copied its chunk
# folder's files into /tmp/dw; this joins them and installs.
#
#   install.sh bg-deps   (transfer that completes the "sw" stream) start `deps` in the
#                        background (setsid), from a copy of these scripts in /tmp/dw/bin
#   install.sh deps      join + verify "sw", pip install the wheels into /tmp/site, build
#                        arctic-inference from its sdist, install this project's wheel
#   install.sh models    join + verify "models", materialize each GGUF into /tmp/models/NAME
#   install.sh smoke     vLLM smoke test (smoke.py; SMOKE_CONFIGS, SMOKE_ARGS)
#   install.sh all       (last transfer) wait for / run deps, then models, then smoke
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

case "${1:-all}" in
    bg-deps)
        # run from a copy: the next transfer re-syncs the repo's files under us
        mkdir -p "$DW/bin"
        cp "$HERE"/{install.sh,env.sh,verify.py,materialize.py,smoke.py,wheels.lock} "$DW/bin/"
        rm -f "$DW/deps.done" "$DW/deps.failed"
        setsid nohup bash -c "bash '$DW/bin/install.sh' deps > '$DW/deps.log' 2>&1 && touch '$DW/deps.done' || touch '$DW/deps.failed'" \
            < /dev/null > /dev/null 2>&1 &
        echo $! > "$DW/deps.pid"
        echo "[install] deps stage started in the background (pid $(cat "$DW/deps.pid"), log $DW/deps.log)"
        ;;
    deps) stage_deps ;;
    models) stage_models ;;
    smoke) stage_smoke ;;
    all)
        join_stream models   # needs nothing from deps
        wait_deps
        stage_models
        stage_smoke
        took "install.sh all" "$T_ALL"
        ;;
    ready)  # like all, without the smoke test (when a benchmark follows in the next call)
        join_stream models
        wait_deps
        stage_models
        took "install.sh ready" "$T_ALL"
        ;;
    *) die "usage: install.sh {bg-deps|deps|models|smoke|all|ready}" ;;
esac
