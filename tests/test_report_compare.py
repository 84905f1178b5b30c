"""``openrlhf-das report --stock A --das B``: two arms of an OpenRLHF run in one PNG + JSON, with
issue 22's numbers (``targets``), checked against the run files themselves.

* the committed GPU GRPO run (``benchmarks/gpu/results/2026-12-04-h200-grpo``: real OpenRLHF
  driver logs and ``grpo_compare.sh``'s per-arm ``steps.json``), whose numbers docs/gpu.md
  quotes (generation das/nodas 1.07 after episode 1, reward difference +0.003 ± 0.011, a 2.5 s
  history wait at step 30);
* a real rollout-only pair run here (``openrlhf-das-train --rollout-only``: OpenRLHF's engines,
  samples generator, reward and ``PPOTrainer.fit`` loop on CPU; only the DeepSpeed update is left
  out, which is what the flag does), whose DAS run directory gives acceptance per length bucket
  over the run's own ``--rollout.max_new_tokens`` and the step-boundary wait.
"""

from __future__ import annotations

import gzip
import json
import math
import re
import shutil
import statistics
from pathlib import Path

import pytest

from openrlhf_das.cli.main import main

ROOT = Path(__file__).resolve().parents[1]
GPU_RUN = ROOT / "benchmarks" / "gpu" / "results" / "2026-12-04-h200-grpo"


def _log_values(path: Path, key: str) -> dict[int, float]:
    """``key`` per global step from an OpenRLHF driver log, read here with a plain regex (the
    last line of a step wins, as in a resumed run)."""
    out = {}
    pattern = re.compile(r"Global step (\d+): .*'" + re.escape(key) + r"': ([-0-9.e]+)")
    with gzip.open(path, "rt", encoding="utf-8", errors="replace") as fh:
        for line in fh:
            if m := pattern.search(line):
                out[int(m.group(1))] = float(m.group(2))
    return out


def _paired(a: dict[int, float], b: dict[int, float]) -> tuple[float, float]:
    d = [a[s] - b[s] for s in sorted(a) if s in b]
    return statistics.fmean(d), statistics.stdev(d) / math.sqrt(len(d))


