"""History deltas without Ray: ``HistoryStore.delta`` + ``HistoryDelta.apply`` (through npz bytes
and a ``HistoryFeed``) give exactly the snapshot the store would ship whole, step after step,
through window drops, token-cap evictions, late rollouts and reordering; a delta of another
base is refused; the one windowed store backs both the actor's store and the engines' index."""

from __future__ import annotations

import numpy as np
import pytest

from openrlhf_das.drafter import HistoryDelta, HistoryFeed, HistoryIndex, HistorySnapshot, SnapshotError
from openrlhf_das.drafter.window import WindowedBuckets
from openrlhf_das.ray import HistoryStore, shard_problems


def _same(a: HistorySnapshot, b: HistorySnapshot) -> None:
    assert a.problem_ids == b.problem_ids and a.next_step == b.next_step
    for name in ("problem_index", "steps", "offsets", "tokens"):
        assert np.array_equal(getattr(a, name), getattr(b, name)), name


@pytest.mark.parametrize("shards", [1, 3])
def test_deltas_rebuild_the_whole_snapshot_step_after_step(shards) -> None:
    rng = np.random.default_rng(7)
    pids = [f"p{i}" for i in range(14)]
    store = HistoryStore(window=3, max_tokens=2_500)  # small cap: evictions happen
    feeds = [HistoryFeed() for _ in range(shards)]
    held: list = [None] * shards
    sizes = {"delta": [], "full": []}
    for step in range(12):
        for pid in rng.choice(pids, size=5, replace=False):
            for _ in range(3):
                store.add(str(pid), step, rng.integers(0, 50, int(rng.integers(0, 60))))
        if step >= 2:  # a late rollout lands in an older bucket (partial rollouts)
            store.add(str(rng.choice(store.problem_ids())), step - 1, rng.integers(0, 50, 20))
        parts = shard_problems(store.problem_ids(), shards) if shards > 1 else [None]
        for i, part in enumerate(parts):
            want = store.snapshot(step + 1, part)
            classes = {p: ("long" if (step + len(p)) % 2 else "short") for p in want.problem_ids}
            if held[i] is None:
                data = want.to_npz_bytes(history_version=f"v{step}")
                snap, got_classes = feeds[i].receive(data, classes)
                held[i] = (f"v{step}", store.bucket_state(part), classes)
            else:
                version, state, old = held[i]
                changed = {p: c for p, c in classes.items() if old.get(p) != c} | {p: None for p in old if p not in classes}
                delta, state = store.delta(state, step + 1, part, changed)
                delta = HistoryDelta(**{**delta.__dict__, "base": version, "version": f"v{step}"})
                data = delta.to_npz_bytes()
                snap, got_classes = feeds[i].receive(data)
                held[i] = (f"v{step}", state, classes)
                sizes["delta"].append(len(data))
                sizes["full"].append(len(want.to_npz_bytes()))
            _same(snap, want)
            assert got_classes == classes
    assert feeds[0].deltas == 11 and feeds[0].full == 1
    assert store.stats().evicted_problems > 0  # the cap was exercised
    assert len(sizes["delta"]) == 11 * shards  # (bytes per step: test_ray_history_deltas.py)


def test_a_delta_of_another_base_is_refused_and_changes_nothing() -> None:
    store = HistoryStore(window=2, max_tokens=10**6)
    store.add("a", 0, [1, 2, 3])
    feed = HistoryFeed()
    feed.receive(store.snapshot(1).to_npz_bytes(history_version="s:1"), {"a": "short"})
    base = store.bucket_state()
    store.add("b", 1, [4, 5])
    delta, _ = store.delta(base, 2, classes={"b": "long"})
    for wrong in (None, "s:0", "other:1"):
        with pytest.raises(SnapshotError, match="base"):
            feed.receive(HistoryDelta(**{**delta.__dict__, "base": wrong, "version": "s:2"}).to_npz_bytes())
        assert feed.version == "s:1" and feed.snapshot.problem_ids == ("a",)
    with pytest.raises(SnapshotError, match="base"):  # an engine that holds nothing (restart)
        HistoryFeed().receive(HistoryDelta(**{**delta.__dict__, "base": "s:1", "version": "s:2"}).to_npz_bytes())
    snap, classes = feed.receive(HistoryDelta(**{**delta.__dict__, "base": "s:1", "version": "s:2"}).to_npz_bytes())
    assert snap.problem_ids == ("a", "b") and classes == {"a": "short", "b": "long"} and feed.version == "s:2"
    assert HistorySnapshot.from_npz_bytes(snap.to_npz_bytes(compress=False)).num_tokens == 5
    with pytest.raises(SnapshotError):  # a delta is not a snapshot
        HistorySnapshot.from_npz_bytes(delta.to_npz_bytes())


