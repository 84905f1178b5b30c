"""Which trees to consult and how deep to index them: drafter cost vs acceptance on a real trace.

Replays the recorded H100 trace (``benchmarks/traces``; Qwen2.5-Coder-0.5B, 32 MATH-500
problems × 8, T = 1, 3 steps) with the engine's default sources (request, problem and global
trees, live siblings; replay policy ``das+all``, or ``das+siblings`` without the global tree) on a padded engine (``replay.py --padded``), for
each combination of

* ``max_depth`` (``--depths``): suffix-tree depth of every tree;
* global tree use: ``always`` (the best score of the three trees wins), ``fallback`` (only when
  the request's own and problem trees give no draft: ``global_fallback``), ``off``;

in two scenarios:

* ``recurring``: the trace as recorded, every problem recurs each step;
* ``half_new``: from the second step on, every other problem is renamed each step, so half the
  batch has no history of its own; the snapshot holds every problem seen (as the history actor
  ships it), so the global tree has other problems' responses.

Reported per variant: accepted and drafted tokens, simulated makespan vs no drafting (the
replay's uncalibrated cost model), and the host time spent drafting (``DASSpeculator.step`` and
history loads, min of ``--repeats``), also per drafted request-step. CPU times depend on the
machine and its load: compare within one run. Output: JSON (``--out``).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from drafter_speed import machine_info  # noqa: E402
from replay import CostModel, Sample, read_trace, replay, report  # noqa: E402

from openrlhf_das.config import DASConfig  # noqa: E402

TRACE = Path(__file__).resolve().parent / "traces" / "h100-qwen0.5b-math500-T1.jsonl.zst"
GLOBAL_MODES = {  # replay policy (its source flags) and config overrides
    "always": ("das+all", {"global_fallback": False}),
    "fallback": ("das+all", {"global_fallback": True}),
    "off": ("das+siblings", {}),
}


def half_new(steps: dict[int, list[Sample]]) -> dict[int, list[Sample]]:
    """The trace with every other problem (sorted ids) renamed per step after the first."""
    pids = sorted({s.problem_id for samples in steps.values() for s in samples})
    renamed = set(pids[::2])
    first = min(steps)
    return {
        step: [
            Sample(f"{s.problem_id}@{step}", s.sample_index, s.prompt, s.response)
            if step != first and s.problem_id in renamed
            else s
            for s in samples
        ]
        for step, samples in steps.items()
    }


def run_variant(steps: dict[int, list[Sample]], policy: str, config: DASConfig, scope: str, repeats: int) -> dict[str, Any]:
    """Replay ``policy`` and its baseline ``none`` under ``config`` ``repeats`` times: totals of
    the first run (from :func:`replay.report`), host seconds drafting the min over the runs."""
    row: dict[str, Any] | None = None
    walls: list[float] = []
    for _ in range(repeats):
        results = replay(steps, ["none", policy], config, CostModel(), padded=True, snapshot_scope=scope)
        walls.append(results[policy].wall_s)
        if row is None:
            rep = report(results, config.length_buckets, {}, CostModel())["policies"]
            row = {k: rep[policy][k] for k in ("accepted", "drafted", "makespan_s", "makespan_ratio_vs_none", "decode_steps")}
            row["none_makespan_s"] = rep["none"]["makespan_s"]
            row["drafter_request_steps"] = results[policy].counts.drafter_request_steps
    assert row is not None
    row["drafting_wall_s"] = min(walls)
    row["drafting_wall_s_runs"] = walls
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trace", default=str(TRACE))
    ap.add_argument("--depths", type=int, nargs="+", default=[64, 32])
    ap.add_argument("--global-modes", nargs="+", default=list(GLOBAL_MODES), choices=list(GLOBAL_MODES))
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--out", default="benchmarks/results/local/drafter_sources.json")
    args = ap.parse_args()
    if args.repeats < 1:
        ap.error("--repeats must be >= 1")

    head, recorded = read_trace(args.trace)
    if not recorded:
        raise SystemExit(f"{args.trace}: no samples")
    scenarios = {"recurring": (recorded, "batch"), "half_new": (half_new(recorded), "all")}
    out: dict[str, Any] = {
        "trace": Path(args.trace).name,
        "trace_header": head,
        "machine": machine_info(),
        "cost_model": CostModel().__dict__,
        "scenarios": {},
    }
    for name, (steps, scope) in scenarios.items():
        rows: dict[str, Any] = {}
        for depth in args.depths:
            for mode in args.global_modes:
                policy, overrides = GLOBAL_MODES[mode]
                cfg = DASConfig().with_overrides({"max_depth": depth, **overrides})
                r = run_variant(steps, policy, cfg, scope, args.repeats)
                r["policy"] = policy
                r["drafting_us_per_request_step"] = 1e6 * r["drafting_wall_s"] / max(r["drafter_request_steps"], 1)
                rows[f"depth{depth}-{mode}"] = r
                print(f"{name:9s} depth {depth:3d} global {mode:8s}: accepted {r['accepted']:6d} drafted {r['drafted']:6d} "
                      f"makespan {r['makespan_ratio_vs_none']:.4f} drafting {r['drafting_wall_s']:.3f} s "
                      f"({r['drafting_us_per_request_step']:.1f} µs/request-step)", flush=True)
        out["scenarios"][name] = {"snapshot_scope": scope, "variants": rows}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
