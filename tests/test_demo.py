"""``make demo`` (``python -m openrlhf_das.cli.demo``): the README's main command runs the
``openrlhf_das.cli.train`` entry point in rollout-only mode, DAS off and on, on the shipped
arithmetic set, then the greedy identity check, and prints acceptance per length bucket and the GPU
table.

The end-to-end test uses the tiny test model instead of SmolLM2 (same code path, seconds instead of
minutes); everything else is real: two ``openrlhf-das-train --rollout-only`` processes, each with
its own Ray, OpenRLHF's real engines, samples generator, math reward function and step loop."""

from __future__ import annotations

import json
import shlex

import pytest

from openrlhf_das.cli import demo
from openrlhf_das.models.tiny import build_tiny_model


def test_dry_run_prints_the_entry_point_for_both_arms(capsys, tmp_path):
    assert demo.main(["--dry-run", "--run-dir", str(tmp_path), "--das.window", "3"]) == 0
    off, on = (shlex.split(line) for line in capsys.readouterr().out.strip().splitlines())
    for cmd in (off, on):
        assert cmd[1:5] == ["-m", "openrlhf_das.cli.train", "--rollout-only", "--actor.model_name_or_path"]
    assert off[-2:] == ["--das", "off"]
    assert on[on.index("--das"):] == ["--das", "--das.config", str(demo.DEFAULT_CONFIG), "--das.window", "3"]
    # the same OpenRLHF flags apart from where each arm keeps its checkpoint/logs
    strip = lambda cmd, arm: [t.replace(str(tmp_path / arm), "CKPT") for t in cmd[:cmd.index("--das")]]  # noqa: E731
    assert strip(off, "nodas") == strip(on, "das")


@pytest.mark.parametrize("argv, message", [
    (["--das.bogus", "1"], "bogus: unknown key"),
    (["--das.window", "-1"], "window"),
    (["--das.window"], "needs a value"),
    (["--foo"], "unrecognized arguments: --foo"),
    (["--das.window", "3", "--foo"], "unrecognized arguments: --foo"),
    (["--problems", "6", "--prompts-per-step", "4"], "multiple of --prompts-per-step"),
    (["--episodes", "0"], "--episodes must be >= 1"),
    (["--model", "no-such-model"], "no registered model"),
    (["--greedy-prompts", "9"], "--greedy-prompts must be between 0 and --problems"),
    (["--dataset", "aime"], "invalid choice"),
])
def test_bad_options_fail_before_any_work(argv, message, capsys, tmp_path):
    with pytest.raises(SystemExit) as exc:
        demo.main([*argv, "--run-dir", str(tmp_path / "run")])
    assert exc.value.code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_more_problems_than_shipped_fails_before_the_model_is_built(capsys, tmp_path):
    assert demo.main(["--problems", "1000", "--prompts-per-step", "4", "--run-dir", str(tmp_path / "run")]) == 2
    assert "the shipped arithmetic set has" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


@pytest.mark.ray
@pytest.mark.engine
def test_demo_runs_both_arms_end_to_end(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("VLLM_CPU_KVCACHE_SPACE", "1")
    model = build_tiny_model(tmp_path / "tiny", vocab_size=256)
    run = tmp_path / "run"
    rc = demo.main(["--model", str(model), "--problems", "2", "--prompts-per-step", "2", "--samples", "2",
                    "--episodes", "2", "--max-tokens", "24", "--temperature", "0", "--run-dir", str(run),
                    "--greedy-prompts", "2", "--results", str(tmp_path / "results" / "demo.json"),
                    "--das.length_policy", "false", "--das.flat_budget.tokens", "4", "--das.use_request_tree", "false",
                    "--das.use_global_tree", "false", "--das.use_siblings", "false", "--das.shared_own_text", "false",
                    "--das.history_cpus", "0",
                    "--das.snapshot_every", "1"])  # problem trees only: no draft before episode 2
    assert rc == 0
    summary = json.loads((run / "summary.json").read_text())
    off, on = summary["nodas"]["steps"], summary["das"]["steps"]
    assert [s["step"] for s in off] == [s["step"] for s in on] == [1, 2]  # 2 problems / 2 per step x 2 episodes
    assert [s["episode"] for s in on] == [1, 2]
    assert all(s["generation_s"] > 0 and s["num_samples"] == 4 for s in off + on)
    assert on[0]["das_drafted_tokens"] == 0 and on[1]["das_drafted_tokens"] > 0  # history from episode 1
    assert on[1]["das_accept_rate"] > 0
    # greedy, lossless: the same responses with DAS on and off
    assert [s["response_length"] for s in off] == [s["response_length"] for s in on]
    assert [s["reward"] for s in off] == [s["reward"] for s in on]
    compare = summary["compare"]
    assert compare["reward_diff_das_minus_nodas"]["mean"] == 0.0
    assert compare["arms"]["das"]["generation_s_mean"]["later"] == on[1]["generation_s"]
    assert (run / "compare.png").is_file() and json.loads((run / "compare.json").read_text()) == compare
    for arm in demo.ARMS:
        assert (run / arm / "rollout_only.json").is_file() and (run / arm / "train.log").stat().st_size > 0
    assert (run / "das" / "das" / "acceptance.png").is_file()
    out = capsys.readouterr().out
    # episode 1 is step 1 here, the cold start that the timing means leave out (reports.arms.WARMUP_STEPS)
    assert "later episodes" in out and "episode 1 (no history)" not in out
    # buckets over the run's own range (0..24 tokens), recorded by the engine and printed
    assert summary["length_buckets"] == [6, 12, 18]
    assert list(summary["acceptance_by_bucket"]) == ["0-6", "6-12", "12-18", "18+"]
    assert sum(b["drafted"] for b in summary["acceptance_by_bucket"].values()) > 0
    assert "buckets over 0..24" in out and "    12-18 " in out
    # the greedy identity check: both prompts, the same tokens, with drafts verified
    greedy = summary["greedy_check"]
    assert greedy["prompts"] == greedy["identical"] == 2 and greedy["drafted"] > 0
    assert "DAS on and off gave IDENTICAL tokens on 2/2 prompts" in out
    # the GPU table comes from the committed result files, and the CPU line says why it differs
    assert summary["gpu_results"] and "benchmarks/gpu/results" in out and demo.WHY_CPU_IS_SLOWER in out
    # --results: the committed files are the script's own output
    assert json.loads((tmp_path / "results" / "demo.json").read_text()) == summary
    assert (tmp_path / "results" / "demo-compare.png").is_file()
    assert summary["meta"]["machine"]["vllm"] == "vllm-cpu 0.29.0"
