"""History snapshots and deltas: the plain, versioned data that crosses process boundaries and disks.

A snapshot is a set of finished responses (token ids) with their problem id and step; it
never contains Python objects, so it is safe to ship to vLLM workers and to store as ``.npz``
(loaded with ``allow_pickle=False``). Building (or updating) a :class:`HistoryIndex` from it is
what an engine does at each step boundary.

Between steps the history actor sends each engine a :class:`HistoryDelta` instead of the whole
window: the (problem, step) buckets that are new or changed since what the engine holds, those
that are gone, the tail of the problem order and the changed length classes. An engine's
:class:`HistoryFeed` applies it to the snapshot it last received and gets exactly the snapshot
the actor would have sent (same problems, order, steps and tokens), so every engine kind loads
history as before. A delta names the history version it applies to; a feed that holds another
version refuses it (:class:`SnapshotError`) and the actor sends the whole snapshot.
"""

from __future__ import annotations

import hashlib
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from .history_index import HistoryIndex

FORMAT = "openrlhf-das/history-snapshot"
FORMAT_VERSION = 1
DELTA_FORMAT = "openrlhf-das/history-delta"
DELTA_VERSION = 1


class SnapshotError(ValueError):
    """A snapshot is corrupt, of another format or of an unsupported version."""


@dataclass(frozen=True)
class Rollout:
    """One finished response. ``tokens`` are the response token ids (int32)."""

    problem_id: str
    step: int
    tokens: np.ndarray


