"""History actor logic without a Ray cluster: window semantics, caps, length classes,
sharding stability, checkpoints (corrupt / mismatched ones refused)."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from openrlhf_das.config import DASConfig
from openrlhf_das.drafter import HistorySnapshot
from openrlhf_das.ray import HistoryStore, RolloutHistoryActor, engine_for_problem, shard_problems, sharding
from openrlhf_das.ray.persistence import CheckpointError, load_checkpoint
from openrlhf_das.ray.rollouts import FinishedRollout
from openrlhf_das.reports import load_run


def _toks(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(2, 200, n).astype(np.int32)


def _rollout(pid: str, step: int, n: int, seed: int = 0, **kw) -> dict:
    return {"problem_id": pid, "prompt_token_ids": [5, 6, 7], "response_token_ids": _toks(n, seed).tolist(), "step": step, **kw}


def _actor(tmp_path, **cfg) -> RolloutHistoryActor:
    return RolloutHistoryActor(tmp_path / "run", DASConfig().with_overrides(cfg), snapshot_every=2)


# ---------------------------------------------------------------------- window and cap
def test_window_counts_appearances_and_matches_history_index(tmp_path) -> None:
    actor = _actor(tmp_path, window=2)
    appearances = {0: ["a", "b"], 1: ["a"], 2: ["a", "b"], 3: ["c"], 4: ["a"]}
    for step, pids in appearances.items():
        actor.add_rollouts([_rollout(p, step, 10 + step, seed=step * 7 + i) for i, p in enumerate(pids) for _ in range(2)])
        actor.end_step(step)
    store = actor.store
    assert store.steps_of("a") == [2, 4]  # its last 2 appearances, not steps 3-4
    assert store.steps_of("b") == [0, 2]  # b did not appear since step 2: both kept
    assert store.steps_of("c") == [3]
    assert store.response_lengths("a") == [12, 12, 14, 14]
    # The engine-side index built from the actor's snapshot holds exactly the same steps.
    index = store.snapshot(next_step=5).build_index(max_depth=16, window=2, max_tokens=10**6, global_tree=False)
    for pid in "abc":
        assert index.steps_of(pid) == store.steps_of(pid)
        assert sorted(index.response_lengths(pid)) == sorted(store.response_lengths(pid))
    # A late rollout older than a full window is dropped, not filed.
    actor.add_rollouts([_rollout("a", 1, 5)])
    res = actor.end_step(5)
    assert store.steps_of("a") == [2, 4] and store.stats().dropped_rollouts == 1
    rec = load_run(tmp_path / "run")[1][-1]
    assert rec["rollouts"]["late"] == 1 and rec["rollouts"]["kept"] == 0 and res["step"] == 5


def test_store_token_cap_evicts_least_recent_problems() -> None:
    store = HistoryStore(window=3, max_tokens=100)
    for step in range(6):
        for pid in ("p0", "p1", "p2"):
            store.add(pid, step, _toks(15, step))
            assert store.tokens <= 100
    assert store.stats().evicted_problems > 0
    store.add("big", 7, _toks(150, 0))  # one step larger than the cap: dropped with its problem
    assert "big" not in store and store.tokens <= 100
    store.set_max_tokens(20)
    assert store.tokens <= 20


def test_store_owns_its_token_arrays() -> None:
    """Arrays from Ray can be views of a shared buffer: the store keeps copies."""
    src = np.arange(2, 12, dtype=np.int32)
    store = HistoryStore(window=1, max_tokens=100)
    store.add("p", 0, src)
    src[0] = 99
    assert store.snapshot(1).tokens[0] == 2


def test_store_round_trips_through_its_snapshot() -> None:
    store = HistoryStore(window=2, max_tokens=10**6)
    for step in range(3):
        for pid in ("x", "y", "z")[: step + 1]:
            store.add(pid, step, _toks(8 + step, step))
    back = HistoryStore.from_snapshot(HistorySnapshot.from_npz_bytes(store.snapshot(3).to_npz_bytes()), 2, 10**6)
    assert back.problem_ids() == store.problem_ids()
    for pid in store.problem_ids():
        assert back.steps_of(pid) == store.steps_of(pid)
        assert back.response_lengths(pid) == store.response_lengths(pid)


# ---------------------------------------------------------------------- length classes
def test_length_classes_rank_the_next_batch_by_past_lengths(tmp_path) -> None:
    actor = _actor(tmp_path, long_ratio=0.2, medium_ratio=0.4)
    lengths = {f"p{i}": 10 * (i + 1) for i in range(5)}  # p4 longest
    actor.add_rollouts([_rollout(p, 0, n) for p, n in lengths.items()])
    res = actor.end_step(0, next_problem_ids=["p4", "p3", "p2", "p1", "p0", "new"])
    assert res["classes"] == {"p4": "long", "p3": "medium", "p2": "medium", "p1": "short", "p0": "short", "new": "medium"}
    # Ranking is within the batch asked about: p1 is the longer of {p0, p1}.
    assert actor.length_classes(["p0", "p1"]) == {"p0": "short", "p1": "medium"}
    assert load_run(tmp_path / "run")[1][-1]["classes"] == {"short": 2, "medium": 3, "long": 1}


def test_rollout_dict_is_validated() -> None:
    with pytest.raises(ValueError, match="response_length"):
        FinishedRollout.from_dict(_rollout("a", 0, 4, response_length=5))
    with pytest.raises(ValueError, match="problem_id"):
        FinishedRollout.from_dict(_rollout("", 0, 4))
    r = FinishedRollout.from_dict(_rollout("a", 3, 4, reward=1, policy_version=2))
    assert (r.response_length, r.reward, r.policy_version, r.response_token_ids.dtype) == (4, 1.0, 2, np.int32)


# ---------------------------------------------------------------------- sharding
def test_engine_for_problem_is_stable_across_processes() -> None:
    pids = [f"problem-{i}" for i in range(200)] + ["ünïcode", "sha1:deadbeef"]
    here = [engine_for_problem(p, 4) for p in pids]
    path = sharding.__file__  # loaded alone: the package __init__ would import Ray (slow)
    code = (
        f"import importlib.util as u, json; s = u.spec_from_file_location('s', {path!r}); m = u.module_from_spec(s); "
        f"s.loader.exec_module(m); print(json.dumps([m.engine_for_problem(p, 4) for p in {pids!r}]))"
    )
    for seed in ("1", "12345"):  # different str-hash salts
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                             env={"PYTHONHASHSEED": seed, "PATH": ""})
        assert json.loads(out.stdout) == here
    assert engine_for_problem("p0", 1) == 0
    assert all(0 <= e < 4 for e in here) and min(np.bincount(here, minlength=4)) > 30  # roughly balanced
    shards = shard_problems(pids, 4)
    assert set().union(*shards) == set(pids) and sum(map(len, shards)) == len(pids)
    with pytest.raises(ValueError):
        engine_for_problem("p", 0)


# ---------------------------------------------------------------------- checkpoints
def _run_steps(actor: RolloutHistoryActor, steps: range) -> None:
    for s in steps:
        actor.add_rollouts([_rollout(f"p{i}", s, 20, seed=s * 10 + i) for i in range(3)])
        actor.end_step(s, rollout_seconds=1.0 + s)


def test_checkpoint_every_k_steps_and_reload(tmp_path) -> None:
    actor = _actor(tmp_path, window=3)
    _run_steps(actor, range(5))  # K = 2: checkpoints after steps 1 and 3
    ckpt = load_checkpoint(tmp_path / "run", window=3)
    assert ckpt is not None and ckpt.step == 3 and ckpt.snapshot.next_step == 4
    assert len(list((tmp_path / "run" / "history").glob("*.npz"))) == 1  # older npz deleted
    again = _actor(tmp_path, window=3)  # a restarted actor
    assert again.restored_step == 3 and again.restore_error is None and again.last_step == 4
    assert again.store.steps_of("p0") == [1, 2, 3]
    again.end_step(4)  # already recorded: not recorded twice
    assert [r["step"] for r in load_run(tmp_path / "run")[1]] == [0, 1, 2, 3, 4]


@pytest.mark.parametrize("damage", ["flip_npz", "truncate_npz", "bad_json", "other_window", "foreign_format"])
def test_corrupt_or_mismatched_checkpoint_is_refused(tmp_path, damage, caplog) -> None:
    actor = _actor(tmp_path, window=3)
    _run_steps(actor, range(2))
    hist = tmp_path / "run" / "history"
    npz = next(hist.glob("*.npz"))
    state = hist / "state.json"
    window = 3
    if damage == "flip_npz":
        data = bytearray(npz.read_bytes())
        data[len(data) // 2] ^= 0xFF
        npz.write_bytes(bytes(data))
    elif damage == "truncate_npz":
        npz.write_bytes(npz.read_bytes()[:50])
    elif damage == "bad_json":
        state.write_text("{not json")
    elif damage == "other_window":
        window = 4
    else:
        state.write_text(json.dumps({**json.loads(state.read_text()), "format": "something-else"}))
    with pytest.raises(CheckpointError):
        load_checkpoint(tmp_path / "run", window=window)
    with caplog.at_level("ERROR"):
        fresh = _actor(tmp_path, window=window)
    assert fresh.restore_error and fresh.store.problem_ids() == [] and fresh.restored_step is None
    assert "history checkpoint refused" in caplog.text
    _run_steps(fresh, range(2, 3))  # the run goes on with empty history
    assert fresh.store.steps_of("p0") == [2]
