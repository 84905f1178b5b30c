"""A tiny ``openrlhf-das-train --rollout-only`` job on CPU, shared by the tests that run one
(``test_openrlhf_rollout_only.py``, ``test_report_compare.py``): a tiny model, four prompts, a
reward function file, OpenRLHF's arguments and DAS flags that draft only from shipped history."""

from __future__ import annotations

import json
from pathlib import Path

REWARD = '''
import torch

def reward_func(queries, prompts, labels, **kwargs):
    r = torch.tensor([float(len(q) % 7) / 7 for q in queries])
    return {"rewards": r, "scores": r, "extra_logs": {}}
'''
ROWS = [{"prompt": " ".join(f"t{(13 * i + 3 * j) % 250 + 2}" for j in range(8)), "label": ""} for i in range(4)]

DAS_FLAGS = ["--das", "--das.length_policy", "false", "--das.flat_budget.tokens", "4",
             "--das.use_request_tree", "false", "--das.use_global_tree", "false", "--das.use_siblings", "false",
             "--das.shared_own_text", "false", "--das.history_cpus", "0", "--das.snapshot_every", "1"]
"""``--das`` with a flat budget of 4 drafted from the problem history only."""


def rollout_only_argv(tmp_path: Path, monkeypatch, max_new_tokens: int = 24) -> list[str]:
    """Arguments of a 2-episode rollout-only job (2 prompts × 2 samples per step, greedy) over
    files written under ``tmp_path``; no Ray running, no DAS variables set (``monkeypatch``)."""
    import ray

    from openrlhf_das.integrations.openrlhf import settings
    from openrlhf_das.models.tiny import build_tiny_model

    if ray.is_initialized():
        ray.shutdown()
    for key in (settings.DAS_CONFIG_ENV, settings.INTEGRATION_ENV):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("VLLM_CPU_KVCACHE_SPACE", "1")
    model = build_tiny_model(tmp_path / "tiny", vocab_size=256)
    data = tmp_path / "prompts.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    reward = tmp_path / "reward.py"
    reward.write_text(REWARD)
    return [
        "--rollout-only", "--actor.model_name_or_path", str(model), "--vllm.num_engines", "1", "--vllm.enforce_eager",
        "--data.prompt_dataset", str(data), "--data.input_key", "prompt", "--data.label_key", "label",
        "--rollout.batch_size", "2", "--rollout.n_samples_per_prompt", "2", "--train.batch_size", "4",
        "--train.num_episodes", "2", "--data.max_len", "96", "--rollout.max_new_tokens", str(max_new_tokens),
        "--rollout.temperature", "0", "--ds.attn_implementation", "sdpa", "--reward.remote_url", str(reward),
    ]
