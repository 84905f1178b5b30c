"""Where does a vLLM engine spend its start-up? Periodic stack dumps of every Python process.

The GPU issue asks why an engine with vLLM 0.26's defaults (V2 model runner, torch.compile with
inductor) had not finished starting after 2.5-7 minutes, stopping after "Using V2 Model Runner",
while the V1 runner with inductor started in 35-41 s. The GPU machine has no py-spy, so this
uses the standard library: a ``sitecustomize`` put first on ``PYTHONPATH`` arms
``faulthandler.dump_traceback_later`` in every Python process the engine starts (front end,
EngineCore, workers, compile workers), which writes the stacks of all their threads to
``stacks-<pid>.txt`` every ``--every`` seconds, also while a thread sits in C code. Forked
children (vLLM 0.26 forks its EngineCore) re-arm the dumps after the fork.

    source benchmarks/gpu/env.sh
    $GPU_PY benchmarks/gpu/start_probe.py --model $GPU_MODELS_DIR/qwen2.5-coder-0.5b-instruct \\
        --runner v2 --timeout 420 --out $OUT/start-probe-v2

Output folder: ``log.txt`` (every output line of the engine with seconds since launch),
``stacks-<pid>.txt``, ``summary.json`` (outcome, start seconds, last log line, and for each
process the innermost frames of its last dump, the most frequent first). The probe shadows any
other ``sitecustomize`` of the interpreter for the probed command only.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

SITECUSTOMIZE = '''import faulthandler, os
_d = os.environ.get("START_PROBE_DIR")
_files = {}


def _arm():
    # one file per process, appended to; faulthandler's dump thread does not survive fork and a
    # forked child cannot re-arm while the parent's is armed, so the dumps pause around a fork
    # (vLLM 0.26 forks its EngineCore by default)
    pid = os.getpid()
    if pid not in _files:
        _files[pid] = open(os.path.join(_d, "stacks-%d.txt" % pid), "a")
    faulthandler.dump_traceback_later(float(os.environ.get("START_PROBE_EVERY", "30")), repeat=True,
                                      file=_files[pid])


if _d:
    _arm()
    os.register_at_fork(before=faulthandler.cancel_dump_traceback_later, after_in_parent=_arm,
                        after_in_child=_arm)
'''

READY = "START_PROBE_READY"
"""Printed by the engine child once the engine has answered (then start-up is over)."""

_FRAME = re.compile(r'^\s+File "(?P<file>[^"]+)", line (?P<line>\d+) in (?P<func>\S+)')


def run_probe(cmd: list[str], out: Path, timeout_s: float, every_s: float) -> dict[str, Any]:
    """Run ``cmd`` with periodic stack dumps into ``out``; kill its process group after
    ``timeout_s`` seconds. Returns the summary (also written to ``out/summary.json``)."""
    if timeout_s <= 0 or every_s <= 0:
        raise ValueError("timeout and dump interval must be positive")
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="start-probe-") as site:
        Path(site, "sitecustomize.py").write_text(SITECUSTOMIZE)
        env = dict(os.environ)
        env["PYTHONPATH"] = site + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        env["START_PROBE_DIR"] = str(out.resolve())
        env["START_PROBE_EVERY"] = str(every_s)
        env["PYTHONUNBUFFERED"] = "1"
        t0 = time.monotonic()
        ready_at: list[float] = []
        last: list[str] = [""]
        with open(out / "log.txt", "w") as log:
            proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                                    start_new_session=True)

            def pump() -> None:
                assert proc.stdout is not None
                for line in proc.stdout:
                    now = time.monotonic() - t0
                    log.write(f"{now:8.1f} {line}")
                    log.flush()
                    if line.strip():
                        last[0] = line.strip()
                    if READY in line and not ready_at:
                        ready_at.append(now)

            reader = threading.Thread(target=pump, daemon=True)
            reader.start()
            try:
                rc: int | None = proc.wait(timeout=timeout_s)
                outcome = "started" if ready_at else f"exited {rc}"
            except subprocess.TimeoutExpired:
                outcome = "timed out"
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            reader.join(timeout=10)
    summary = {
        "command": cmd,
        "outcome": outcome,
        "start_seconds": ready_at[0] if ready_at else None,
        "wall_seconds": time.monotonic() - t0,
        "last_log_line": last[0],
        "dump_every_seconds": every_s,
        "processes": {p.name: last_dump_frames(p) for p in sorted(out.glob("stacks-*.txt"))},
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    return summary


def last_dump_frames(path: Path, top: int = 6) -> dict[str, Any]:
    """The number of dumps in a stacks file and, from its last dump, the innermost frame of each
    thread counted over threads (most frequent first) plus the innermost ``top`` frames of the
    main thread (the one whose outermost frame is a module), else of the first thread."""
    text = path.read_text(errors="replace")
    dumps = [d for d in re.split(r"(?m)^Timeout \([^)]*\)!\n", text) if d.strip()]
    if not dumps:
        return {"dumps": 0}
    threads = [t for t in re.split(r"(?m)^(?=(?:Current thread|Thread) 0x)", dumps[-1]) if t.strip()]
    inner: Counter[str] = Counter()
    main: list[str] = []
    for t in threads:
        matches = [m for m in map(_FRAME.match, t.splitlines()) if m]
        frames = [f"{m['func']} ({Path(m['file']).name}:{m['line']})" for m in matches]
        if frames:
            inner[frames[0]] += 1  # faulthandler lists the most recent call first
            if not main or matches[-1]["func"] == "<module>":
                main = frames[:top]
    return {"dumps": len(dumps), "innermost": [[f, n] for f, n in inner.most_common(8)], "main_thread": main}


def engine_child(args: argparse.Namespace) -> None:
    """Start one engine as the issue describes (``--runner``, ``--compile``), answer 4 prompts."""
    os.environ["VLLM_USE_V2_MODEL_RUNNER"] = "1" if args.runner == "v2" else "0"
    from vllm import LLM, SamplingParams

    kw: dict[str, Any] = {"model": args.model, "max_model_len": args.max_model_len,
                          "gpu_memory_utilization": args.gpu_memory_utilization, "seed": 0}
    if args.compile == "none":
        kw["compilation_config"] = {"mode": 0, "cudagraph_mode": "FULL_DECODE_ONLY"}
    t = time.monotonic()
    llm = LLM(**kw)
    built = time.monotonic() - t
    outs = llm.generate(["1 + 1 ="] * 4, SamplingParams(max_tokens=8, temperature=0.0))
    print(f"{READY} engine built in {built:.1f} s; answered {len(outs)} prompts", flush=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="HF model folder")
    ap.add_argument("--runner", choices=("v1", "v2"), default="v2")
    ap.add_argument("--compile", choices=("default", "none"), default="default",
                    help="default: vLLM's (torch.compile + inductor); none: mode 0 + FULL_DECODE_ONLY graphs")
    ap.add_argument("--max-model-len", type=int, default=2048)
    ap.add_argument("--gpu-memory-utilization", type=float, default=0.5)
    ap.add_argument("--timeout", type=float, default=420.0, help="seconds before the engine is killed")
    ap.add_argument("--every", type=float, default=30.0, help="seconds between stack dumps")
    ap.add_argument("--out", default="start-probe")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        engine_child(args)
        return 0
    if not Path(args.model).is_dir():
        ap.error(f"--model: not a folder: {args.model}")
    cmd = [sys.executable, os.path.abspath(__file__), "--child", "--model", args.model, "--runner", args.runner,
           "--compile", args.compile, "--max-model-len", str(args.max_model_len),
           "--gpu-memory-utilization", str(args.gpu_memory_utilization)]
    summary = run_probe(cmd, Path(args.out), args.timeout, args.every)
    print(json.dumps({k: v for k, v in summary.items() if k != "processes"}, indent=1))
    for name, info in summary["processes"].items():
        print(name, json.dumps(info))
    return 0 if summary["outcome"] == "started" else 1


if __name__ == "__main__":
    sys.exit(main())