@dataclass(frozen=True)
class HistorySnapshot:
    """Concatenated responses: response i is ``tokens[offsets[i]:offsets[i+1]]``.

    ``problem_index[i]`` indexes ``problem_ids``; ``steps[i]`` is its RL step; ``next_step`` is
    the step the engine will generate next (live sibling responses are filed under it).
    """

    problem_ids: tuple[str, ...]
    problem_index: np.ndarray  # int32 [n]
    steps: np.ndarray  # int64 [n]
    offsets: np.ndarray  # int64 [n + 1]
    tokens: np.ndarray  # int32 [offsets[-1]]
    next_step: int

    @property
    def num_rollouts(self) -> int:
        return int(self.steps.size)

    @property
    def num_tokens(self) -> int:
        return int(self.tokens.size)

    def rollouts(self) -> Iterable[Rollout]:
        for i in range(self.num_rollouts):
            yield Rollout(
                self.problem_ids[int(self.problem_index[i])],
                int(self.steps[i]),
                self.tokens[self.offsets[i] : self.offsets[i + 1]],
            )

    @classmethod
    def from_rollouts(cls, rollouts: Sequence[Rollout], next_step: int) -> "HistorySnapshot":
        pids: dict[str, int] = {}
        index = np.fromiter((pids.setdefault(r.problem_id, len(pids)) for r in rollouts), np.int32, len(rollouts))
        lengths = np.fromiter((len(r.tokens) for r in rollouts), np.int64, len(rollouts))
        offsets = np.zeros(len(rollouts) + 1, np.int64)
        np.cumsum(lengths, out=offsets[1:])
        tokens = (
            np.concatenate([np.asarray(r.tokens, np.int32) for r in rollouts])
            if rollouts
            else np.zeros(0, np.int32)
        )
        steps = np.fromiter((r.step for r in rollouts), np.int64, len(rollouts))
        return cls(tuple(pids), index, steps, offsets, tokens, int(next_step))

    def filter(self, keep_problem: "set[str] | frozenset[str]") -> "HistorySnapshot":
        """The sub-snapshot of the problems in ``keep_problem`` (per-engine sharding)."""
        return HistorySnapshot.from_rollouts([r for r in self.rollouts() if r.problem_id in keep_problem], self.next_step)

    def build_index(self, max_depth: int, window: int, max_tokens: int, global_tree: bool) -> HistoryIndex:
        """A fresh :class:`HistoryIndex` holding this snapshot (oldest steps inserted first), its
        buckets marked with their content digests so that :meth:`update_index` can reuse them."""
        index = HistoryIndex(max_depth=max_depth, window=window, max_tokens=max_tokens, global_tree=global_tree)
        for i in np.argsort(self.steps, kind="stable"):
            lo, hi = self.offsets[i], self.offsets[i + 1]
            index.add_rollout(self.problem_ids[int(self.problem_index[i])], int(self.steps[i]), self.tokens[lo:hi])
        for pid, by_step in self._groups().items():
            for step, rows in by_step.items():
                index.set_digest(pid, step, self._digest(rows))  # buckets are whole (cap drops whole steps)
        return index

    def update_index(self, index: HistoryIndex) -> dict[str, int] | None:
        """Bring ``index`` to what :meth:`build_index` would build from this snapshot, touching
        only the (problem, step) buckets whose content changed; returns counts ``{"kept",
        "added", "dropped"}`` of buckets, or None when the index cannot be updated (the snapshot
        exceeds its token cap, whose evictions depend on insertion order: build afresh).

        Between RL steps a snapshot differs from the previous one by the new step's responses
        and the steps that left the window, so the tree work is that of the new tokens instead
        of the whole history (the digests still hash every snapshot token: ~1 ms per MB here) —
        rebuilding every tree at every step boundary grew with the history and sat in the
        trainer's critical path (``docs/gpu.md``, GRPO run of 2026-12-04). In-flight
        sibling sequences are removed, as a fresh index has none. A bucket is kept only if its
        content digest (BLAKE2b of the response lengths and tokens) matches; the trees then hold
        the same responses as a fresh build (other sequence ids, same contents).
        """
        if self.num_tokens > index.max_tokens:
            return None
        groups = self._groups()
        index.drop_live()
        for pid in [p for p in index.problem_ids() if p not in groups]:
            index.discard_problem(pid)
        counts = {"kept": 0, "added": 0, "dropped": 0}
        for pid, by_step in groups.items():
            wanted = {step: self._digest(rows) for step, rows in sorted(by_step.items())[-index.window :]}
            for step, digest in index.buckets(pid):
                if wanted.get(step) == digest and digest is not None:
                    counts["kept"] += 1
                    wanted.pop(step)
                else:
                    index.drop_step(pid, step)
                    counts["dropped"] += 1
            for step, digest in wanted.items():  # ascending
                for i in by_step[step]:
                    index.add_rollout(pid, step, self.tokens[self.offsets[i] : self.offsets[i + 1]])
                index.set_digest(pid, step, digest)
                counts["added"] += 1
        return counts

    def _groups(self) -> dict[str, dict[int, list[int]]]:
        """Row numbers by problem id, then step (ascending), in :meth:`build_index`'s insertion order."""
        groups: dict[str, dict[int, list[int]]] = {}
        for i in np.argsort(self.steps, kind="stable"):
            groups.setdefault(self.problem_ids[int(self.problem_index[i])], {}).setdefault(int(self.steps[i]), []).append(int(i))
        return groups

    def _digest(self, rows: list[int]) -> bytes:
        h = hashlib.blake2b(digest_size=16)
        h.update(np.asarray([self.offsets[i + 1] - self.offsets[i] for i in rows], np.int64).tobytes())
        for i in rows:
            h.update(self.tokens[self.offsets[i] : self.offsets[i + 1]].tobytes())
        return h.digest()

    # ------------------------------------------------------------------ (de)serialisation
    def to_npz_bytes(self, compress: bool = True, history_version: str | None = None) -> bytes:
        """npz bytes; ``history_version``: the id a following :class:`HistoryDelta` names as its
        base (optional meta key, absent in files)."""
        buf = io.BytesIO()
        meta: dict = {"format": FORMAT, "version": FORMAT_VERSION, "next_step": self.next_step}
        if history_version is not None:
            meta["history_version"] = history_version
        (np.savez_compressed if compress else np.savez)(
            buf, meta=np.frombuffer(json.dumps(meta).encode(), np.uint8), **self._arrays()
        )
        return buf.getvalue()

    def save(self, path: str | Path) -> None:
        """Write atomically (temp file + rename)."""
        p = Path(path)
        tmp = p.with_suffix(p.suffix + ".tmp")
        tmp.write_bytes(self.to_npz_bytes())
        tmp.replace(p)

    @classmethod
    def from_npz_bytes(cls, data: bytes) -> "HistorySnapshot":
        snap, _ = _decode(data, (FORMAT,))
        assert isinstance(snap, HistorySnapshot)
        return snap

    @classmethod
    def _from_npz(cls, z: Any, meta: dict) -> "HistorySnapshot":
        return cls(
            tuple(json.loads(bytes(z["problem_ids"]).decode())),
            z["problem_index"].astype(np.int32),
            z["steps"].astype(np.int64),
            z["offsets"].astype(np.int64),
            z["tokens"].astype(np.int32),
            int(meta["next_step"]),
        )

    def _arrays(self, prefix: str = "") -> dict[str, np.ndarray]:
        return {
            f"{prefix}problem_ids": np.frombuffer(json.dumps(list(self.problem_ids)).encode(), np.uint8),
            f"{prefix}problem_index": self.problem_index,
            f"{prefix}steps": self.steps,
            f"{prefix}offsets": self.offsets,
            f"{prefix}tokens": self.tokens,
        }

    @classmethod
    def load(cls, path: str | Path) -> "HistorySnapshot":
        p = Path(path)
        if not p.is_file():
            raise SnapshotError(f"snapshot file not found: {p}")
        return cls.from_npz_bytes(p.read_bytes())

    def validate(self) -> None:
        """Raise :class:`SnapshotError` unless the arrays are mutually consistent."""
        n = self.steps.size
        ok = (
            self.problem_index.shape == (n,)
            and self.offsets.shape == (n + 1,)
            and (n == 0 or (self.offsets[0] == 0 and np.all(np.diff(self.offsets) >= 0)))
            and int(self.offsets[-1]) == self.tokens.size
            and (n == 0 or (self.problem_index.min() >= 0 and self.problem_index.max() < len(self.problem_ids)))
        )
        if not ok:
            raise SnapshotError("inconsistent history snapshot arrays")


