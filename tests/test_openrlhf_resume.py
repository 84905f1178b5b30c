"""A resumed OpenRLHF job keeps the DAS history (issue 22: ``grpo_compare.sh`` with ``RESUME=1``,
i.e. OpenRLHF's ``--ckpt.load_enable``).

Job 1 runs OpenRLHF's real sync ``PPOTrainer.fit`` with ``--das`` (real ``SamplesGenerator``,
datasets, Ray, a real CPU vLLM DAS engine and the real history actor) and checkpoints every 2
steps; it is cut while training global step 4, after its rollout (DAS step 3) was recorded and
periodically checkpointed. Job 2 — a fresh Ray cluster, a fresh engine with empty history, a
new history actor on the same run directory — resumes with ``--ckpt.load_enable`` at OpenRLHF's
checkpoint of global step 2 and must:

* restore the history as of that checkpoint (DAS steps 0-1, not the later periodic checkpoint
  of step 3), set the cut steps' records aside and record the redone steps once;
* push the restored history to the new engine before its first generation, so that the first
  resumed step (DAS step 2, episode 2: problems seen in episode 1) drafts from it, with drafts
  accepted (greedy decoding repeats a problem's responses).

**Mocked, because they need CUDA**: the DeepSpeed training step (``train_step``, as in
``test_openrlhf_ray.py``) and the DeepSpeed actor group's calls (``save_checkpoint`` /
``get_checkpoint_states``: here the client states OpenRLHF hands over are pickled under
``<ckpt.path>/_actor/<tag>/``, which is what the DeepSpeed actor saves and loads for them;
``broadcast_to_vllm``, which a resumed trainer calls first: a no-op, the weights never change). OpenRLHF's own ``save_logs_and_checkpoints`` and ``init_checkpoint_states``
run, with the DAS hooks of ``integrations/openrlhf/resume.py``.
"""

from __future__ import annotations

import json

import pytest

from ray_fixtures import PROBLEM_TREE_ONLY, openrlhf_das_job
from openrlhf_das.integrations.openrlhf import settings

pytestmark = [pytest.mark.ray, pytest.mark.engine]

MAX_NEW = 32
ROWS = [
    {"problem_id": "pA", "prompt": "t3 t9 t27 t81 t5 t15 t45 t135", "label": ""},
    {"problem_id": "pB", "prompt": "t2 t4 t8 t16 t32 t64 t128 t100", "label": ""},
    {"problem_id": "pC", "prompt": "t7 t14 t21 t28 t35 t42 t49 t56", "label": ""},
    {"problem_id": "pD", "prompt": "t11 t22 t33 t44 t55 t66 t77 t88", "label": ""},
]
GENERATE_KWARGS = dict(do_sample=True, max_len=96, max_new_tokens=MAX_NEW, temperature=0.0, top_p=1.0)
SAVE_STEPS = 2
CUT_AT = 4  # job 1 dies in the training step of global step 4 (after its rollout, DAS step 3)


def _trainer_class(ray, cut_at: int | None):
    from openrlhf.trainer.ppo_trainer import PPOTrainer

    base = PPOTrainer.__ray_metadata__.modified_class.__ray_actor_class__

    class MockedDeepSpeedPPOTrainer(base):
        """OpenRLHF's PPOTrainer (fit loop, checkpoint save/load logic, SamplesGenerator) with
        the DeepSpeed training step mocked (needs CUDA); raises in global step ``cut_at``'s."""

        def train_step(self, rollout_samples, global_step):
            if cut_at is not None and global_step + 1 == cut_at:
                raise RuntimeError(f"job cut in global step {cut_at}")
            return {}, global_step + 1

        def das_events(self):
            st = getattr(self.samples_generator, "_das", None)
            return None if st is None else list(st.events)

    return ray.remote(MockedDeepSpeedPPOTrainer)


def _actor_group(ckpt_path: str):
    """Stand-in for OpenRLHF's DeepSpeed actor group (needs CUDA): checkpoint calls, and the
    weight broadcast a resumed trainer does first (a no-op: training is mocked)."""

    class CheckpointActorGroup:
        def __init__(self, path: str) -> None:
            self.path = path

        def async_run_method(self, method_name, **kwargs):
            import os
            import pickle

            import ray

            root = os.path.join(self.path, "_actor")
            if method_name == "save_checkpoint":
                os.makedirs(os.path.join(root, kwargs["tag"]), exist_ok=True)
                with open(os.path.join(root, kwargs["tag"], "client_states.pkl"), "wb") as fh:
                    pickle.dump(kwargs["client_states"], fh)
                with open(os.path.join(root, "latest"), "w") as fh:
                    fh.write(kwargs["tag"])
                return [ray.put(None)]
            if method_name == "get_checkpoint_states":
                with open(os.path.join(root, "latest")) as fh:
                    tag = fh.read()
                with open(os.path.join(root, tag, "client_states.pkl"), "rb") as fh:
                    return [ray.put(pickle.load(fh))]
            if method_name == "broadcast_to_vllm":  # training is mocked: the engine's weights are current
                return [ray.put(None)]
            raise NotImplementedError(method_name)

    return CheckpointActorGroup(ckpt_path)


