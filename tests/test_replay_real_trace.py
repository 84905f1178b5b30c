"""Replay of the real GPU trace shipped in benchmarks/traces (not synthetic).

The trace: Qwen2.5-Coder-0.5B-Instruct, 32 MATH-500 problems x 8 samples, T = 1, 3 epochs,
recorded on one H100 with vLLM 0.26 by benchmarks/engine_rollouts.py (mode nospec). A subset
of problems keeps the test fast; the assertions are about behaviour, not exact numbers.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from replay import CostModel, read_trace, replay, report  # noqa: E402

from openrlhf_das.config import DASConfig  # noqa: E402

TRACE = ROOT / "benchmarks" / "traces" / "h100-qwen0.5b-math500-T1.jsonl.zst"


def test_real_trace_replay() -> None:
    head, steps = read_trace(TRACE)
    assert head["synthetic"] is False
    keep = sorted({s.problem_id for s in steps[0]})[:8]
    steps = {k: [s for s in v if s.problem_id in keep] for k, v in steps.items()}
    assert sorted(steps) == [0, 1, 2] and all(len(v) == 8 * 8 for v in steps.values())
    cost, base = CostModel(), DASConfig()
    rep = report(replay(steps, ["none", "problem", "das+siblings"], base, cost), base.length_buckets, head, cost)
    pol = rep["policies"]
    assert pol["none"]["accepted"] == 0
    # history of earlier epochs is a real draft source on real data...
    assert all(rec["accepted"] > 0 for rec in pol["problem"]["steps"][1:])
    # ...and full DAS shortens the simulated makespan
    assert pol["das+siblings"]["makespan_ratio_vs_none"] < 1.0
