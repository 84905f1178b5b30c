"""Where an engine step's time goes on the GPU: a torch-profiler window over engine steps of the
rollout workload of ``engine_rollouts.py``, one mode per run, reduced to a small JSON summary.

vLLM's worker profiler (``profiler_config``: torch, no stacks, no shapes) records ``--steps``
engine iterations after ``--delay`` iterations of epoch ``--epoch`` (counted from that epoch's
submission). Earlier epochs run unprofiled and, in DAS modes, feed the history as in
``engine_rollouts.py`` (same workload flags, same ``benchmarks/epochs.py``). Choose the window
so that it is one kind of step: the bulk (e.g. ``--delay 50``: every request still running, the
batch gate closed) or the tail (a delay past the bulk: few requests, drafting).

Summary over the window (milliseconds, and per engine iteration):

* ``wall``: first to last profiler event; ``gpu_busy``: union of kernel, copy and memset
  intervals on the device; ``gpu_idle_share`` = 1 - busy / wall. A step whose device is busy
  most of the wall time is device-bound; a large idle share means the host sets the pace.
* ``kernels_by_group``: device time of the kernels launched by DAS's device step (its graph
  replays run under a ``das:...`` profiler annotation, ``device.graphs.BucketGraphs``), of the
  other CUDA-graph replays (vLLM's model forward), and of the remaining kernels by name
  (sampling/softmax, copies, other); ``top_kernels``: the 25 longest by total time.
* ``cuda_runtime``: host time in CUDA runtime calls by name (graph launches, kernel launches,
  copies; a ``*Synchronize`` is the host waiting for the device).

    python benchmarks/step_profile.py --mode das_gpu --epoch 1 --delay 900 --steps 150 \\
        --out $OUT/prof-das_gpu-tail.json -- <engine_rollouts.py workload flags>

``--profiler host`` replaces the torch profiler with a sampling profiler of the engine loop's
host thread over the same window (``host_sampler.py``: milliseconds per step by Python function,
inclusive and leaf, and the share spent waiting for step N's output): which host code fills a
host-bound step. It needs no CUDA activity and slows the host far less than the torch profiler.

GPU only (vLLM's CUDA activity); on the CPU machine it runs with CPU activity for a smoke check.
"""

from __future__ import annotations

import argparse
import bisect
import glob
import gzip
import json
import os
import re
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

GROUPS = (  # (group, kernel-name pattern), first match wins; DAS and graph replays are found by correlation
    ("attention", re.compile(r"flash|fmha|attn|attention", re.I)),
    ("gemm", re.compile(r"gemm|cutlass|xmma|cublas|matmul|nvjet|splitk", re.I)),
    ("sampling", re.compile(r"softmax|sort|topk|top_k|sample|rejection|argmax|exponential|uniform|log_softmax", re.I)),
    ("copy", re.compile(r"memcpy|memset|copy|fill", re.I)),
)


def _load_events(trace_dir: str) -> list[dict]:
    files = sorted(glob.glob(os.path.join(trace_dir, "**", "*.pt.trace.json*"), recursive=True))
    if not files:
        raise FileNotFoundError(f"no profiler trace under {trace_dir}")
    path = max(files, key=os.path.getmtime)
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rt") as f:
        data = json.load(f)
    return [e for e in data.get("traceEvents", []) if e.get("ph") == "X" and "dur" in e]


def _union_ms(intervals: list[tuple[float, float]]) -> float:
    total, end = 0.0, float("-inf")
    for s, e in sorted(intervals):
        if e <= end:
            continue
        total += e - max(s, end)
        end = e
    return total / 1e3