@dataclass(frozen=True)
class HistoryDelta:
    """The change of one engine's history between two step boundaries.

    Applied to the snapshot ``prev`` the engine holds (:meth:`apply`): problems
    ``gone_problems`` and (problem, step) buckets ``gone_buckets`` are removed, every bucket of
    ``put`` replaces the engine's bucket of that (problem, step) whole, and the problem order
    becomes ``prev``'s remaining problems not in ``order_tail``, then ``order_tail`` (the store's
    least-recently-updated order). ``classes``: length classes that changed (None: the problem
    has none any more). ``base`` / ``version``: the history versions before and after.
    """

    next_step: int
    gone_problems: tuple[str, ...]
    gone_buckets: tuple[tuple[str, int], ...]
    put: HistorySnapshot
    order_tail: tuple[str, ...]
    classes: dict[str, str | None]
    base: str | None = None
    version: str | None = None

    def apply(self, prev: HistorySnapshot) -> HistorySnapshot:
        """The snapshot after this delta (``prev`` is not modified)."""
        buckets: dict[str, dict[int, list[np.ndarray]]] = {}
        for snap in (prev, self.put):
            fresh: set[tuple[str, int]] = set()
            for r in snap.rollouts():
                by_step = buckets.setdefault(r.problem_id, {})
                if snap is self.put and (r.problem_id, r.step) not in fresh:
                    by_step[r.step] = []  # a put bucket replaces the engine's whole
                    fresh.add((r.problem_id, r.step))
                by_step.setdefault(r.step, []).append(r.tokens)
        for p in self.gone_problems:
            buckets.pop(p, None)
        for p, step in self.gone_buckets:
            buckets.get(p, {}).pop(step, None)
        tail = set(self.order_tail)
        order = [p for p in dict.fromkeys(prev.problem_ids) if p in buckets and p not in tail]
        order += [p for p in self.order_tail if p in buckets]
        missing = set(buckets) - set(order)
        if missing:
            raise SnapshotError(f"history delta leaves problems out of the order: {sorted(missing)[:3]}")
        return HistorySnapshot.from_rollouts(
            [Rollout(p, step, t) for p in order for step in sorted(buckets[p]) for t in buckets[p][step]],
            self.next_step,
        )

    def to_npz_bytes(self, compress: bool = True) -> bytes:
        buf = io.BytesIO()
        meta = {
            "format": DELTA_FORMAT, "version": DELTA_VERSION, "next_step": self.next_step,
            "base": self.base, "history_version": self.version,
            "gone_problems": list(self.gone_problems), "gone_buckets": [list(b) for b in self.gone_buckets],
            "order_tail": list(self.order_tail), "classes": self.classes,
        }
        (np.savez_compressed if compress else np.savez)(
            buf, meta=np.frombuffer(json.dumps(meta).encode(), np.uint8), **self.put._arrays("put_")
        )
        return buf.getvalue()

    @classmethod
    def from_npz_bytes(cls, data: bytes) -> "HistoryDelta":
        delta, _ = _decode(data, (DELTA_FORMAT,))
        assert isinstance(delta, HistoryDelta)
        return delta


