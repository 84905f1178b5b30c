"""``benchmarks/partial_rollouts.py`` end to end on CPU, in miniature: the ``--das.partial_rollout``
path users run (``cli.train``'s set-up, real Ray with a fake GPU, a real CPU vLLM DAS engine from
the patched ``create_vllm_engines``, OpenRLHF's own ``GenerateSamplesActor``; only DeepSpeed's
update is not run, the script plays ``TrainingActor``'s queue protocol and weight sync), one
process per mode, on a tiny random Llama. Checks what the committed result file is made of:
every sample delivered once per episode, engine steps counted from the history actor's records,
no drafts where every draft source is off, accepted drafts and one sync per step with DAS."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.engine, pytest.mark.ray]

ROOT = Path(__file__).resolve().parents[1]


def test_keep_and_partial_das_through_openrlhf(tmp_path):
    from openrlhf_das.models.tiny import build_tiny_model

    model = build_tiny_model(tmp_path / "tiny", vocab_size=256)
    rows = [{"problem_id": f"p{i}", "prompt": " ".join(f"t{(7 * i + 3 * j) % 250 + 2}" for j in range(4 + 5 * i)),
             "label": ""} for i in range(2)]
    (tmp_path / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "pr.json"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "partial_rollouts.py"), "--model", str(model),
         "--prompts-jsonl", str(tmp_path / "rows.jsonl"), "--no-chat-template", "--problems", "2",
         "--groups", "1", "--in-flight", "2", "--samples", "2", "--episodes", "1", "--max-tokens", "24",
         "--temperature", "0", "--modes", "keep,partial_das", "--kv-cache-gib", "1", "--out", str(out)],
        capture_output=True, text=True, timeout=1500, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads(out.read_text())
    keep, partial = report["summary"]["keep"], report["summary"]["partial_das"]
    for s in (keep, partial):
        assert s["train_steps"] == 2 and s["samples"] == 4  # 2 problems x 2 samples, one group per step
        assert s["engine_steps"] > 0 and 0 < s["response_tokens"] <= 4 * 24
    assert keep["drafted"] == 0 and keep["cuts"] is None  # no draft source; OpenRLHF's own partial mode
    assert partial["accepted"] > 0  # the tiny model's greedy text repeats itself
    assert partial["syncs"] == 2  # one weight sync per training step, cut and resumed by the DAS actor
    assert partial["off_policy_samples"] <= 4
    assert set(report["ratios"]["engine_steps_per_train_step_vs_keep"]) == {"keep", "partial_das"}
    assert report["path"].startswith("--das.partial_rollout")
