"""OpenRLHF integration on a real local Ray cluster with a fake GPU (``num_gpus=1``) and a real
CPU vLLM engine running DAS, built by the wrapped ``create_vllm_engines``.

* the ``worker_process_setup_hook`` patches OpenRLHF inside Ray workers;
* the DAS rollout actor tags requests with problem ids and drafts from history that the real
  ``RolloutHistoryActor`` pushed (``das_rpc`` → ``das_load_snapshot``);
* the step boundary fires exactly once per step, before training, with the snapshot push done
  before the next generation, in OpenRLHF's sync ``PPOTrainer.fit`` and in its async
  ``GenerateSamplesActor.fit``. Both are OpenRLHF's real classes over a real ``SamplesGenerator``,
  ``PromptDataset`` and dataloader; **only the DeepSpeed training step is mocked** (the sync
  trainer's ``train_step`` — experience making, PPO update, weight broadcast — and, in async
  mode, the ``TrainingActor``, replaced by the test loop consuming the rollout queue), because
  OpenRLHF's DeepSpeed path needs CUDA.

One engine serves the whole module (engine start is the expensive part: ~20-40 s on 2 cores).
"""

from __future__ import annotations

import copy
import os

import pytest

from ray_fixtures import PROBLEM_TREE_ONLY, openrlhf_das_job
from openrlhf_das.integrations.openrlhf import problem_ids, settings
from openrlhf_das.models.tiny import build_tiny_tokenizer

pytestmark = [pytest.mark.ray, pytest.mark.engine]

# Greedy decoding repeats a problem's earlier responses, so problem-tree drafts are accepted.
CONFIG = PROBLEM_TREE_ONLY
MAX_NEW = 32
ROWS = [  # two rows with their own id, two identified by their prompt text
    {"problem_id": "pA", "prompt": "t3 t9 t27 t81 t5 t15 t45 t135", "label": ""},
    {"problem_id": "pB", "prompt": "t2 t4 t8 t16 t32 t64 t128 t100", "label": ""},
    {"prompt": "t7 t14 t21 t28 t35 t42 t49 t56", "label": ""},
    {"prompt": "t11 t22 t33 t44 t55 t66 t77 t88", "label": ""},
]
GENERATE_KWARGS = dict(do_sample=True, max_len=96, max_new_tokens=MAX_NEW, temperature=0.0, top_p=1.0)


@pytest.fixture(scope="module")
def job(tmp_path_factory):
    integ = settings.IntegrationSettings(run_dir=str(tmp_path_factory.mktemp("run")), history_cpus=0, snapshot_every=1,
                                         sticky=True)
    with openrlhf_das_job(tmp_path_factory.mktemp("openrlhf_das"), CONFIG, integ, ROWS, [
        "--rollout.batch_size", "2", "--rollout.n_samples_per_prompt", "2", "--train.batch_size", "4",
        "--train.num_episodes", "2", "--data.max_len", "96", "--rollout.max_new_tokens", str(MAX_NEW),
    ]) as job:
        yield job


def _records(run_dir):
    from openrlhf_das.reports import load_run

    return [r for r in load_run(run_dir)[1] if r.get("mode") == "das"]


def test_setup_hook_patches_ray_workers(job):
    ray = job.ray

    @ray.remote(num_cpus=0)
    def probe():
        from openrlhf_das.integrations.openrlhf import patches as p, settings as s
        from openrlhf_das.integrations.openrlhf.flash_attn_shim import real_flash_attn_available

        hooked = p.status()["hook_installed"]  # before this task imported anything of OpenRLHF
        import openrlhf.datasets.prompts_dataset as pd

        return hooked, getattr(pd.preprocess_data, "__das_patched__", False), p.status(), s.current() is not None, \
            real_flash_attn_available(), os.getpid()

    hooked, patched, status, das_on, real_fa, pid = ray.get(probe.remote())
    assert pid != os.getpid()
    assert hooked and patched and das_on
    assert status["patched"]["openrlhf.datasets.prompts_dataset"]
    assert status["flash_attn_shim"] is (not real_fa)