def test_compare_on_the_committed_gpu_grpo_run(tmp_path, capsys):
    assert main(["report", "--stock", str(GPU_RUN / "nodas"), "--das", str(GPU_RUN / "das"),
                 "--out", str(tmp_path / "cmp"), "--title", "H200 GRPO 0.5B"]) == 0
    out = json.loads((tmp_path / "cmp.json").read_text())
    assert (tmp_path / "cmp.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads(capsys.readouterr().out.split("png:")[0]) == out["targets"]
    t = out["targets"]

    logs = {arm: GPU_RUN / arm / "train.log.gz" for arm in ("nodas", "das")}
    gen = {arm: _log_values(p, "timing/generation") for arm, p in logs.items()}
    later = {arm: statistics.fmean(v for s, v in g.items() if s > 6) for arm, g in gen.items()}  # 6 steps/episode
    ratio = t["generation_s_ratio_after_episode_1"]
    assert ratio["value"] == pytest.approx(later["das"] / later["nodas"], rel=1e-6)
    assert round(ratio["value"], 2) == 1.07 and ratio["met"] is False and ratio["steps"] == {"nodas": 24, "das": 24}

    for key, name in (("rollout/reward_mean", "reward_mean_diff_das_minus_nodas"),
                      ("rollout/response_length_mean", "response_length_diff_das_minus_nodas")):
        vals = {arm: _log_values(p, key) for arm, p in logs.items()}
        mean, se = _paired(vals["das"], vals["nodas"])
        assert t[name]["paired_steps"] == 30
        assert t[name]["mean"] == pytest.approx(mean) and t[name]["stderr"] == pytest.approx(se)
        assert t[name]["within_2se"] is (abs(mean) <= 2 * se) is True
    assert round(t["reward_mean_diff_das_minus_nodas"]["mean"], 3) == 0.003
    assert round(t["reward_mean_diff_das_minus_nodas"]["stderr"], 3) == 0.011
    assert t["curves_within_noise"] is True

    # step 30: OpenRLHF's generation time minus the DAS hook's own timing of the generation call
    rec = next(r for r in json.loads((GPU_RUN / "das" / "steps.json").read_text())["das_steps"] if r["step"] == 29)
    wait = t["history_wait_share_last_step"]
    assert wait["step"] == 30 and wait["generation_s"] == pytest.approx(gen["das"][30], abs=1e-3)
    assert wait["wait_s"] == pytest.approx(gen["das"][30] - rec["rollout_seconds"], abs=1e-3)
    assert round(wait["wait_s"], 1) == 2.5 and wait["met"] is False

    # the same numbers from the driver logs alone (a run folder without steps.json)
    for arm in ("nodas", "das"):
        shutil.copy(logs[arm], (tmp_path / arm).mkdir() or tmp_path / arm / "train.log.gz")
    assert main(["report", "--stock", str(tmp_path / "nodas"), "--das", str(tmp_path / "das"),
                 "--steps-per-episode", "6", "--out", str(tmp_path / "from_logs")]) == 0
    t2 = json.loads((tmp_path / "from_logs.json").read_text())["targets"]
    assert t2["generation_s_ratio_after_episode_1"]["value"] == pytest.approx(ratio["value"], rel=1e-6)
    assert t2["reward_mean_diff_das_minus_nodas"] == pytest.approx(t["reward_mean_diff_das_minus_nodas"])
    assert t2["history_wait_share_last_step"]["value"] is None  # no DAS run dir among the logs


def test_compare_usage_errors(tmp_path, capsys):
    assert main(["report", "--stock", str(GPU_RUN / "nodas")]) == 2
    assert "--stock ARM --das ARM" in capsys.readouterr().err
    assert main(["report"]) == 2
    (tmp_path / "empty").mkdir()
    assert main(["report", "--stock", str(tmp_path / "empty"), "--das", str(GPU_RUN / "das")]) == 2
    assert "steps_per_episode" in capsys.readouterr().err


MAX_NEW = 24


@pytest.mark.ray
@pytest.mark.engine
def test_compare_on_a_real_rollout_only_pair(tmp_path, monkeypatch):
    import ray

    from openrlhf_das.cli import train as cli
    from openrlhf_das.policy import bucket_labels
    from openrlhf_das.reports import iter_records
    from openrlhf_das.reports.length_buckets import edges_for
    from rollout_only_job import DAS_FLAGS, rollout_only_argv

    argv = rollout_only_argv(tmp_path, monkeypatch, max_new_tokens=MAX_NEW)
    das_flags = DAS_FLAGS
    for arm, flags in (("das", das_flags), ("nodas", [])):
        ckpt = tmp_path / arm
        assert cli.main([*argv, *flags, "--ckpt.path", str(ckpt), "--logger.tensorboard_dir", str(ckpt / "tb")]) == 0
        ray.shutdown()

    assert main(["report", "--stock", str(tmp_path / "nodas"), "--das", str(tmp_path / "das"),
                 "--steps-per-episode", "2", "--title", "rollout-only CPU"]) == 0
    out = json.loads((tmp_path / "compare.json").read_text())
    assert (tmp_path / "compare.png").stat().st_size > 0
    t = out["targets"]
    status = {arm: {r["step"]: r for r in json.loads((tmp_path / arm / "rollout_only.json").read_text())}
              for arm in ("nodas", "das")}
    records = {r["step"]: r for r in iter_records(tmp_path / "das" / "das")}
    assert sorted(status["das"]) == [1, 2, 3, 4] and sorted(records) == [0, 1, 2, 3]

    # generation after episode 1 (steps 3-4), das / stock, from OpenRLHF's own timing
    gen = {arm: statistics.fmean(status[arm][s]["timing/generation"] for s in (3, 4)) for arm in status}
    assert t["generation_s_ratio_after_episode_1"]["value"] == pytest.approx(gen["das"] / gen["nodas"], rel=1e-6)
    # the wait at the last step: OpenRLHF's generation time of step 4 minus the DAS hook's own timing
    wait = t["history_wait_share_last_step"]
    g4 = status["das"][4]["timing/generation"]
    assert wait["step"] == 4 and wait["value"] == pytest.approx((g4 - records[3]["rollout_seconds"]) / g4, rel=1e-6)
    assert 0 <= wait["wait_s"] < g4
    # greedy and lossless: both arms' responses, hence rewards and lengths, are identical (up to
    # float32 summation order in the per-step means)
    for name in ("reward_mean_diff_das_minus_nodas", "response_length_diff_das_minus_nodas"):
        assert t[name]["paired_steps"] == 4
        assert t[name]["mean"] == pytest.approx(0, abs=1e-6) and t[name]["stderr"] == pytest.approx(0, abs=1e-6)
    # acceptance per bucket over the run's own range (0..max_new_tokens), sums of the run dir's counts
    by_bucket = out["arms"]["das"]["acceptance_by_bucket"]
    assert by_bucket and set(by_bucket) <= set(bucket_labels(edges_for(MAX_NEW)))
    for label, c in by_bucket.items():
        drafted = sum(r["das"]["acceptance"]["by_bucket"].get(label, {}).get("drafted", 0) for r in records.values())
        accepted = sum(r["das"]["acceptance"]["by_bucket"].get(label, {}).get("accepted", 0) for r in records.values())
        assert (c["drafted"], c["accepted"]) == (drafted, accepted) and drafted > 0
    assert out["arms"]["nodas"]["acceptance_by_bucket"] == {}
    # within-step reward std (OpenRLHF's rollout/reward_std; the PNG's band around the reward mean)
    for arm in ("nodas", "das"):
        assert out["arms"][arm]["reward_within_step_std_mean"] == pytest.approx(
            statistics.fmean(status[arm][s]["rollout/reward_std"] for s in range(1, 5)))
