"""``benchmarks/engine_rollouts.py --engines 2``: two real CPU vLLM engines at once, one per sticky
problem shard (the data-parallel layout of the multi-GPU issue), merged as the history actor
merges engines: the epoch lasts as long as the slower engine, tokens and DAS stats are summed."""

from __future__ import annotations

import json

import pytest

from engine_fixtures import run_benchmark
from openrlhf_das.ray.sharding import engine_for_problem

pytestmark = [pytest.mark.engine]


def test_two_engine_rollouts_are_sharded_and_merged(tmp_path):
    ids = [f"q{i}" for i in range(6)]
    out = tmp_path / "er.json"
    proc = run_benchmark(tmp_path, "engine_rollouts.py", len(ids), "--samples", "2", "--epochs", "2",
                         "--max-tokens", "24", "--temperature", "0", "--modes", "nospec,das_flat", "--engines", "2",
                         "--out", str(out))
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
    das = report["results"]["das_flat"]["epochs"][1]["das"]
    per = [e["epochs"][1]["das"] for e in report["results"]["das_flat"]["engines"]]
    assert das["engines"] == 2
    assert das["acceptance"]["total"]["drafted"] == sum(d["acceptance"]["total"]["drafted"] for d in per)
    assert das["acceptance"]["total"]["accepted"] > 0  # greedy epoch 2 repeats epoch 1 per shard