def test_engine_drafts_from_history_actor_push(job, tmp_path):
    """Rollouts → real history actor → das_load_snapshot on the DAS engine → drafts. The request
    carries no problem id: the engine falls back to the prompt hash, which must equal the one
    this process filed the history under."""
    from vllm import SamplingParams

    from openrlhf_das.ray import create_history_actor

    ray, [engine] = job.ray, job.engines
    actor = create_history_actor(tmp_path / "run", CONFIG, [engine], pin_problems=True, snapshot_every=1, num_cpus=0)
    tok = build_tiny_tokenizer(256)
    prompt = "t5 t6 t7 t8 t9 t10 t11 t12"
    pid = problem_ids.prompt_hash(prompt)
    sp = SamplingParams(temperature=0.0, max_tokens=MAX_NEW, ignore_eos=True)
    outs_by_step = []
    for step in range(2):
        outs = ray.get(engine.generate_responses.remote(prompt=prompt, label="", sampling_params=sp, max_length=96,
                                                        hf_tokenizer=tok, num_samples=2))
        outs_by_step.append([o["observation_tokens"] for o in outs])
        assert [o["das_problem_id"] for o in outs] == [pid, pid]  # the id travels back with the responses
        ray.get(actor.add_rollouts.remote([
            {"problem_id": pid, "prompt_token_ids": o["observation_tokens"][: o["action_ranges"][0][0]],
             "response_token_ids": o["observation_tokens"][o["action_ranges"][0][0]:], "step": step}
            for o in outs
        ]))
        res = ray.get(actor.end_step.remote(step, push=True))
        assert res["errors"] == [] and res["engines"][0]["history"]["tokens"] == 2 * MAX_NEW * (step + 1)
    first, second = (r["das"]["acceptance"]["total"] for r in _records(tmp_path / "run"))
    assert first["drafted"] == 0  # nothing in the history yet, no other source enabled
    assert second["drafted"] > 0 and second["acceptance_rate"] > 0.9
    assert outs_by_step[0] == outs_by_step[1]  # greedy: DAS verification leaves outputs unchanged
    ray.kill(actor)


def _check_protocol(events, first, steps):
    """Every generation is followed by its step's end (one per step), and every generation
    after the first is immediately preceded by the completed push of the previous step's
    snapshot. (OpenRLHF's generate_samples call that finds the dataloader exhausted pushes
    and then generates nothing: a trailing ("push", s) without a generation is fine.)"""
    assert [s for kind, s in events if kind == "end_step"] == list(range(first, first + steps))
    assert [s for kind, s in events if kind == "generate"] == list(range(first, first + steps))
    for i, (kind, s) in enumerate(events):
        if kind == "generate":
            assert events[i + 1] == ("end_step", s)
            if s > first:
                assert events[i - 1] == ("push", s)


def _trainer_class(ray):
    from openrlhf.trainer.ppo_trainer import PPOTrainer

    base = PPOTrainer.__ray_metadata__.modified_class.__ray_actor_class__

    class MockedTrainStepPPOTrainer(base):
        """OpenRLHF's PPOTrainer (fit loop, SamplesGenerator, datasets) with train_step mocked:
        the real one makes experiences and trains with DeepSpeed, which needs CUDA."""

        def train_step(self, rollout_samples, global_step):
            log = self.__dict__.setdefault("das_log", [])
            log.append({"samples": len(rollout_samples), "events": list(self.samples_generator._das.events),
                        "das_info": [{k: float(v[0]) for k, v in e.info.items() if k.startswith("das/")}
                                     for e in rollout_samples]})
            return {}, global_step + 1

        def das_report(self):
            from openrlhf_das.integrations.openrlhf import problem_ids

            return self.__dict__.get("das_log", []), list(self.samples_generator._das.events), problem_ids.resolutions()

    return ray.remote(MockedTrainStepPPOTrainer)


