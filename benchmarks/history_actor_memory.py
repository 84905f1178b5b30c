"""History-actor memory: stream SYNTHETIC rollouts through a real ``RolloutHistoryActor``.

Streams ``--tokens`` response tokens (default 10⁷) of ``synthetic_trace.py`` rollouts through
``add_rollouts`` / ``end_step`` of an actor in a local Ray cluster (``ray.init(num_cpus=2)``),
step by step, with one sink engine (a Ray actor that takes every snapshot and returns minimal
stats) so that snapshots are built and shipped each step, and checkpoints every
``--snapshot-every`` steps into a temporary run directory. After each step it samples the
actor's RSS (``/proc/self/status`` VmRSS in the actor) and its store stats.

The claim checked: the store stays within the token cap (``history_max_tokens``, no pinning)
while 10⁷ tokens flow, and the actor's RSS stops growing once the cap is reached (RSS growth
over the second half of the capped steps should be ~0). The bare ``HistoryIndex`` (suffix trees)
is measured by ``benchmarks/history_memory.py``; the actor keeps plain int32 arrays.

Output: JSON (``--out``) with per-step samples and a summary; the summary is also printed.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from drafter_speed import machine_info  # noqa: E402
from synthetic_trace import SyntheticRollouts, TraceParams  # noqa: E402

from openrlhf_das.config import DASConfig  # noqa: E402


class SinkEngine:
    """Takes snapshots (counts their bytes) and reports empty DAS stats."""

    def __init__(self) -> None:
        self.bytes_received = 0

    def das_rpc(self, method: str, *args: Any, **kwargs: Any) -> list[dict[str, Any]]:
        if method == "das_load_snapshot":
            self.bytes_received += len(args[0])
            return [{"snapshot_bytes": len(args[0])}]
        return [{"enabled": True, "acceptance": None, "faults": 0}]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tokens", type=int, default=10_000_000, help="response tokens to stream")
    ap.add_argument("--cap", type=int, default=2_000_000, help="DASConfig.history_max_tokens")
    ap.add_argument("--window", type=int, default=5)
    ap.add_argument("--problems", type=int, default=2048)
    ap.add_argument("--problems-per-step", type=int, default=64)
    ap.add_argument("--samples", type=int, default=16)
    ap.add_argument("--median-len", type=float, default=400.0)
    ap.add_argument("--batch", type=int, default=256, help="rollouts per add_rollouts call")
    ap.add_argument("--snapshot-every", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="history_actor_memory.json")
    args = ap.parse_args()

    import ray

    from openrlhf_das.ray import create_history_actor

    ray.init(address="local", num_cpus=2, include_dashboard=False)
    config = DASConfig().with_overrides({"window": args.window, "history_max_tokens": args.cap})
    sink = ray.remote(SinkEngine).options(num_cpus=0).remote()
    run_dir = Path(tempfile.mkdtemp(prefix="history-actor-memory-"))
    actor = create_history_actor(run_dir, config, [sink], snapshot_every=args.snapshot_every, num_cpus=1)
    rss0 = ray.get(actor.status.remote())["rss_bytes"]

    gen = SyntheticRollouts(
        TraceParams(problems=args.problems, samples=args.samples, steps=10**6,
                    problems_per_step=args.problems_per_step, median_len=args.median_len),
        args.seed,
    )
    samples: list[dict[str, Any]] = []
    streamed, step = 0, 0
    t_actor = 0.0
    t0 = time.perf_counter()
    while streamed < args.tokens:
        batch: list[dict[str, Any]] = []
        calls = []
        for rec in gen.step(step):
            rec["response_token_ids"] = np.asarray(rec["response_token_ids"], np.int32)
            rec["prompt_token_ids"] = np.asarray(rec["prompt_token_ids"], np.int32)
            streamed += rec["response_token_ids"].size
            batch.append(rec)
            if len(batch) == args.batch:
                calls.append(actor.add_rollouts.remote(batch))
                batch = []
        if batch:
            calls.append(actor.add_rollouts.remote(batch))
        ray.get(calls)
        ta = time.perf_counter()
        res = ray.get(actor.end_step.remote(step))
        t_actor += time.perf_counter() - ta
        st = ray.get(actor.status.remote())
        samples.append({
            "step": step,
            "streamed_tokens": streamed,
            "rss_mb": st["rss_bytes"] / 2**20,
            "snapshot_bytes": res["engines"][0]["history"]["snapshot_bytes"],
            **st["history"],
        })
        print(f"step {step:3d} streamed {streamed:>10,} history {st['history']['tokens']:>9,} tokens "
              f"rss {st['rss_bytes'] / 2**20:7.1f} MB", flush=True)
        step += 1
    wall = time.perf_counter() - t0
    ray.get(actor.save_checkpoint.remote())

    capped = next((i for i, s in enumerate(samples) if s["evicted_problems"] > 0), None)
    tail = samples[capped:] if capped is not None else []
    second_half = tail[len(tail) // 2 :]
    summary = {
        "streamed_tokens": streamed,
        "steps": step,
        "cap_tokens": args.cap,
        "max_history_tokens": max(s["tokens"] for s in samples),
        "bounded": all(s["tokens"] <= args.cap for s in samples),
        "first_capped_step": capped,
        "rss_start_mb": rss0 / 2**20,
        "rss_at_first_capped_step_mb": samples[capped]["rss_mb"] if capped is not None else None,
        "rss_final_mb": samples[-1]["rss_mb"],
        "rss_peak_mb": max(s["rss_mb"] for s in samples),
        "rss_peak_after_cap_mb": max(s["rss_mb"] for s in tail) if tail else None,
        "rss_growth_second_half_of_capped_steps_mb": (
            max(s["rss_mb"] for s in second_half) - second_half[0]["rss_mb"] if len(tail) >= 2 else None
        ),
        "snapshot_mb_per_step_max": max(s["snapshot_bytes"] for s in samples) / 2**20,
        "checkpoint_mb": sum(p.stat().st_size for p in (run_dir / "history").glob("*.npz")) / 2**20,
        "wall_s": wall,
        "end_step_s_total": t_actor,
        "end_step_ms_per_mtoken_streamed": 1e3 * t_actor / (streamed / 1e6),
    }
    out = {"machine": machine_info(), "synthetic_data": True, "params": vars(args), "run_dir": str(run_dir),
           "summary": summary, "samples": samples}
    Path(args.out).write_text(json.dumps(out, indent=1))
    print(json.dumps(summary, indent=1))
    ray.shutdown()


if __name__ == "__main__":
    main()
