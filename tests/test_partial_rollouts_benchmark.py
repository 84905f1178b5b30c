"""``benchmarks/partial_rollouts.py`` end to end on CPU (tiny model, real vLLM engines, one fresh
engine per mode in its own process): the command the GPU issue runs, in miniature, so a change to
the engine settings it shares with ``engine_rollouts.py`` cannot break it unnoticed."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from openrlhf_das.models.tiny import build_tiny_model

pytestmark = [pytest.mark.engine]

ROOT = Path(__file__).resolve().parents[1]


def test_sync_and_partial_das_steps(tmp_path):
    model = build_tiny_model(tmp_path / "tiny", vocab_size=256)
    prompts = {"problems": [{"problem_id": f"q{i}", "prompt_token_ids": [(7 * i + j) % 250 + 2 for j in range(8)]}
                            for i in range(4)]}
    (tmp_path / "prompts.json").write_text(json.dumps(prompts))
    out = tmp_path / "pr.json"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "partial_rollouts.py"), "--model", str(model),
         "--prompts-file", str(tmp_path / "prompts.json"), "--problems", "4", "--groups", "2", "--samples", "2",
         "--steps", "3", "--max-tokens", "24", "--temperature", "0", "--max-model-len", "256",
         "--modes", "sync,partial_das", "--das", "pad_drafts=true", "--out", str(out)],
        capture_output=True, text=True, timeout=900, cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads(out.read_text())
    sync, partial = report["results"]["sync"]["steps"], report["results"]["partial_das"]["steps"]
    assert [s["finished"] for s in sync] == [4, 4, 4]  # B x G samples, every step waits for all
    assert all(s["carried"] == 0 and s["off_policy_samples"] == 0 for s in sync)
    assert all(s["finished"] >= 4 for s in partial)  # the budget: B x G finished samples per step
    # how many samples are cut and carried depends on timing here (equal-length greedy samples
    # often finish in the same engine step); the engine-level tests of the manager
    # (tests/test_partial_rollouts.py) check carrying deterministically
    assert all(s["off_policy_samples"] <= s["finished"] and s["carried"] >= 0 for s in partial)
    assert report["results"]["partial_das"]["das"]["acceptance"]["accepted"] > 0  # greedy text repeats
    assert set(report["summary"]) == {"sync", "partial_das"}
