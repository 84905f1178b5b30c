"""Round trip with real Ray and a real CPU vLLM engine running DAS in a Ray actor:
rollouts → history actor → snapshot → ``das_load_snapshot`` on the engine → drafts from it.

Only the problem tree is enabled (no request/global tree, no live siblings), so every draft of
step 1 comes from the history the actor shipped; greedy decoding repeats step 0's responses,
so they are accepted.
"""

from __future__ import annotations

import time

import numpy as np
import pytest
from ray_fixtures import PROBLEM_TREE_ONLY, VLLMEngine, ray_cluster_fixture  # noqa: F401 - the ray_cluster fixture

from openrlhf_das.models.tiny import build_tiny_model
from openrlhf_das.ray import create_history_actor
from openrlhf_das.reports import load_run, render

pytestmark = [pytest.mark.ray, pytest.mark.engine]

CONFIG = PROBLEM_TREE_ONLY


def test_rollouts_to_engine_drafts(ray_cluster, tmp_path) -> None:
    ray = ray_cluster
    model = build_tiny_model(tmp_path / "tiny", vocab_size=256)
    engine = ray.remote(VLLMEngine).options(num_cpus=0).remote(str(model), CONFIG.to_dict())
    actor = create_history_actor(tmp_path / "run", CONFIG, [engine], pin_problems=True, snapshot_every=1,
                                 num_cpus=0, meta={"test": "roundtrip"})
    ray.get(engine.ready.remote())  # engine start (15-30 s) is not rollout time
    rng = np.random.default_rng(0)
    pids = [f"p{i}" for i in range(4)]
    prompts = {p: rng.integers(2, 256, 16).tolist() for p in pids}
    batch = [p for p in pids for _ in range(2)]
    for step in range(2):
        t0 = time.perf_counter()
        outs = ray.get(engine.generate.remote([prompts[p] for p in batch], batch, 48))
        seconds = time.perf_counter() - t0
        ray.get(actor.add_rollouts.remote([
            {"problem_id": p, "prompt_token_ids": prompts[p], "response_token_ids": o, "step": step, "policy_version": step}
            for p, o in zip(batch, outs, strict=True)
        ]))
        res = ray.get(actor.end_step.remote(step, rollout_seconds=seconds, next_problem_ids=pids))
        assert res["errors"] == []
        [loaded] = res["engines"]
        assert loaded["history"]["tokens"] == 8 * 48 * (step + 1)  # the engine swapped the new history in

    recs = load_run(tmp_path / "run")[1]
    first, second = (r["das"]["acceptance"]["total"] for r in recs)
    assert first["drafted"] == 0  # no history yet, no other source enabled
    assert second["drafted"] > 0 and second["accepted"] > 0
    assert second["acceptance_rate"] > 0.9  # greedy: the same responses again
    assert recs[1]["rollouts"]["policy_versions"] == [1, 1] and recs[1]["history"]["tokens"] == 2 * 8 * 48
    # the engine updated its index in place at both boundaries (no full rebuild, no fault)
    assert recs[1]["das"]["snapshot_incremental"] == 1 and recs[1]["das"]["snapshot_full"] == 0
    assert recs[1]["das"]["snapshot_faults"] == 0 and recs[1]["das"]["last_snapshot_seconds"] > 0
    paths = render(tmp_path / "run", tensorboard=False)
    assert all(paths[k].stat().st_size > 0 for k in ("csv", "json", "png"))
