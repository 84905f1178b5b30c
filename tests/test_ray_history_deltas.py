"""History deltas under real Ray (2 CPUs): engines fed per-step deltas by the history actor end up
with the same history, classes and drafts as engines fed the whole snapshot every step, with
fewer bytes per step boundary; an engine that lost its history (restart) gets the whole snapshot
again.

Engines are ``ray_fixtures.DrafterEngine``: the real worker RPC (``DASWorkerExtension``: history
feed) over a real ``DASSpeculator`` with suffix trees, without vLLM (the vLLM engine path is
``test_openrlhf_ray.py`` / ``test_openrlhf_two_engines.py``); only the GPU is missing here.
"""

from __future__ import annotations

import numpy as np
import pytest
from ray_fixtures import DrafterEngine, ray_cluster_fixture  # noqa: F401 - the ray_cluster fixture

from openrlhf_das.config import DASConfig
from openrlhf_das.ray import create_history_actor, engine_for_problem

pytestmark = pytest.mark.ray

CONFIG = DASConfig().with_overrides({"window": 4, "history_max_tokens": 40_000})
PIDS = [f"prob-{i}" for i in range(12)]


def _step_rollouts(step: int, rng: np.random.Generator) -> list[dict]:
    """4 samples of 5 problems; each problem's responses share its own token pattern."""
    out = []
    for pid in rng.choice(PIDS, size=5, replace=False):
        base = np.random.default_rng(int(pid.split("-")[1])).integers(2, 400, 120)
        for _ in range(4):
            cut = int(rng.integers(10, 50))
            resp = np.concatenate([base[:cut], rng.integers(2, 400, int(rng.integers(20, 80)))])
            out.append({"problem_id": str(pid), "prompt_tokens": 50, "response_token_ids": resp.astype(np.int32), "step": step})
    return out


@pytest.mark.parametrize("pin", [True, False])
def test_deltas_give_engines_the_history_and_drafts_of_whole_snapshots(ray_cluster, tmp_path, pin) -> None:
    ray = ray_cluster
    make = ray.remote(DrafterEngine).options(num_cpus=0)
    engines = [make.remote(CONFIG.to_dict()) for _ in range(2)]  # fed by the actor (deltas)
    whole = [make.remote(CONFIG.to_dict()) for _ in range(2)]  # fed the whole snapshot every step
    actor = create_history_actor(tmp_path / "run", CONFIG, engines, pin_problems=pin, num_cpus=0)
    rng = np.random.default_rng(0)
    delta_bytes, whole_bytes = [], []
    for step in range(9):
        if step == 5:  # engine 0 restarts: it holds no base for the next delta
            ray.get(engines[0].restart.remote())
            ray.get(whole[0].restart.remote())
        rollouts = _step_rollouts(step, rng)
        for r in rollouts[::7]:  # in-flight sibling text during the step (dropped at the swap)
            for e in engines + whole:
                ray.get(e.live_text.remote(r["problem_id"], step, r["response_token_ids"][:30].tolist()))
        ray.get(actor.add_rollouts.remote(rollouts))
        res = ray.get(actor.end_step.remote(step))
        assert res["errors"] == [] and res["classes"] is None  # classes travel to engines only
        ray.get([e.take_payload_bytes.remote() for e in whole])
        problems = ray.get(actor.__ray_call__.remote(lambda self: self.store.problem_ids()))
        classes = ray.get(actor.length_classes.remote(problems))
        for i, e in enumerate(whole):
            mine = frozenset(p for p in problems if not pin or engine_for_problem(p, 2) == i)
            data = ray.get(actor.__ray_call__.remote(lambda self, m: self.store.snapshot(step + 1, m).to_npz_bytes(), mine))
            ray.get(e.das_rpc.remote("das_load_snapshot", data, {p: c for p, c in classes.items() if p in mine}))
        sent = ray.get([e.take_payload_bytes.remote() for e in engines])
        delta_bytes.append(sum(b[-1] for b in sent))
        whole_bytes.append(sum(b[-1] for b in ray.get([e.take_payload_bytes.remote() for e in whole])))
        for i in range(2):
            got, want = ray.get([engines[i].history.remote(), whole[i].history.remote()])
            assert got == want, f"step {step}, engine {i}"
            queries = [(r["problem_id"], r["response_token_ids"][:k].tolist()) for r in rollouts[::3] for k in (8, 25)]
            assert ray.get(engines[i].drafts.remote(queries)) == ray.get(whole[i].drafts.remote(queries))
        assert sum(len(h["problems"]) for h in ray.get([e.history.remote() for e in engines])) >= 5
    # bytes per step boundary, actor → engines, once the window has filled (not at the restart)
    later = [s for s in range(4, 9) if s != 5]
    assert sum(delta_bytes[s] for s in later) < 0.5 * sum(whole_bytes[s] for s in later)
    shipped = ray.get(actor.status.remote())["shipped"]
    assert shipped["resent"] == 1  # the restarted engine refused the delta, got its whole snapshot
    assert shipped["snapshots"] == 2 + 1 and shipped["deltas"] == 2 * 9 - 3