def summarize(events: list[dict], steps: int) -> dict[str, Any]:
    """Reduce a Chrome trace (torch profiler) to the summary of the module docstring."""
    gpu_cats = {"kernel", "gpu_memcpy", "gpu_memset"}
    gpu = [e for e in events if e.get("cat") in gpu_cats]
    runtime = [e for e in events if e.get("cat") in ("cuda_runtime", "cuda_driver")]
    das_ranges = [(e["ts"], e["ts"] + e["dur"]) for e in events
                  if e.get("cat") in ("user_annotation", "cpu_instant_event", "cpu_op") and str(e.get("name", "")).startswith("das:")]
    das_ranges.sort()
    das_starts = [r[0] for r in das_ranges]

    def in_das(ts: float) -> bool:
        i = bisect.bisect_right(das_starts, ts)  # ranges starting at or before ts: the last one may hold it
        return i > 0 and das_ranges[i - 1][1] >= ts

    corr_group: dict[Any, str] = {}
    for e in runtime:
        corr = (e.get("args") or {}).get("correlation")
        if corr is None:
            continue
        if in_das(e["ts"]):
            corr_group[corr] = "das_device_step"
        elif "GraphLaunch" in e.get("name", ""):
            corr_group[corr] = "graph_replay (model forward)"
    by_group: dict[str, float] = {}
    by_kernel: dict[str, list[float]] = {}
    for e in gpu:
        corr = (e.get("args") or {}).get("correlation")
        name = str(e.get("name", ""))
        group = corr_group.get(corr)
        if group is None:
            group = next((g for g, pat in GROUPS if pat.search(name)), "other")
        by_group[group] = by_group.get(group, 0.0) + e["dur"] / 1e3
        k = by_kernel.setdefault(name[:120], [0.0, 0])
        k[0] += e["dur"] / 1e3
        k[1] += 1
    rt: dict[str, list[float]] = {}
    for e in runtime:
        r = rt.setdefault(str(e.get("name", "")), [0.0, 0])
        r[0] += e["dur"] / 1e3
        r[1] += 1
    span = [e["ts"] for e in events] + [e["ts"] + e["dur"] for e in events]
    wall = (max(span) - min(span)) / 1e3 if span else 0.0
    busy = _union_ms([(e["ts"], e["ts"] + e["dur"]) for e in gpu])
    n = max(steps, 1)
    return {
        "steps": steps,
        "wall_ms": wall, "wall_ms_per_step": wall / n,
        "gpu_busy_ms": busy, "gpu_busy_ms_per_step": busy / n,
        "gpu_idle_share": (1 - busy / wall) if wall else None,
        "kernels_by_group_ms_per_step": {g: v / n for g, v in sorted(by_group.items(), key=lambda x: -x[1])},
        "top_kernels": [{"name": k, "ms_per_step": v[0] / n, "calls": v[1]}
                        for k, v in sorted(by_kernel.items(), key=lambda x: -x[1][0])[:25]],
        "cuda_runtime_ms_per_step": {k: {"ms": v[0] / n, "calls": v[1]}
                                     for k, v in sorted(rt.items(), key=lambda x: -x[1][0])[:15]},
        "das_annotations": len(das_ranges),
    }


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    split = argv.index("--") if "--" in argv else len(argv)
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--mode", required=True, help="one engine_rollouts.py mode (nospec, das_gpu, ...)")
    p.add_argument("--epoch", type=int, default=1, help="the profiled epoch (0-based)")
    p.add_argument("--delay", default="50",
                   help="engine iterations of the epoch before the window (host profiler: a comma list, one per window)")
    p.add_argument("--steps", default="150", help="engine iterations in the window (host: a comma list)")
    p.add_argument("--profiler", choices=("torch", "host"), default="torch",
                   help="torch: vLLM's torch profiler (device and CUDA runtime); host: host_sampler.py")
    p.add_argument("--interval-ms", type=float, default=1.0, help="host profiler: sampling interval")
    p.add_argument("--trace-dir", default=None, help="default: <out>.trace/ (removed after the summary)")
    p.add_argument("--keep-trace", action="store_true")
    p.add_argument("--out", required=True)
    ours = p.parse_args(argv[:split])
    import engine_rollouts as er  # noqa: E402 - this folder

    args = er.parse_args(argv[split + 1:])
    mode = ours.mode
    if mode != "nospec":
        os.environ["VLLM_USE_V2_MODEL_RUNNER"] = "0"
    from epochs import run_epochs
    from vllm import LLM, SamplingParams

    host = ours.profiler == "host"
    delays, counts = [int(x) for x in ours.delay.split(",")], [int(x) for x in ours.steps.split(",")]
    if len(delays) != len(counts) or (not host and len(delays) > 1):
        p.error("--delay and --steps: one value each (torch), or lists of the same length (host)")
    windows = list(zip(delays, counts))
    trace_dir = ours.trace_dir or (ours.out + ".trace")
    if host:
        import host_sampler

        host_sampler.register()  # before the engine starts: its process reads the environment
    else:
        Path(trace_dir).mkdir(parents=True, exist_ok=True)
    model = args.model
    if not Path(model).is_dir():
        from openrlhf_das.models.registry import materialize

        model = str(materialize(model))
    if args.device == "cpu":
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")  # GiB
    problems = er.load_problems(args, model)[: args.problems]
    kw = er._engine_kwargs(args, mode, args.tensor_parallel, concurrency=len(problems) * args.samples)
    if not host:
        kw["profiler_config"] = {
            "profiler": "torch", "torch_profiler_dir": trace_dir, "torch_profiler_with_stack": False,
            "torch_profiler_record_shapes": False, "torch_profiler_use_gzip": True,
            "delay_iterations": delays[0], "max_iterations": counts[0],
            "ignore_frontend": True,  # else the front end records the whole epoch (run 8: 41 s instead of ~13 s)
        }
    llm = LLM(model=model, **kw)
    das = mode in er.DAS_MODES
    cfg = er._das_config(args, mode) if das else None
    host_summary: list[dict[str, Any]] = []

    def on_epoch(epoch: int, phase: str) -> None:
        if epoch != ours.epoch:
            return
        if host:
            if phase == "start":
                llm.collective_rpc(host_sampler.start, args=(windows, ours.interval_ms))
            else:
                host_summary.append(llm.collective_rpc(host_sampler.stop)[0])
        elif phase == "start":
            llm.start_profile()
        else:
            llm.stop_profile()

    sp = SamplingParams(temperature=args.temperature, top_p=1.0, max_tokens=args.max_tokens)
    results = run_epochs(llm, problems, args.samples, sp, ours.epoch + 1, das=das,
                         window=cfg.window if cfg else 5, on_epoch=on_epoch)
    out = {"script": "benchmarks/step_profile.py", "mode": mode, "profiler": ours.profiler, "epoch": ours.epoch,
           "delay": ours.delay, "workload": vars(args), "epoch_seconds": [r.seconds for r in results],
           "epoch_das": results[-1].das_stats if das else None}
    if host:
        out["host"] = host_summary[0] if host_summary else [{"error": "no sampler summary"}]
    else:
        time.sleep(2)  # the worker writes the trace when its window closes
        try:
            out["summary"] = summarize(_load_events(trace_dir), counts[0])
        except (FileNotFoundError, ValueError, OSError) as exc:
            out["summary_error"] = str(exc)
    Path(ours.out).write_text(json.dumps(out, indent=1, default=str))
    if not host and not ours.keep_trace and ours.trace_dir is None:
        import shutil

        shutil.rmtree(trace_dir, ignore_errors=True)
    print(json.dumps({k: v for k, v in out.items() if k in ("mode", "summary", "summary_error", "host")}, indent=1)[:6000])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