class HistoryFeed:
    """An engine's receiving end of history payloads (one per TP rank): whole snapshots and
    :class:`HistoryDelta`\\ s, each turned into the whole snapshot the engine loads.

    Memory: the last snapshot (int32 tokens, 4 B per history token; an engine's suffix trees
    hold ~400 B per token per tree)."""

    def __init__(self) -> None:
        self.snapshot: HistorySnapshot | None = None
        self.version: str | None = None
        self.classes: dict[str, str] = {}
        self.deltas = 0
        self.full = 0

    def receive(self, data: bytes, classes: dict[str, str] | None = None) -> tuple[HistorySnapshot, dict[str, str] | None]:
        """The history and classes after ``data`` (a snapshot, with its ``classes``, or a delta,
        whose class changes apply to the classes held). Raises :class:`SnapshotError` for a delta
        of another base version (nothing is changed then)."""
        obj, meta = _decode(data, (FORMAT, DELTA_FORMAT))
        if isinstance(obj, HistorySnapshot):
            self.snapshot, self.version = obj, meta.get("history_version")
            self.classes = dict(classes) if classes is not None else {}
            self.full += 1
            return obj, classes
        if self.snapshot is None or obj.base is None or obj.base != self.version:
            raise SnapshotError(f"history delta for base {obj.base!r}, this engine holds {self.version!r}")
        snap = obj.apply(self.snapshot)
        merged = dict(self.classes)
        for p, c in obj.classes.items():
            if c is None:
                merged.pop(p, None)
            else:
                merged[p] = c
        self.snapshot, self.version, self.classes = snap, obj.version, merged
        self.deltas += 1
        return snap, merged


def _decode(data: bytes, formats: tuple[str, ...]) -> tuple["HistorySnapshot | HistoryDelta", dict]:
    """Parse npz ``data`` of one of ``formats``; validates arrays. SnapshotError otherwise."""
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as z:
            meta = json.loads(bytes(z["meta"]).decode())
            fmt = meta.get("format")
            if fmt not in formats:
                raise SnapshotError(f"not a history snapshot (format={fmt!r})")
            expected = FORMAT_VERSION if fmt == FORMAT else DELTA_VERSION
            if meta.get("version") != expected:
                raise SnapshotError(f"unsupported snapshot version {meta.get('version')} (expected {expected})")
            if fmt == FORMAT:
                obj: HistorySnapshot | HistoryDelta = HistorySnapshot._from_npz(z, meta)
                obj.validate()
            else:
                put = HistorySnapshot._from_npz({k[4:]: z[k] for k in z.files if k.startswith("put_")}, meta)
                put.validate()
                obj = HistoryDelta(
                    int(meta["next_step"]), tuple(meta["gone_problems"]),
                    tuple((str(p), int(s)) for p, s in meta["gone_buckets"]), put, tuple(meta["order_tail"]),
                    dict(meta["classes"]), meta.get("base"), meta.get("history_version"),
                )
    except SnapshotError:
        raise
    except Exception as exc:  # zip/npz/json corruption of any kind
        raise SnapshotError(f"corrupt history snapshot: {exc}") from exc
    return obj, meta