def test_one_windowed_store_backs_the_actor_store_and_the_engine_index() -> None:
    """Same adds → same problems, steps, order and tokens in both (they share WindowedBuckets)."""
    store = HistoryStore(window=2, max_tokens=300)
    index = HistoryIndex(max_depth=8, window=2, max_tokens=300, global_tree=True)
    assert isinstance(store._w, WindowedBuckets) and isinstance(index._w, WindowedBuckets)
    rng = np.random.default_rng(3)
    for step in range(8):
        for pid in rng.choice([f"q{i}" for i in range(6)], size=3, replace=False):
            toks = rng.integers(0, 30, int(rng.integers(1, 40)))
            store.add(str(pid), step, toks)
            index.add_rollout(str(pid), step, toks)
        assert store.problem_ids() == index.problem_ids()
        assert all(store.steps_of(p) == index.steps_of(p) for p in store.problem_ids())
        assert store.tokens == index.tokens
        a, b = store.stats(), index.stats()  # one stats class: equal counts, each holder's bytes
        assert (a.problems, a.rollouts, a.evicted_problems) == (b.problems, b.rollouts, b.evicted_problems)
        assert a.token_bytes == 4 * a.tokens and a.estimated_bytes == 0 and b.estimated_bytes > 0 == b.token_bytes


def test_device_drafter_loads_the_same_history_from_deltas() -> None:
    """The device proposer rebuilds its device indexes from the snapshot the worker's feed hands
    it: through the real ``DASWorkerExtension.das_load_snapshot``, a ``DeviceDrafter`` (suffix-gpu's
    PyTorch path on CPU) fed deltas holds the same slots and drafts the same tokens as one fed
    whole snapshots. The proposer glue is the three lines of ``DASDeviceProposer.load_snapshot_bytes``
    that turn a snapshot into ``load_history``'s arguments (the engine itself needs a GPU build)."""
    torch = pytest.importorskip("torch")
    pytest.importorskip("suffix_gpu")
    from types import SimpleNamespace

    from openrlhf_das.device import DeviceDrafter, DeviceDrafterSettings
    from openrlhf_das.engines.vllm.worker_extension import DASWorkerExtension

    def worker() -> tuple[DASWorkerExtension, DeviceDrafter]:
        dd = DeviceDrafter(DeviceDrafterSettings(k=4, vocab_size=64, max_pattern_len=8, history_capacity=1 << 12,
                                                 live_capacity=1 << 8, use_own=False, use_problem=True,
                                                 use_global=False), "cpu")

        def load_snapshot_bytes(data: bytes, classes=None):  # as DASDeviceProposer.load_snapshot_bytes
            snap = HistorySnapshot.from_npz_bytes(data)
            responses = [snap.tokens[snap.offsets[i] : snap.offsets[i + 1]] for i in range(snap.num_rollouts)]
            return dd.load_history(responses, [snap.problem_ids[int(j)] for j in snap.problem_index], snap.steps)

        w = DASWorkerExtension()
        w.model_runner = SimpleNamespace(drafter=SimpleNamespace(load_snapshot_bytes=load_snapshot_bytes))
        return w, dd

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        (wd, by_delta), (ww, by_whole) = worker(), worker()
        store = HistoryStore(window=2, max_tokens=10**6)
        rng = np.random.default_rng(5)
        state = None
        for step in range(5):
            for pid in rng.choice(["A", "B", "C", "D"], size=2, replace=False):
                for _ in range(2):
                    store.add(str(pid), step, rng.integers(1, 60, int(rng.integers(8, 24))))
            whole = store.snapshot(step + 1)
            if state is None:
                out_d = wd.das_load_snapshot(whole.to_npz_bytes(history_version=f"v{step}"), {})
            else:
                delta, _ = store.delta(state, step + 1)
                out_d = wd.das_load_snapshot(
                    HistoryDelta(**{**delta.__dict__, "base": f"v{step - 1}", "version": f"v{step}"}).to_npz_bytes())
            state = store.bucket_state()
            out_w = ww.das_load_snapshot(whole.to_npz_bytes(), {})
            assert out_d == out_w and by_delta.slots == by_whole.slots
            rows = [list(r.tokens[:6]) for r in whole.rollouts()][:6]
            slots = [by_whole.slots[r.problem_id] for r in list(whole.rollouts())[:6]]
            buf = torch.zeros(len(rows), 8, dtype=torch.int32)
            for i, r in enumerate(rows):
                buf[i, : len(r)] = torch.tensor(r, dtype=torch.int32)
            args = (torch.tensor([len(r) for r in rows], dtype=torch.int32), buf, torch.ones(len(rows), dtype=torch.bool),
                    torch.tensor(slots, dtype=torch.int64), torch.full((len(rows),), 4, dtype=torch.int64),
                    torch.full((len(rows),), 2.0))
            d1, v1 = by_delta.propose(*args)
            d2, v2 = by_whole.propose(*args)
            assert torch.equal(d1, d2) and torch.equal(v1, v2)
        assert wd._das_feed.deltas == 4 and int(v1.sum()) > 0
    finally:
        torch.set_num_threads(n)