def _run(tmp, name, cut_at, extra):
    from openrlhf.utils import get_strategy

    ckpt = tmp / "ckpt"
    integ = settings.IntegrationSettings(run_dir=str(ckpt / "das"), history_cpus=0, snapshot_every=1, sticky=True)
    argv = ["--rollout.batch_size", "2", "--rollout.n_samples_per_prompt", "2", "--train.batch_size", "4",
            "--train.num_episodes", "2", "--data.max_len", "96", "--rollout.max_new_tokens", str(MAX_NEW),
            "--ckpt.path", str(ckpt), "--ckpt.save_steps", str(SAVE_STEPS), *extra]
    with openrlhf_das_job(tmp / name, PROBLEM_TREE_ONLY, integ, ROWS, argv) as job:
        ray = job.ray
        trainer = _trainer_class(ray, cut_at).remote(job.model, get_strategy(job.args), _actor_group(str(ckpt)),
                                                     None, None, None, job.engines, **GENERATE_KWARGS)
        error = None
        try:
            ray.get(trainer.fit.remote())
        except Exception as exc:  # noqa: BLE001 - job 1 is cut on purpose
            error = exc
        events = ray.get(trainer.das_events.remote())
        history = ray.get_actor(integ.history_actor_name)
        status = ray.get(history.status.remote())
    return ckpt, error, events, status


@pytest.fixture(scope="module")
def jobs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("resume")
    first = _run(tmp, "job1", CUT_AT, [])
    ckpt = first[0]
    # what job 1 left: OpenRLHF's checkpoint of global step 2, DAS records of steps 0-3
    from openrlhf_das.reports import load_run

    left = {"records": [r["step"] for r in load_run(ckpt / "das")[1]],
            "periodic": json.loads((ckpt / "das" / "history" / "state.json").read_text())["step"],
            "aligned": sorted(p.name for p in (ckpt / "das" / "resume").iterdir()),
            "latest": (ckpt / "_actor" / "latest").read_text()}
    second = _run(tmp, "job2", None, ["--ckpt.load_enable"])
    return {"ckpt": ckpt, "first": first, "left": left, "second": second}


def test_job1_is_cut_after_checkpointing_the_history_with_the_trainer(jobs):
    _, error, events, _ = jobs["first"]
    assert error is not None and f"job cut in global step {CUT_AT}" in str(error)
    left = jobs["left"]
    assert left["latest"] == "global_step2"
    assert left["records"] == [0, 1, 2, 3] and left["periodic"] == 3  # the actor's own checkpoint is newer
    assert left["aligned"] == ["global_step2"]  # DAS steps 0-1: the history OpenRLHF's checkpoint goes with
    assert [s for kind, s in events if kind == "end_step"] == [0, 1, 2, 3]


def test_resumed_job_restores_the_history_and_drafts_from_it_in_its_first_step(jobs):
    from openrlhf_das.reports import load_run

    ckpt, error, events, status = jobs["second"]
    assert error is None, error
    # the resumed trainer starts at DAS step 2 (global step 3) and pushes the restored history first
    assert events[:3] == [("push", 2), ("generate", 2), ("end_step", 2)]
    assert [s for kind, s in events if kind == "end_step"][0] == 2
    # the cut run's records of steps 2-3 are set aside; every step is recorded once
    recs = load_run(ckpt / "das")[1]
    steps = [r["step"] for r in recs]
    assert steps[:4] == [0, 1, 2, 3] and len(steps) == len(set(steps))
    assert [r["step"] for r in iter_records_named(ckpt / "das", "steps.rewound.jsonl")] == [2, 3]
    first = next(r for r in recs if r["step"] == 2)
    # history in the actor when step 2 was folded: steps 0-1 (2 steps x 2 problems x 2 samples)
    # restored, + step 2's 4 rollouts (the periodic checkpoint of step 3 would give 16 + 4)
    assert first["history"]["rollouts"] == 8 + 4
    total = first["das"]["acceptance"]["total"]
    print(f"first resumed step: drafted {total['drafted']}, accepted {total['accepted']}, "
          f"engine history tokens {first['das']['history'].get('tokens')}")
    assert first["das"]["history"]["tokens"] > 0  # the new engine got the restored history
    assert total["drafted"] > 0 and total["acceptance_rate"] > 0.9
    # the cut attempt of step 2 drafted from the same history: the same drafts
    cut = next(r for r in iter_records_named(ckpt / "das", "steps.rewound.jsonl") if r["step"] == 2)
    assert cut["das"]["acceptance"]["total"]["drafted"] == total["drafted"]
    assert status["restored_step"] == 1 and status["last_step"] == max(steps)


def iter_records_named(run_dir, name):
    return [json.loads(line) for line in (run_dir / name).read_text().splitlines() if line.strip()]
