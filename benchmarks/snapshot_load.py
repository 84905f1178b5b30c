"""Step-boundary cost of an engine's history swap: fresh build vs in-place update.

At every RL step boundary each engine makes the history actor's new snapshot its history
(``DASSpeculator.load_snapshot``), and the trainer waits for it before the next generation. A
fresh ``HistorySnapshot.build_index`` re-inserts the whole window into every tree, so its cost
grows with the history; ``HistorySnapshot.update_index`` only rebuilds the (problem, step)
buckets that changed. On the H200 GRPO run of 2026-12-04 (fresh builds) this wait grew by about
0.07 s per step to 2.5 s at step 30, ~20 % of the generation time.

This replays a GRPO-shaped run on SYNTHETIC rollouts (``synthetic_trace.py``: ``--problems``
problems, ``--problems-per-step`` of them per step with ``--samples`` responses each, median
``--median-len`` tokens), one snapshot per step as the actor builds it (window ``--window``
appearances), and times per step: ``fresh`` (``build_index``) and ``update`` (``update_index``
on the index of the previous step, after indexing in-flight sibling text as an engine does).
Both indexes are checked to hold the same tokens and problems at every step.

    python benchmarks/snapshot_load.py --steps 30 --out benchmarks/results/snapshot-load-cpu.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from drafter_speed import machine_info  # noqa: E402
from synthetic_trace import SyntheticRollouts, TraceParams  # noqa: E402

from openrlhf_das.drafter import HistorySnapshot, Rollout  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--problems", type=int, default=24)
    p.add_argument("--problems-per-step", type=int, default=4)
    p.add_argument("--samples", type=int, default=8)
    p.add_argument("--median-len", type=float, default=380.0)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--window", type=int, default=5)
    p.add_argument("--max-depth", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path)
    a = p.parse_args(argv)
    for name in ("problems", "problems_per_step", "samples", "steps", "window", "max_depth"):
        if getattr(a, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1")
    params = TraceParams(problems=a.problems, samples=a.samples, steps=a.steps,
                         problems_per_step=a.problems_per_step, median_len=a.median_len)
    gen = SyntheticRollouts(params, a.seed)
    shape = (a.max_depth, a.window, 10**12, True)
    rollouts: list[Rollout] = []
    index = None
    rows = []
    for step in range(a.steps):
        rollouts += [Rollout(r["problem_id"], step, np.asarray(r["response_token_ids"], np.int32)) for r in gen.step(step)]
        snap = HistorySnapshot.from_rollouts(rollouts, next_step=step + 1)
        t0 = time.perf_counter()
        fresh = snap.build_index(*shape)
        t_fresh = time.perf_counter() - t0
        if index is None:
            index = snap.build_index(*shape)
            counts, t_update = None, None
        else:
            t0 = time.perf_counter()
            counts = snap.update_index(index)
            t_update = time.perf_counter() - t0
        assert index.stats().tokens == fresh.stats().tokens and sorted(index.problem_ids()) == sorted(fresh.problem_ids())
        rows.append({"step": step, "history_tokens": fresh.stats().tokens, "fresh_s": t_fresh,
                     "update_s": t_update, "buckets": counts})
        # what the engine indexes during the next step: in-flight sibling text of its problems
        for pid in sorted({r.problem_id for r in rollouts[-a.problems_per_step * a.samples:]})[:2]:
            index.extend_live(pid, f"live-{step}", step + 1, rollouts[-1].tokens[:64])
        print(f"step {step:3d}: {rows[-1]['history_tokens']:8d} tokens  fresh {t_fresh:7.3f} s  "
              f"update {'   -   ' if t_update is None else f'{t_update:7.3f}'} s  {counts or ''}", flush=True)
    later = rows[len(rows) // 2:]
    summary = {"fresh_s_last": rows[-1]["fresh_s"], "update_s_last": rows[-1]["update_s"],
               "fresh_s_mean_second_half": statistics.fmean(r["fresh_s"] for r in later),
               "update_s_mean_second_half": statistics.fmean(r["update_s"] for r in later if r["update_s"] is not None)}
    summary["speedup_second_half"] = summary["fresh_s_mean_second_half"] / summary["update_s_mean_second_half"]
    print(json.dumps(summary, indent=1))
    if a.out:
        a.out.parent.mkdir(parents=True, exist_ok=True)
        a.out.write_text(json.dumps({"benchmark": "snapshot_load", "args": {k: str(v) for k, v in vars(a).items()},
                                     "machine": machine_info(), "steps": rows, "summary": summary}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
