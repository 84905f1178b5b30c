"""``openrlhf_das.reports.arms``: per-step rows of a stock and a DAS arm, their summary and plot
(behind ``make demo`` and ``benchmarks/gpu/grpo_plot.py``), and grpo_plot's log parsing."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from openrlhf_das.reports.arms import COLUMNS, plot, step_rows, summarize, write_csv

ROOT = Path(__file__).resolve().parents[1]


def _status(gen: float, reward: float, length: float = 100.0) -> dict:
    return {"timing/generation": gen, "rollout/reward_mean": reward, "rollout/response_length_mean": length,
            "rollout/num_samples": 8.0, "not/a/column": 1.0}


def _das_record(step: int, drafted: int, accepted: int, verify: int, rollout_s: float = 9.0) -> dict:
    return {"step": step, "rollout_seconds": rollout_s, "das": {"propose_seconds": 0.5, "acceptance": {"total": {
        "drafted": drafted, "accepted": accepted, "verify_steps": verify}}}}


def test_rows_line_up_das_records_by_order_and_number_episodes():
    statuses = {1: _status(10, 0.1), 2: _status(8, 0.2), 3: _status(6, 0.3)}
    # the DAS run dir numbers steps from 0: matched to OpenRLHF's 1-based steps by order
    rows = step_rows(statuses, [_das_record(0, 0, 0, 0), _das_record(1, 40, 10, 20), _das_record(2, 40, 30, 20)], 2)
    assert [r["episode"] for r in rows] == [1, 1, 2]
    assert rows[0]["das_drafted_tokens"] == 0 and "das_accept_rate" not in rows[0]
    assert rows[1]["das_accept_rate"] == 0.25 and rows[1]["das_accepted_per_draft"] == 0.5
    assert rows[2]["das_accept_rate"] == 0.75
    # the DAS step-boundary work inside OpenRLHF's timing/generation: its time minus the hook's
    assert rows[0]["das_rollout_s"] == 9.0 and rows[0]["das_boundary_s"] == pytest.approx(1.0)
    assert rows[0]["gen_s_per_1k_tokens"] == 10 / (100 * 8 / 1000)
    assert "not/a/column" not in rows[0] and set(rows[0]) <= set(COLUMNS)


def test_summary_ratios_by_episode_and_paired_reward_noise(tmp_path):
    nodas = {"steps": step_rows({1: _status(10, 0.1), 2: _status(10, 0.3), 3: _status(10, 0.2)}, [], 1),
             "steps_per_episode": 1}
    das = {"steps": step_rows({1: _status(12, 0.2), 2: _status(5, 0.3), 3: _status(7, 0.4)}, [], 1),
           "steps_per_episode": 1}
    s = summarize(nodas, das, warmup=0)
    r = s["ratio_das_over_nodas"]["generation_s"]
    assert r["first"] == pytest.approx(1.2) and r["later"] == pytest.approx(0.6) and r["all"] == pytest.approx(0.8)
    # by default the cold first step is left out of the timing means, not of the reward
    d = summarize(nodas, das)
    assert d["warmup_steps_left_out_of_timing"] == 1 and d["arms"]["das"]["generation_s_mean"]["first"] is None
    assert d["ratio_das_over_nodas"]["generation_s"]["all"] == pytest.approx(0.6)
    assert d["arms"]["das"]["reward_mean"] == s["arms"]["das"]["reward_mean"] == pytest.approx(0.3)
    noise = s["reward_diff_das_minus_nodas"]
    assert noise["paired_steps"] == 3 and noise["mean"] == pytest.approx(0.1)
    assert noise["stderr"] == pytest.approx(0.1 / math.sqrt(3))
    out = plot(nodas, das, str(tmp_path / "cmp"), title="test", warmup=0)
    assert out == s and json.loads((tmp_path / "cmp.json").read_text()) == s
    assert (tmp_path / "cmp.png").stat().st_size > 0
    write_csv(das, tmp_path / "das.csv")
    assert (tmp_path / "das.csv").read_text().splitlines()[0].split(",") == COLUMNS


def test_grpo_plot_extracts_openrlhf_log_lines(tmp_path):
    log = tmp_path / "train.log"
    log.write_text(
        "noise\n"
        "(PPOTrainer pid=1) ✨ Global step 1: {'timing/generation': 10.5, 'rollout/reward_mean': tensor(0.25), "
        "'rollout/response_length_mean': 300.0, 'rollout/num_samples': 64.0, 'policy_loss': nan}\n"
        "(PPOTrainer pid=1) ✨ Global step 2: {'timing/generation': 9.0, 'rollout/reward_mean': 0.5}\n"
        "(PPOTrainer pid=1) ✨ Global step 2: {'timing/generation': 8.0, 'rollout/reward_mean': 0.5}\n")
    out = tmp_path / "steps.json"
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu" / "grpo_plot.py"), "extract", "--arm", "nodas",
                           "--log", str(log), "--steps-per-episode", "1", "--out", str(out)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    rows = json.loads(out.read_text())["steps"]
    assert [r["step"] for r in rows] == [1, 2] and rows[0]["reward"] == 0.25
    assert math.isnan(rows[0]["policy_loss"]) and rows[1]["generation_s"] == 8.0  # a resumed step: the last wins
    assert (tmp_path / "steps.csv").is_file()
