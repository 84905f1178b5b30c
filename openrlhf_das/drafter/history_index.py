"""Per-problem rollout history: one suffix tree per problem id plus one global tree.

Invariants
----------
* A problem's tree holds the responses it produced in the last ``window`` *steps in which the
  problem appeared* (W counts appearances, not wall-clock steps). When a step beyond the window
  arrives, the oldest step's sequences are removed from the trees (``SuffixTree.remove``).
* The global tree holds the same history sequences as all problem trees (same seq ids), so it
  is bounded by the same cap; live sibling sequences go to problem trees only, unless
  ``extend_live(..., to_global=True)`` put them in the global tree as well (the request's own
  text shared with every tree, as arctic's ``SuffixDecodingCache`` does).
* ``tokens`` (history + live) never exceeds ``max_tokens`` after an insertion returns: least
  recently used problems are evicted first, then the oldest steps of the problem being filled.
* Sequence ids are unique int32 values across all trees of one index.

Memory: the native tree costs roughly ``BYTES_PER_TOKEN`` per indexed token and per tree
(measured by ``benchmarks/history_memory.py`` with ``SuffixTree.estimate_memory``).
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Iterable

import numpy as np

from .suffix_tree import as_tokens, new_tree

BYTES_PER_TOKEN = 400
"""Native bytes per indexed token per tree at depth 64: 398 by ``estimate_memory()`` and 382 by
RSS growth in ``benchmarks/history_memory.py`` (2026-11-25, 10^7 tokens streamed, 2e6 cap)."""


@dataclass
class _Step:
    step: int
    seq_ids: list[int] = field(default_factory=list)
    digest: bytes | None = None
    """Content digest of the finished responses when the bucket came whole from a snapshot
    (``HistorySnapshot.update_index``); None once anything else touched it."""


@dataclass
class _Problem:
    tree: Any
    steps: list[_Step] = field(default_factory=list)  # ascending by step
    live: dict[str, int] = field(default_factory=dict)  # live key -> seq id


@dataclass(frozen=True)
class HistoryStats:
    """Size of an index. ``estimated_bytes`` uses ``BYTES_PER_TOKEN``."""

    problems: int
    sequences: int
    tokens: int
    live_sequences: int
    evicted_problems: int
    estimated_bytes: int

    def as_dict(self) -> dict[str, int]:
        return dict(self.__dict__)


class HistoryIndex:
    """Windowed per-problem suffix trees (+ optional global tree) with a global token cap."""

    def __init__(
        self,
        max_depth: int = 64,
        window: int = 5,
        max_tokens: int = 200_000_000,
        global_tree: bool = True,
    ) -> None:
        if window < 1:
            raise ValueError("window must be >= 1")
        if max_tokens < 1:
            raise ValueError("max_tokens must be >= 1")
        self.max_depth = max_depth
        self.window = window
        self.max_tokens = max_tokens
        self._problems: OrderedDict[str, _Problem] = OrderedDict()  # LRU order, oldest first
        self._global = new_tree(max_depth) if global_tree else None
        self._seq_len: dict[int, int] = {}  # seq id -> tokens (history and live)
        self._seq_owner: dict[int, str] = {}
        self._live_ids: set[int] = set()
        self._live_global: set[int] = set()  # live seq ids also indexed in the global tree
        self._next_seq_id = 0
        self._tokens = 0
        self._evicted = 0

    # ------------------------------------------------------------------ queries
    @property
    def global_tree(self) -> Any | None:
        return self._global

    def problem_tree(self, problem_id: str) -> Any | None:
        """The problem's tree, or None when the problem has no history; marks it recently used."""
        prob = self._problems.get(problem_id)
        if prob is None:
            return None
        self._problems.move_to_end(problem_id)
        return prob.tree

    def __contains__(self, problem_id: str) -> bool:
        return problem_id in self._problems

    def problem_ids(self) -> list[str]:
        return list(self._problems)

    def steps_of(self, problem_id: str) -> list[int]:
        """Steps (ascending) whose responses the problem's tree currently holds."""
        prob = self._problems.get(problem_id)
        return [s.step for s in prob.steps] if prob else []

    def response_lengths(self, problem_id: str) -> list[int]:
        """Lengths (tokens) of the problem's finished responses inside the window."""
        prob = self._problems.get(problem_id)
        if prob is None:
            return []
        return [self._seq_len[i] for s in prob.steps for i in s.seq_ids if i not in self._live_ids]

    @property
    def tokens(self) -> int:
        return self._tokens

    def stats(self) -> HistoryStats:
        trees = 2 if self._global is not None else 1
        return HistoryStats(
            problems=len(self._problems),
            sequences=len(self._seq_len) - len(self._live_ids),
            tokens=self._tokens,
            live_sequences=len(self._live_ids),
            evicted_problems=self._evicted,
            estimated_bytes=self._tokens * BYTES_PER_TOKEN * trees,
        )

    # ------------------------------------------------------------------ updates
    def add_rollout(self, problem_id: str, step: int, tokens: Iterable[int] | np.ndarray) -> int:
        """Index one finished response of ``problem_id`` produced at ``step``; returns its seq id.

        A step older than the problem's window is ignored (returns -1).
        """
        arr = as_tokens(tokens)
        prob = self._problem(problem_id)
        bucket = self._step_bucket(problem_id, prob, step)
        if bucket is None:
            return -1
        seq_id = self._new_seq(problem_id, arr.size)
        bucket.seq_ids.append(seq_id)
        bucket.digest = None
        if arr.size:
            prob.tree.extend_ndarray(seq_id, arr)
            if self._global is not None:
                self._global.extend_ndarray(seq_id, arr)
        self._enforce_cap(keep=problem_id)
        return seq_id

    def extend_live(self, problem_id: str, key: str, step: int, tokens: np.ndarray, to_global: bool = False) -> None:
        """Append ``tokens`` to the in-flight response ``key`` of ``problem_id`` (sibling drafting).

        Live responses count as responses of ``step`` for the window; they are indexed in the
        problem tree, and with ``to_global`` (fixed by the first call for ``key``) in the global
        tree too. Call with each newly generated chunk.
        """
        arr = as_tokens(tokens)
        prob = self._problem(problem_id)
        seq_id = prob.live.get(key)
        if seq_id is None:
            bucket = self._step_bucket(problem_id, prob, step)
            if bucket is None:
                return
            seq_id = self._new_seq(problem_id, 0)
            bucket.seq_ids.append(seq_id)
            bucket.digest = None
            prob.live[key] = seq_id
            self._live_ids.add(seq_id)
            if to_global and self._global is not None:
                self._live_global.add(seq_id)
        if arr.size:
            prob.tree.extend_ndarray(seq_id, arr)
            if seq_id in self._live_global:
                self._global.extend_ndarray(seq_id, arr)
            self._seq_len[seq_id] += arr.size
            self._tokens += arr.size
            self._enforce_cap(keep=problem_id)

    def finish_live(self, problem_id: str, key: str, keep: bool = True) -> None:
        """End a live response: kept as a finished sibling (``keep``) or removed."""
        prob = self._problems.get(problem_id)
        if prob is None or key not in prob.live:
            return
        seq_id = prob.live.pop(key)
        self._live_ids.discard(seq_id)
        self._live_global.discard(seq_id)
        if not keep:
            self.remove(seq_id)

    def remove(self, seq_id: int) -> None:
        """Remove one sequence from every tree that holds it (no-op for unknown ids)."""
        owner = self._seq_owner.pop(seq_id, None)
        if owner is None:
            return
        length = self._seq_len.pop(seq_id)
        self._tokens -= length
        in_global = seq_id not in self._live_ids or seq_id in self._live_global
        self._live_ids.discard(seq_id)
        self._live_global.discard(seq_id)
        prob = self._problems[owner]
        prob.tree.remove(seq_id)
        if self._global is not None and in_global:
            self._global.remove(seq_id)
        for s in prob.steps:
            if seq_id in s.seq_ids:
                s.seq_ids.remove(seq_id)
        prob.live = {k: v for k, v in prob.live.items() if v != seq_id}

    def evict_problem(self, problem_id: str) -> None:
        if self.discard_problem(problem_id):
            self._evicted += 1

    def discard_problem(self, problem_id: str) -> bool:
        """Remove a problem and all its sequences (not counted as an eviction); False if absent."""
        prob = self._problems.get(problem_id)
        if prob is None:
            return False
        for s in list(prob.steps):
            for seq_id in list(s.seq_ids):
                self.remove(seq_id)
        del self._problems[problem_id]
        return True

    def drop_live(self) -> None:
        """Remove every in-flight sequence. (Finished siblings kept by ``finish_live`` sit in a
        bucket whose digest is None, which ``HistorySnapshot.update_index`` rebuilds.)"""
        for problem_id, prob in list(self._problems.items()):
            for key in list(prob.live):
                self.finish_live(problem_id, key, keep=False)

    def buckets(self, problem_id: str) -> list[tuple[int, bytes | None]]:
        """``(step, digest)`` of the problem's step buckets, ascending by step."""
        prob = self._problems.get(problem_id)
        return [(b.step, b.digest) for b in prob.steps] if prob else []

    def drop_step(self, problem_id: str, step: int) -> None:
        """Remove the problem's responses of ``step`` (no-op when it holds none)."""
        prob = self._problems.get(problem_id)
        bucket = next((b for b in prob.steps if b.step == step), None) if prob else None
        if bucket is not None:
            self._drop_step(prob, bucket)

    def set_digest(self, problem_id: str, step: int, digest: bytes) -> None:
        """Mark the problem's bucket of ``step`` as holding exactly the content of ``digest``."""
        prob = self._problems.get(problem_id)
        for b in prob.steps if prob else []:
            if b.step == step:
                b.digest = digest

    # ------------------------------------------------------------------ internals
    def _problem(self, problem_id: str) -> _Problem:
        prob = self._problems.get(problem_id)
        if prob is None:
            prob = _Problem(tree=new_tree(self.max_depth))
            self._problems[problem_id] = prob
        else:
            self._problems.move_to_end(problem_id)
        return prob

    def _step_bucket(self, problem_id: str, prob: _Problem, step: int) -> _Step | None:
        for s in prob.steps:
            if s.step == step:
                return s
        if len(prob.steps) >= self.window and step < prob.steps[0].step:
            return None
        bucket = _Step(step)
        prob.steps.append(bucket)
        prob.steps.sort(key=lambda s: s.step)
        while len(prob.steps) > self.window:
            self._drop_step(prob, prob.steps[0])
        return bucket

    def _drop_step(self, prob: _Problem, bucket: _Step) -> None:
        for seq_id in list(bucket.seq_ids):
            self.remove(seq_id)
        prob.steps.remove(bucket)

    def _new_seq(self, problem_id: str, length: int) -> int:
        seq_id = self._next_seq_id
        self._next_seq_id = (self._next_seq_id + 1) % (2**31 - 1)
        self._seq_len[seq_id] = length
        self._seq_owner[seq_id] = problem_id
        self._tokens += length
        return seq_id

    def _enforce_cap(self, keep: str) -> None:
        while self._tokens > self.max_tokens:
            victim = next((pid for pid in self._problems if pid != keep), None)
            if victim is not None:
                self.evict_problem(victim)
                continue
            prob = self._problems[keep]
            if len(prob.steps) > 1:
                self._drop_step(prob, prob.steps[0])
            else:  # a single step of a single problem exceeds the cap: drop it whole
                self.evict_problem(keep)
                return
