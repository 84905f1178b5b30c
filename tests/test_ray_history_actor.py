"""The history actor under real Ray (2 CPUs): stats from two engines, per-engine sharding of
snapshots, recreation after ``ray.kill``.

The engines here are stand-in Ray actors (``ray_fixtures.StatsEngine``) returning recorded
stats dicts in the exact shape of ``das_get_stats``: two real CPU vLLM engines would cost about
a minute. The real-engine round trip is ``test_ray_engine_roundtrip.py``.
"""

from __future__ import annotations

import time

import numpy as np
import pytest
from ray_fixtures import StatsEngine, ray_cluster_fixture  # noqa: F401 - the ray_cluster fixture

from openrlhf_das.config import DASConfig, LengthClass
from openrlhf_das.drafter import HistorySnapshot
from openrlhf_das.policy import AcceptanceTracker
from openrlhf_das.ray import create_history_actor, engine_for_problem
from openrlhf_das.reports import load_run

pytestmark = pytest.mark.ray


def engine_stats(events: list[tuple[str, int, int, int]], history_tokens: int, faults: int = 0) -> dict:
    """A ``das_get_stats`` result from (class, response length, drafted, accepted) verify events."""
    t = AcceptanceTracker()
    for i, (cls, length, drafted, accepted) in enumerate(events):
        t.on_proposed(f"r{i}", drafted, LengthClass(cls), length)
        t.on_verified(f"r{i}", accepted + 1)
    return {
        "enabled": True, "engine_faults": 0, "propose_seconds": 0.25, "resumed_requests": 0, "bad_metadata": 0,
        "acceptance": t.snapshot(), "faults": faults, "rebuilds": 0, "steps": len(events), "gated_steps": 0,
        "active_requests": 0,
        "history": {"problems": 2, "rollouts": 4, "tokens": history_tokens, "live_sequences": 0,
                    "evicted_problems": 0, "estimated_bytes": history_tokens * 360},
    }


def rollouts(step: int, pids: list[str], n: int = 12) -> list[dict]:
    rng = np.random.default_rng(step)
    return [
        {"problem_id": p, "prompt_token_ids": [3, 4], "response_token_ids": rng.integers(2, 99, n).tolist(), "step": step}
        for p in pids
        for _ in range(2)
    ]


def test_stats_from_two_engines_are_summed_and_recorded(ray_cluster, tmp_path) -> None:
    ray = ray_cluster
    e0 = ray.remote(StatsEngine).options(num_cpus=0).remote(
        [engine_stats([("long", 500, 4, 3), ("long", 1500, 4, 4)], 100, faults=1)], num_workers=2)
    e1 = ray.remote(StatsEngine).options(num_cpus=0).remote(
        [engine_stats([("medium", 500, 2, 0), ("short", 9000, 0, 0)], 50)])
    actor = create_history_actor(tmp_path / "run", DASConfig(), [e0, e1], num_cpus=0)
    ray.get(actor.add_rollouts.remote(rollouts(0, ["a", "b"])))
    res = ray.get(actor.end_step.remote(0, rollout_seconds=2.5))
    assert res["errors"] == [] and len(res["engines"]) == 2

    das = load_run(tmp_path / "run")[1][0]["das"]
    assert das["engines"] == 2
    tot = das["acceptance"]["total"]
    assert (tot["drafted"], tot["accepted"], tot["verify_steps"], tot["decode_steps"]) == (10, 7, 3, 4)
    assert tot["acceptance_rate"] == pytest.approx(0.7) and tot["accepted_per_step"] == pytest.approx(7 / 3)
    by_bucket = das["acceptance"]["by_bucket"]
    assert by_bucket["0-1k"]["drafted"] == 6 and by_bucket["0-1k"]["accepted"] == 3
    assert by_bucket["1k-2k"]["accepted_per_step"] == 4.0 and by_bucket["8k+"]["decode_steps"] == 1
    assert das["acceptance"]["by_class"]["long"]["acceptance_rate"] == pytest.approx(7 / 8)
    assert das["history"]["tokens"] == 150 and das["history"]["estimated_bytes"] == 150 * 360
    assert das["faults"] == 1 and das["propose_seconds"] == pytest.approx(0.5)
    assert res["metrics"]["das/acceptance_rate"] == pytest.approx(0.7)
    assert res["metrics"]["das/bucket/0-1k/drafted"] == 6 and res["metrics"]["das/rollout_seconds"] == 2.5

    # Background build: end_step(push=False) returns before any engine has the new snapshot.
    ray.get(actor.add_rollouts.remote(rollouts(1, ["a", "c"])))
    res = ray.get(actor.end_step.remote(1, push=False))
    assert res["engines"] == [] and len(ray.get(e0.received.remote())) == 1
    loaded = ray.get(actor.push_snapshots.remote())
    assert [e["engine"] for e in loaded] == [0, 1] and ray.get(actor.push_snapshots.remote()) == []
    _, classes = ray.get(e1.received.remote())[-1]  # a delta: classes are those held after it
    assert ray.get(e1.histories.remote())[-1].next_step == 2 and set(classes) == {"a", "b", "c"}


