"""``benchmarks/engine_rollouts.py --engines 2``: two real CPU vLLM engines at once, one per sticky
problem shard (the data-parallel layout of the multi-GPU issue), merged as the history actor
merges engines: the epoch lasts as long as the slower engine, tokens and DAS stats are summed."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from openrlhf_das.models.tiny import build_tiny_model
from openrlhf_das.ray.sharding import engine_for_problem

pytestmark = [pytest.mark.engine]

ROOT = Path(__file__).resolve().parents[1]


def test_two_engine_rollouts_are_sharded_and_merged(tmp_path):
    model = build_tiny_model(tmp_path / "tiny", vocab_size=256)
    ids = [f"q{i}" for i in range(6)]
    prompts = {"problems": [{"problem_id": pid, "prompt_token_ids": [(7 * i + j) % 250 + 2 for j in range(8)]}
                            for i, pid in enumerate(ids)]}
    (tmp_path / "prompts.json").write_text(json.dumps(prompts))
    out = tmp_path / "er.json"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "engine_rollouts.py"), "--model", str(model),
         "--prompts-file", str(tmp_path / "prompts.json"), "--problems", "6", "--samples", "2", "--epochs", "2",
         "--max-tokens", "24", "--temperature", "0", "--modes", "nospec,das_flat", "--engines", "2",
         "--max-model-len", "256", "--out", str(out)],
        capture_output=True, text=True, timeout=900, cwd=ROOT,
    )
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
