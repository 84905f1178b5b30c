"""Two DAS rollout engines sharing one history actor (the CPU part of the multi-GPU issue): real
Ray with two fake GPUs, two real CPU vLLM engines built by the wrapped ``create_vllm_engines``,
OpenRLHF's real sync ``PPOTrainer.fit`` over a real ``SamplesGenerator`` (**only the DeepSpeed
training step is mocked**, as in ``test_openrlhf_ray.py``: it needs CUDA).

Checks: sticky problem→engine assignment (every prompt of a problem goes to
``engine_for_problem(id, 2)``), per-engine snapshots (each engine holds only its problems'
history), and the history actor's per-step stats summed over both engines.
"""

from __future__ import annotations


import pytest

from ray_fixtures import PROBLEM_TREE_ONLY, openrlhf_das_job
from openrlhf_das.integrations.openrlhf import settings
from openrlhf_das.ray.sharding import engine_for_problem

pytestmark = [pytest.mark.ray, pytest.mark.engine]

CONFIG = PROBLEM_TREE_ONLY
MAX_NEW = 24


def _ids_per_engine(per_engine: int = 2) -> list[str]:
    """Problem ids, ``per_engine`` of them hashing to each of the two engines."""
    picked: dict[int, list[str]] = {0: [], 1: []}
    i = 0
    while min(map(len, picked.values())) < per_engine:
        pid = f"prob{i}"
        e = engine_for_problem(pid, 2)
        if len(picked[e]) < per_engine:
            picked[e].append(pid)
        i += 1
    return picked[0] + picked[1]


IDS = _ids_per_engine()
ROWS = [{"problem_id": pid, "prompt": " ".join(f"t{(11 * k + 5 * j) % 250 + 2}" for j in range(8)), "label": ""}
        for k, pid in enumerate(IDS)]
GENERATE_KWARGS = dict(do_sample=True, max_len=96, max_new_tokens=MAX_NEW, temperature=0.0, top_p=1.0)


@pytest.fixture(scope="module")
def job(tmp_path_factory):
    integ = settings.IntegrationSettings(run_dir=str(tmp_path_factory.mktemp("run")), history_cpus=0, snapshot_every=1,
                                         sticky=True)
    # logical CPUs: the engines' placement group takes one per engine, the trainer needs one more
    with openrlhf_das_job(tmp_path_factory.mktemp("openrlhf_das_two"), CONFIG, integ, ROWS, [
        "--rollout.batch_size", "4", "--rollout.n_samples_per_prompt", "2", "--train.batch_size", "8",
        "--train.num_episodes", "2", "--data.max_len", "96", "--rollout.max_new_tokens", str(MAX_NEW),
    ], num_engines=2, num_cpus=4, gpu_memory_utilization=0.45) as job:
        yield job


def test_two_engines_share_one_history(job):
    from openrlhf.trainer.ppo_trainer import PPOTrainer
    from openrlhf.utils import get_strategy

    from openrlhf_das.reports import load_run

    ray = job.ray
    base = PPOTrainer.__ray_metadata__.modified_class.__ray_actor_class__

    class MockedTrainStep(base):
        def train_step(self, rollout_samples, global_step):  # DeepSpeed training needs CUDA
            return {}, global_step + 1

    trainer = ray.remote(MockedTrainStep).remote(job.model, get_strategy(job.args), None, None, None, None,
                                                 job.engines, **GENERATE_KWARGS)
    ray.get(trainer.fit.remote())
    ray.kill(trainer)

    recs = [r for r in load_run(job.integ.run_dir)[1] if r.get("mode") == "das"]
    assert [r["step"] for r in recs] == [0, 1]  # 4 prompts per step, 2 episodes
    assert all(r["das"]["engines"] == 2 for r in recs)  # stats pulled from both engines, summed
    assert recs[0]["das"]["acceptance"]["total"]["drafted"] == 0  # episode 1: no history yet
    assert recs[1]["das"]["acceptance"]["total"]["accepted"] > 0
    assert recs[1]["das"]["acceptance"]["total"]["acceptance_rate"] > 0.9  # greedy repeats episode 1

    stats = [ray.get(e.das_rpc.remote("das_get_stats"))[0] for e in job.engines]
    # per-engine snapshots: each engine holds exactly its own problems' history ...
    assert [s["history"]["problems"] for s in stats] == [2, 2]
    assert sum(s["history"]["rollouts"] for s in stats) == len(IDS) * 2 * 2  # n=2, both episodes in the window
    # ... and served (and drafted for) only its own problems: both drafted in episode 2, and the
    # summed record equals the per-engine sum of the last step
    assert all(s["steps"] > 0 for s in stats)
    history = ray.get_actor(job.integ.history_actor_name)
    ids = ray.get(history.__ray_call__.remote(lambda self: sorted(self.store.problem_ids())))
    assert ids == sorted(IDS)
    # the second episode's history reached each engine as a delta of its own problems
    shipped = ray.get(history.status.remote())["shipped"]
    assert (shipped["snapshots"], shipped["deltas"], shipped["resent"]) == (2, 2, 0)
