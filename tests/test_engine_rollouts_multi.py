"""``benchmarks/engine_rollouts.py --engines 2``: two real CPU vLLM engines at once, one per sticky
problem shard (the data-parallel layout of the multi-GPU issue), merged as the history actor
merges engines: the epoch lasts as long as the slower engine, tokens and DAS stats are summed.
With ``--gpus 1`` both engines share one device (issue 9's two engines at half memory on one
GPU): the second starts only after the first has built its engine."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from engine_fixtures import run_benchmark
from openrlhf_das.ray.sharding import engine_for_problem

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "engine_rollouts.py"


def _script():
    spec = importlib.util.spec_from_file_location("engine_rollouts", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_engine_devices_wrap_over_fewer_gpus():
    er = _script()
    assert [er.engine_devices(i, 1, 4) for i in range(4)] == [[0], [1], [2], [3]]  # one engine per GPU
    assert [er.engine_devices(i, 2, 4) for i in range(2)] == [[0, 1], [2, 3]]  # tensor-parallel pairs
    assert [er.engine_devices(i, 1, 1) for i in range(2)] == [[0], [0]]  # two engines share GPU 0
    assert [er.engine_devices(i, 2, 2) for i in range(2)] == [[0, 1], [0, 1]]


@pytest.mark.parametrize("argv, message", [
    (["--device", "cuda", "--engines", "2", "--gpus", "1"], "must be <= 0.45"),  # default 0.85 each
    (["--device", "cuda", "--engines", "4", "--gpus", "2", "--gpu-memory-utilization", "0.5"], "must be <= 0.45"),
    (["--engines", "1", "--tensor-parallel", "2", "--gpus", "1"], "--gpus 1 < --tensor-parallel 2"),
])
def test_shared_devices_are_checked_before_any_engine_starts(argv, message, capsys):
    with pytest.raises(SystemExit) as exc:
        _script().parse_args(argv)
    assert exc.value.code == 2 and message in capsys.readouterr().err


def test_half_memory_engines_may_share_a_device():
    args = _script().parse_args(["--device", "cuda", "--engines", "2", "--gpus", "1", "--gpu-memory-utilization", "0.42"])
    assert (args.gpus, args.engines) == (1, 2)


@pytest.mark.engine
def test_two_engine_rollouts_are_sharded_and_merged(tmp_path):
    ids = [f"q{i}" for i in range(6)]
    out = tmp_path / "er.json"
    proc = run_benchmark(tmp_path, "engine_rollouts.py", len(ids), "--samples", "2", "--epochs", "2",
                         "--max-tokens", "24", "--temperature", "0", "--modes", "nospec,das_flat", "--engines", "2",
                         "--gpus", "1", "--out", str(out))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads(out.read_text())
    for mode in ("nospec", "das_flat"):
        res = report["results"][mode]
        shards = [e["problem_ids"] for e in res["engines"]]
        assert sorted(p for s in shards for p in s) == sorted(ids)  # a partition of the problems ...
        for i, shard in enumerate(shards):  # ... by the sticky hash
            assert all(engine_for_problem(p, 2) == i for p in shard)
        for k, merged in enumerate(res["epochs"]):
            per = [e["epochs"][k] for e in res["engines"]]
            assert merged["seconds"] == max(e["seconds"] for e in per)
            assert merged["requests"] == 12 and merged["output_tokens"] == sum(e["output_tokens"] for e in per)
            assert len(merged["finish_seconds"]) == 12
            assert sum(merged["response_lengths"]) == merged["output_tokens"] and len(merged["response_lengths"]) == 12
        first, second = res["engines"]  # one device: the second engine was built after the first
        assert second["engine_started_at"] >= first["engine_ready_at"]
    das = report["results"]["das_flat"]["epochs"][1]["das"]
    per = [e["epochs"][1]["das"] for e in report["results"]["das_flat"]["engines"]]
    assert das["engines"] == 2
    assert das["acceptance"]["total"]["drafted"] == sum(d["acceptance"]["total"]["drafted"] for d in per)
    assert das["acceptance"]["total"]["accepted"] > 0  # greedy epoch 2 repeats epoch 1 per shard
    for engine in report["results"]["das_flat"]["engines"]:  # the engine's step counters are cumulative
        stats = [e["das"] for e in engine["epochs"]]
        assert all(s["epoch_steps"] > 0 for s in stats)
        assert sum(s["epoch_steps"] for s in stats) == stats[-1]["steps"]
        assert sum(s["epoch_gated_steps"] for s in stats) == stats[-1]["gated_steps"]


@pytest.mark.parametrize("mode, concurrency, extra, expected", [
    # ungated: 256 padded requests x (1 + k); vLLM 0.26's 512-token default covers 100
    ("das", 256, ["--das", "gate.mode=off"], 1280),
    ("das", 256, ["--das", "draft_free_graphs=false"], 1280),  # every step padded
    ("suffix", 256, [], 1280),
    ("nospec_sync", 256, [], None),  # 256 x 1 token: the default already covers it
    ("das", 64, [], None),  # 320 tokens
    # gate max_running 64: padded steps of <= 64 x 5 tokens, wider steps of 1 token per request
    ("das", 256, [], None),
    ("das_gpu", 256, ["--das", "budgets.long.tokens=8"], 576),  # k = 8: 64 x 9 tokens (was 9 x 256)
    # 1-token steps of up to max_num_seqs requests: vLLM rounds a maximum of 1024 down to 1010 for
    # k = 4 (sizes become multiples of 5), and steps of 1011-1024 requests ran eager; 1040 keeps 1025
    ("das", 4096, [], 1040),
    ("nospec", 4096, [], 1024),
    ("das", 4096, ["--das", "gate.mode=off"], 5 * 1024),  # at most max_num_seqs requests run at once
    ("das", 256, ["--max-cudagraph-capture-size", "2048"], 2048),  # an explicit size wins
])
def test_gpu_graphs_cover_every_running_request(mode, concurrency, extra, expected):
    er = _script()
    args = er.parse_args(["--device", "cuda", "--max-num-seqs", "1024", *extra])
    cc = er._engine_kwargs(args, mode, concurrency=concurrency)["compilation_config"]
    assert cc.get("max_cudagraph_capture_size") == expected
    assert cc["cudagraph_mode"] == "FULL_DECODE_ONLY"


def test_nospec_defaults_keeps_vllms_own_engine_settings():
    """(a0) ``nospec_defaults``: a stock engine as a user starts it (vLLM's compilation and graph
    defaults, the runner vLLM picks), whatever the call's graph settings; (a) ``nospec`` takes the
    call's settings. GPU kwargs only are built here (no engine starts)."""
    er = _script()
    args = er.parse_args(["--device", "cuda", "--compile-mode", "0", "--cudagraph-mode", "FULL_DECODE_ONLY"])
    stock = er._engine_kwargs(args, "nospec_defaults", concurrency=256)
    assert "compilation_config" not in stock and "enforce_eager" not in stock
    assert "speculative_config" not in stock and "async_scheduling" not in stock
    assert er._engine_kwargs(args, "nospec", concurrency=256)["compilation_config"]["mode"] == 0
    sized = er.parse_args(["--device", "cuda", "--max-cudagraph-capture-size", "1024"])
    assert er._engine_kwargs(sized, "nospec_defaults")["compilation_config"] == {"max_cudagraph_capture_size": 1024}
    assert "nospec_defaults" in er.MODES
