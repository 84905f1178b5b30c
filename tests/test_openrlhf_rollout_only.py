"""``openrlhf-das-train --rollout-only``: OpenRLHF's real engines, dataset, samples generator,
reward function, ``PPOTrainer.fit`` loop and TensorBoard logging on CPU, with DAS on and off; only
the DeepSpeed update is left out (it needs CUDA), which is what the flag does, not a test mock.

DAS runs twice: with vLLM's synchronous scheduling (method ``suffix``, the default) and with
``--das.async_scheduling true`` (method ``ngram_gpu`` with the DAS async proposer). The second
needs a GPU's async scheduling and pinned memory, which every process of that run (Ray actors,
vLLM engine processes) gets from ``tests/cpu_async.py``'s start-up hook; nothing else is mocked."""

from __future__ import annotations

import json
import os

import pytest

from cpu_async import site_env
from openrlhf_das.cli import train as cli
from rollout_only_job import DAS_FLAGS, rollout_only_argv

pytestmark = [pytest.mark.ray, pytest.mark.engine]


@pytest.fixture
def job(tmp_path, monkeypatch):
    import ray

    argv = rollout_only_argv(tmp_path, monkeypatch)
    yield argv, tmp_path
    ray.shutdown()


def _run(argv, ckpt, tb):
    rc = cli.main([*argv, "--ckpt.path", str(ckpt), "--logger.tensorboard_dir", str(tb)])
    assert rc == 0
    import ray

    ray.shutdown()
    return json.loads((ckpt / "rollout_only.json").read_text())


def test_rollout_only_with_and_without_das(job, monkeypatch):
    argv, tmp = job
    das_flags = DAS_FLAGS
    on = _run([*argv, *das_flags], tmp / "on", tmp / "tb_on")
    with monkeypatch.context() as m:
        for key, value in site_env().items():
            m.setenv(key, value)
        on_async = _run([*argv, *das_flags, "--das.async_scheduling", "true"], tmp / "on_async", tmp / "tb_on_async")
    off = _run(argv, tmp / "off", tmp / "tb_off")
    for log in (on, on_async, off):
        assert [r["step"] for r in log] == [1, 2, 3, 4]  # 4 prompts / 2 per step x 2 episodes
        assert all(r["rollout/num_samples"] == 4 and r["timing/generation"] > 0 for r in log)
        assert all(0 <= r["rollout/reward_mean"] <= 1 for r in log)
    assert not any(k.startswith("das/") for r in off for k in r)
    for log in (on, on_async):
        assert [r["das/drafted"] for r in log[:2]] == [0, 0]  # episode 1: no history yet
        assert all(r["das/drafted"] > 0 and r["das/acceptance_rate"] > 0.9 for r in log[2:])  # greedy repeats
        # greedy and lossless: the same responses with DAS on and off
        assert [r["rollout/response_length_mean"] for r in log] == [r["rollout/response_length_mean"] for r in off]
    # the async run drafted at the start of the next step (async scheduling on, DAS async
    # proposer); the synchronous run inside the step (no such time)
    from openrlhf_das.reports import load_run

    steps = {name: [r["das"] for r in load_run(str(tmp / name / "das"))[1] if r.get("mode") == "das"]
             for name in ("on", "on_async")}
    assert [len(v) for v in steps.values()] == [4, 4]
    assert all(d["critical_seconds"] > 0 and d["async_drafted_steps"] > 0 for d in steps["on_async"][2:])
    assert all(d["engine_faults"] == 0 for d in steps["on_async"])
    assert not any(d.get("critical_seconds") for d in steps["on"])
    assert any(f.startswith("events") for _, _, fs in os.walk(tmp / "tb_on") for f in fs)  # OpenRLHF's own logger
    assert (tmp / "on" / "das" / "steps.jsonl").is_file()  # the DAS run dir under --ckpt.path


def test_rollout_only_refuses_what_it_cannot_run(job, capsys):
    argv, tmp = job
    assert argv[-2] == "--reward.remote_url"
    assert cli.main(argv[:-2]) == 2  # no reward function: refused before Ray starts
    assert "--reward.remote_url" in capsys.readouterr().err
    # tensor-parallel engines: OpenRLHF uses vLLM's Ray executor, which vLLM's CPU platform refuses
    # deep inside the engine process; refused up front instead (this suite runs without a GPU)
    import torch

    assert not torch.cuda.is_available()
    assert cli.main([*argv, "--vllm.tensor_parallel_size", "2"]) == 2
    assert "tensor_parallel_size" in capsys.readouterr().err