def test_a_failing_engine_is_reported_not_fatal(ray_cluster, tmp_path) -> None:
    ray = ray_cluster
    good = ray.remote(StatsEngine).options(num_cpus=0).remote([engine_stats([("long", 10, 4, 2)], 10)])
    bad = ray.remote(StatsEngine).options(num_cpus=0).remote([], broken=True)
    actor = create_history_actor(tmp_path / "run", DASConfig(), [good, bad], num_cpus=0)
    ray.get(actor.add_rollouts.remote(rollouts(0, ["a"])))
    res = ray.get(actor.end_step.remote(0))
    assert len(res["errors"]) == 2 and all("engine 1" in e and "engine is broken" in e for e in res["errors"])
    rec = load_run(tmp_path / "run")[1][0]
    assert rec["das"]["engines"] == 1 and rec["das"]["acceptance"]["total"]["accepted"] == 2
    assert "das_get_stats failed" in rec["errors"][0]


@pytest.mark.parametrize("pin", [True, False])
def test_snapshots_follow_engine_pinning(ray_cluster, tmp_path, pin) -> None:
    ray = ray_cluster
    engines = [ray.remote(StatsEngine).options(num_cpus=0).remote([]) for _ in range(2)]
    actor = create_history_actor(tmp_path / "run", DASConfig(), engines, pin_problems=pin, num_cpus=0)
    pids = [f"q{i}" for i in range(12)]
    ray.get(actor.add_rollouts.remote(rollouts(0, pids)))
    res = ray.get(actor.end_step.remote(0, next_problem_ids=pids + ["fresh"]))
    assert [e["engine"] for e in res["engines"]] == [0, 1]
    seen: set[str] = set()
    for i, eng in enumerate(engines):
        [(data, classes)] = ray.get(eng.received.remote())
        snap = HistorySnapshot.from_npz_bytes(data)
        assert snap.next_step == 1
        mine = {p for p in pids + ["fresh"] if engine_for_problem(p, 2) == i} if pin else set(pids + ["fresh"])
        assert set(snap.problem_ids) == mine - {"fresh"} and set(classes) == mine
        seen |= set(snap.problem_ids)
    assert seen == set(pids)
    status = ray.get(actor.status.remote())
    assert status["max_tokens"] == DASConfig().history_max_tokens * (2 if pin else 1)


def test_killed_actor_is_recreated_from_its_last_checkpoint(ray_cluster, tmp_path) -> None:
    ray = ray_cluster
    per_step = [engine_stats([("long", 100, 4, s + 1)], 10) for s in range(4)]
    engine = ray.remote(StatsEngine).options(num_cpus=0).remote(per_step)
    actor = create_history_actor(tmp_path / "run", DASConfig(), [engine], snapshot_every=2, max_restarts=1, num_cpus=0)
    for step in range(3):  # checkpoint after step 1; step 2 only recorded
        ray.get(actor.add_rollouts.remote(rollouts(step, ["a", "b"])))
        ray.get(actor.end_step.remote(step, rollout_seconds=1.0))
    pid = ray.get(actor.status.remote())["pid"]
    ray.kill(actor, no_restart=False)  # asynchronous: wait until a new process answers
    deadline = time.monotonic() + 60
    while (status := ray.get(actor.status.remote()))["pid"] == pid:
        assert time.monotonic() < deadline, "the actor was not restarted"
        time.sleep(0.2)
    assert status["restored_step"] == 1 and status["restore_error"] is None and status["last_step"] == 2
    assert status["history"]["rollouts"] == 8  # steps 0-1 of a and b, 2 samples each
    assert status["acceptance"]["total"]["accepted"] == 1 + 2 + 3  # all completed steps, from steps.jsonl

    ray.get(actor.add_rollouts.remote(rollouts(3, ["a"])))
    ray.get(actor.end_step.remote(3, rollout_seconds=1.0))
    recs = load_run(tmp_path / "run")[1]
    assert [r["step"] for r in recs] == [0, 1, 2, 3]
    assert [r["das"]["acceptance"]["total"]["accepted"] for r in recs] == [1, 2, 3, 4]
    assert ray.get(actor.status.remote())["acceptance"]["total"]["accepted"] == 10