def test_sync_trainer_step_boundary(job):
    from openrlhf.utils import get_strategy

    ray = job.ray
    trainer = _trainer_class(ray).remote(job.model, get_strategy(job.args), None, None, None, None, job.engines,
                                         **GENERATE_KWARGS)
    ray.get(trainer.fit.remote())
    log, events, resolutions = ray.get(trainer.das_report.remote())
    ray.kill(trainer)

    steps = 4  # 4 prompts / 2 per step x 2 episodes
    assert [e["samples"] for e in log] == [4] * steps
    # the trainer resolves a prompt's problem id once, at dispatch; its 2 samples' rollouts carry it
    assert resolutions == 2 * steps
    _check_protocol(events, first=0, steps=steps)
    for k, entry in enumerate(log):  # training of step k starts after step k was closed, once
        assert entry["events"][-1] == ("end_step", k)
        assert sum(e[0] == "end_step" for e in entry["events"]) == k + 1

    recs = _records(job.integ.run_dir)
    assert [r["step"] for r in recs] == list(range(steps))
    # each step's DAS scalars ride in its experiences' info (OpenRLHF logs info to wandb/TB)
    from openrlhf_das.integrations.openrlhf.samples import LOGGED_METRICS

    for entry, rec in zip(log, recs):
        assert all(set(i) == set(LOGGED_METRICS) for i in entry["das_info"])
        assert entry["das_info"][0]["das/drafted"] == rec["das"]["acceptance"]["total"]["drafted"]
        assert entry["das_info"][0]["das/acceptance_rate"] == pytest.approx(
            rec["das"]["acceptance"]["total"]["acceptance_rate"])
    assert all(r["rollouts"]["count"] == 4 and r["rollouts"]["problems"] == 2 for r in recs)
    drafted = [r["das"]["acceptance"]["total"]["drafted"] for r in recs]
    assert drafted[:2] == [0, 0]  # episode 1: every problem is new
    assert all(d > 0 for d in drafted[2:])  # episode 2: drafts from episode 1's pushed history
    assert all(r["das"]["acceptance"]["total"]["acceptance_rate"] > 0.9 for r in recs[2:])
    # the history is keyed by the rows' own ids, else by the prompt hash computed here
    history = ray.get_actor(job.integ.history_actor_name)
    ids = ray.get(history.__ray_call__.remote(lambda self: sorted(self.store.problem_ids())))
    assert ids == sorted(["pA", "pB", *(problem_ids.prompt_hash(r["prompt"]) for r in ROWS[2:])])
    # after the first push the engine gets per-step deltas, not the whole history
    shipped = ray.get(history.status.remote())["shipped"]
    assert shipped["snapshots"] == 1 and shipped["deltas"] == steps - 1 and shipped["resent"] == 0


def test_async_generator_step_boundary(job):
    from openrlhf.trainer.ppo_trainer_async import GenerateSamplesActor, VLLMLock
    from openrlhf.utils import get_strategy
    from ray.util.queue import Queue

    ray = job.ray
    args = copy.deepcopy(job.args)
    args.train.async_enable = True
    args.train.num_episodes = 1
    history = ray.get_actor(job.integ.history_actor_name)
    first = ray.get(history.status.remote())["last_step"] + 1  # continues the sync test's run

    rollout_queue, rollout_slots = Queue(maxsize=1), Queue(maxsize=1)
    rollout_slots.put(0)
    generator = GenerateSamplesActor.remote(
        pretrain=job.model, strategy=get_strategy(args), vllm_engines=job.engines, vllm_lock=VLLMLock.remote(),
        rollout_queue=rollout_queue, rollout_slots=rollout_slots, **GENERATE_KWARGS,
    )
    done = generator.fit.remote(episode=0, total_consumed_prompts=0)
    consumed, global_step = [], 0
    while True:  # the TrainingActor's queue protocol, minus DeepSpeed
        payload = rollout_queue.get(block=True, timeout=600)
        if payload == "done":
            break
        samples, _client_states, _filter_rate, _gen_time = payload
        rollout_slots.put(global_step, block=True)
        consumed.append(len(samples))
        global_step += 1
    ray.get(done)
    events = ray.get(generator.__ray_call__.remote(lambda self: list(self.samples_generator._das.events)))
    ray.kill(generator)

    assert consumed == [4, 4]
    _check_protocol(events, first=first, steps=2)
    recs = [r for r in _records(job.integ.run_dir) if r["step"] >= first]
    assert [r["step"] for r in recs] == [first, first + 1]
    assert all(r["das"]["acceptance"]["total"]["drafted"] > 0 for r in recs)  # problems seen in the sync run
