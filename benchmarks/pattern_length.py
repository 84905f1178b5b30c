"""How long a context suffix to match (``DASConfig.pattern_tokens``): drafter cost vs acceptance.

For each pattern length N:

* **cost**: µs (CPU) per request per ``DASSpeculator.step`` on ``drafter_speed.py``'s synthetic
  workload (batch 256, all sources, every request drafting), least-CPU of ``--repeats`` runs;
* **quality**: ``replay.py`` on the real H100 trace in ``benchmarks/traces`` (Qwen2.5-Coder-0.5B,
  32 MATH-500 problems × 8, T = 1, 3 epochs): accepted tokens and simulated makespan ratio for the
  policies ``request+global`` (vLLM ``suffix``-like) and ``das+siblings``.

Output: JSON (``--out``). CPU timings depend on the machine and its load; compare within a run.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import drafter_speed as ds  # noqa: E402
from replay import CostModel, read_trace, replay, report  # noqa: E402

from openrlhf_das.config import DASConfig, LengthClass  # noqa: E402

TRACE = Path(__file__).resolve().parent / "traces" / "h100-qwen0.5b-math500-T1.jsonl.zst"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lengths", type=int, nargs="+", default=[64, 32, 16, 8])
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--policies", nargs="+", default=["request+global", "das+siblings"])
    ap.add_argument("--out", default="benchmarks/results/local/pattern_length.json")
    args = ap.parse_args()

    snap, live = ds.make_workload(256, 0)
    index = snap.build_index(64, 5, 10**12, True)
    head, steps = read_trace(TRACE)
    cost = CostModel()
    out = {"machine": ds.machine_info(), "trace": str(TRACE.name), "unit_cost": "µs CPU per request per step",
           "lengths": {}}
    for n in args.lengths:
        cfg = DASConfig().with_overrides({"gate.mode": "off", "pattern_tokens": n})
        timing = ds._best(lambda: ds.time_speculator(index, live, cfg, LengthClass.LONG, args.steps, None), args.repeats)
        base = DASConfig().with_overrides({"pattern_tokens": n})
        rep = report(replay(steps, ["none", *args.policies], base, cost), base.length_buckets, head, cost)
        out["lengths"][n] = {
            "speculator_step_us": timing,
            "replay": {p: {k: rep["policies"][p][k] for k in ("accepted", "drafted", "makespan_ratio_vs_none")}
                       for p in args.policies},
        }
        print(n, json.dumps(out["lengths"][n]), flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
