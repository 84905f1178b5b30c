"""``openrlhf_das.ray.resume`` on the real history actor body (in-process, no engines): trainer-
aligned history checkpoints and rewinding a run directory to one of them. The OpenRLHF job around
it (cut, ``--ckpt.load_enable``, first resumed step drafting) is ``test_openrlhf_resume.py``."""

from __future__ import annotations

import json

import numpy as np

from openrlhf_das.config import DASConfig
from openrlhf_das.ray.history_actor import RolloutHistoryActor
from openrlhf_das.ray.resume import KEEP, REWOUND_NAME, resume_dir
from openrlhf_das.reports import load_run

CONFIG = DASConfig().with_overrides({"window": 10})  # every step of these runs stays in the window


def _rollouts(step: int, pids=("a", "b"), n: int = 6) -> list[dict]:
    rng = np.random.default_rng(step)
    return [{"problem_id": p, "prompt_token_ids": [1, 2], "response_token_ids": rng.integers(3, 90, n).tolist(),
             "step": step} for p in pids for _ in range(2)]


def _steps_in_store(actor: RolloutHistoryActor) -> set[int]:
    return {s for p in actor.store.problem_ids() for s in actor.store.steps_of(p)}


def test_aligned_checkpoints_and_rewind(tmp_path):
    run = tmp_path / "run"
    actor = RolloutHistoryActor(run, CONFIG, snapshot_every=1)
    for step in range(6):
        actor.add_rollouts(_rollouts(step))
        actor.end_step(step, rollout_seconds=1.0)
        if step % 2 == 1:  # the trainer checkpoints after global steps 2, 4, 6 (DAS steps 1, 3, 5)
            actor.save_for_global_step(step + 1)
    actor.add_rollouts(_rollouts(6))
    actor.end_step(6, rollout_seconds=1.0)  # an async generator ran ahead before the checkpoint of 8
    actor.save_for_global_step(8)
    assert sorted(p.name for p in (run / "resume").iterdir()) == [f"global_step{g}" for g in (4, 6, 8)][-KEEP:]
    state = json.loads((resume_dir(run, 8) / "history" / "state.json").read_text())
    assert state["step"] == 7 and state["global_step"] == 8 and state["actor_last_step"] == 6

    # a new actor on the run dir (the resumed job) restores its own latest checkpoint (step 6) ...
    resumed = RolloutHistoryActor(run, CONFIG, snapshot_every=1)
    assert resumed.restored_step == 6 and _steps_in_store(resumed) == set(range(7))
    # ... and the trainer resumes at its checkpoint of global step 6: DAS steps 0-5
    out = resumed.resume_at(6)
    assert out["source"] == "resume" and out["error"] is None and out["rewound_records"] == 1
    assert _steps_in_store(resumed) == set(range(6)) and resumed.last_step == 5
    assert out["history"]["rollouts"] == 6 * 4
    assert [r["step"] for r in load_run(run)[1]] == list(range(6))
    assert [json.loads(x)["step"] for x in (run / REWOUND_NAME).read_text().splitlines()] == [6]
    assert resumed._build is not None  # the restored snapshot waits for the first push

    # the redone step is recorded once; a later rewind without an aligned checkpoint of that step
    # cuts the actor's own history instead (with the steps before it)
    resumed.add_rollouts(_rollouts(6))
    resumed.end_step(6, rollout_seconds=2.0)
    assert [r["step"] for r in load_run(run)[1]] == list(range(7))
    out = resumed.resume_at(5)
    assert out["source"] == "periodic" and _steps_in_store(resumed) == set(range(5))
    assert resumed.status()["last_step"] == 4 and resumed.status()["restored_step"] == 4


def test_a_damaged_aligned_checkpoint_is_refused_and_the_actor_falls_back(tmp_path):
    run = tmp_path / "run"
    actor = RolloutHistoryActor(run, CONFIG, snapshot_every=10)
    for step in range(3):
        actor.add_rollouts(_rollouts(step))
        actor.end_step(step)
    actor.save_for_global_step(2)
    npz = next((resume_dir(run, 2) / "history").glob("*.npz"))
    npz.write_bytes(npz.read_bytes()[:-10])
    out = actor.resume_at(2)
    assert out["source"] == "periodic" and "SHA-256" in out["error"]
    assert _steps_in_store(actor) == {0, 1} and actor.last_step == 1
