"""Per-problem rollout history: one suffix tree per problem id plus one global tree.

Invariants
----------
* A problem's tree holds the responses it produced in the last ``window`` *steps in which the
  problem appeared* (W counts appearances, not wall-clock steps). When a step beyond the window
  arrives, the oldest step's sequences are removed from the trees (``SuffixTree.remove``).
  Window, token cap and LRU order are kept by :class:`~.window.WindowedBuckets` (items: sequence
  ids), the store the history actor uses too.
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

from typing import Any, Iterable

import numpy as np

from .suffix_tree import as_tokens, new_tree
from .window import HistoryStats, WindowedBuckets, WindowedHistory

BYTES_PER_TOKEN = 400
"""Native bytes per indexed token per tree at depth 64: 398 by ``estimate_memory()`` and 382 by
RSS growth in ``benchmarks/history_memory.py`` (2026-11-25, 10^7 tokens streamed, 2e6 cap)."""


class HistoryIndex(WindowedHistory):
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
        self._seq_len: dict[int, int] = {}  # seq id -> tokens (history and live)
        self._w: WindowedBuckets[int] = WindowedBuckets(
            window, max_tokens, self._seq_len.__getitem__, self._forget_seq, self._forget_problem
        )
        self._trees: dict[str, Any] = {}
        self._live: dict[str, dict[str, int]] = {}  # problem -> live key -> seq id
        self._global = new_tree(max_depth) if global_tree else None
        self._seq_owner: dict[int, str] = {}
        self._live_ids: set[int] = set()
        self._live_global: set[int] = set()  # live seq ids also indexed in the global tree
        self._next_seq_id = 0

    # ------------------------------------------------------------------ queries
    @property
    def global_tree(self) -> Any | None:
        return self._global

    def problem_tree(self, problem_id: str) -> Any | None:
        """The problem's tree, or None when the problem has no history; marks it recently used."""
        if problem_id not in self._w:
            return None
        self._w.touch(problem_id)
        return self._trees[problem_id]

    def response_lengths(self, problem_id: str) -> list[int]:
        """Lengths (tokens) of the problem's finished responses inside the window."""
        return [self._seq_len[i] for i in self._w.items_of(problem_id) if i not in self._live_ids]

    def stats(self) -> HistoryStats:
        """Problems, finished rollouts, tokens (history + live), live sequences, evictions, and
        ``estimated_bytes`` of the trees (``BYTES_PER_TOKEN`` per token per tree)."""
        trees = 2 if self._global is not None else 1
        return self._w.stats(live_sequences=len(self._live_ids),
                             estimated_bytes=self._w.tokens * BYTES_PER_TOKEN * trees)

    # ------------------------------------------------------------------ updates
    def add_rollout(self, problem_id: str, step: int, tokens: Iterable[int] | np.ndarray) -> int:
        """Index one finished response of ``problem_id`` produced at ``step``; returns its seq id.

        A step older than the problem's window is ignored (returns -1).
        """
        arr = as_tokens(tokens)
        tree = self._problem(problem_id)
        if self._w.bucket(problem_id, step) is None:
            return -1
        seq_id = self._new_seq(problem_id, arr.size)
        if arr.size:
            tree.extend_ndarray(seq_id, arr)
            if self._global is not None:
                self._global.extend_ndarray(seq_id, arr)
        self._w.add(problem_id, step, seq_id)  # counts its tokens, enforces the cap
        return seq_id

    def extend_live(self, problem_id: str, key: str, step: int, tokens: np.ndarray, to_global: bool = False) -> None:
        """Append ``tokens`` to the in-flight response ``key`` of ``problem_id`` (sibling drafting).

        Live responses count as responses of ``step`` for the window; they are indexed in the
        problem tree, and with ``to_global`` (fixed by the first call for ``key``) in the global
        tree too. Call with each newly generated chunk.
        """
        arr = as_tokens(tokens)
        tree = self._problem(problem_id)
        live = self._live.setdefault(problem_id, {})
        seq_id = live.get(key)
        if seq_id is None:
            if self._w.bucket(problem_id, step) is None:
                return
            seq_id = self._new_seq(problem_id, 0)
            self._w.add(problem_id, step, seq_id)
            live[key] = seq_id
            self._live_ids.add(seq_id)
            if to_global and self._global is not None:
                self._live_global.add(seq_id)
        if arr.size:
            tree.extend_ndarray(seq_id, arr)
            if seq_id in self._live_global:
                self._global.extend_ndarray(seq_id, arr)
            self._seq_len[seq_id] += arr.size
            self._w.grow(problem_id, arr.size)

    def finish_live(self, problem_id: str, key: str, keep: bool = True) -> None:
        """End a live response: kept as a finished sibling (``keep``) or removed."""
        live = self._live.get(problem_id)
        if live is None or key not in live:
            return
        seq_id = live[key]
        if not keep:
            self.remove(seq_id)  # also forgets the live key
            return
        del live[key]
        self._live_ids.discard(seq_id)
        self._live_global.discard(seq_id)

    def remove(self, seq_id: int) -> None:
        """Remove one sequence from every tree that holds it (no-op for unknown ids)."""
        owner = self._seq_owner.get(seq_id)
        if owner is not None:
            self._w.remove(owner, seq_id)

    def evict_problem(self, problem_id: str) -> None:
        self._w.evict(problem_id)

    def discard_problem(self, problem_id: str) -> bool:
        """Remove a problem and all its sequences (not counted as an eviction); False if absent."""
        return self._w.discard(problem_id)

    def drop_live(self) -> None:
        """Remove every in-flight sequence. (Finished siblings kept by ``finish_live`` sit in a
        bucket whose digest is None, which ``HistorySnapshot.update_index`` rebuilds.)"""
        for problem_id, live in list(self._live.items()):
            for key in list(live):
                self.finish_live(problem_id, key, keep=False)

    def buckets(self, problem_id: str) -> list[tuple[int, bytes | None]]:
        """``(step, digest)`` of the problem's step buckets, ascending by step."""
        return [(b.step, b.digest) for b in self._w.buckets(problem_id)]

    def drop_step(self, problem_id: str, step: int) -> None:
        """Remove the problem's responses of ``step`` (no-op when it holds none)."""
        self._w.drop_step(problem_id, step)

    def set_digest(self, problem_id: str, step: int, digest: bytes) -> None:
        """Mark the problem's bucket of ``step`` as holding exactly the content of ``digest``."""
        for b in self._w.buckets(problem_id):
            if b.step == step:
                b.digest = digest

    # ------------------------------------------------------------------ internals
    def _problem(self, problem_id: str) -> Any:
        """The problem's tree (created with the problem); marks the problem recently used."""
        self._w.touch(problem_id)
        tree = self._trees.get(problem_id)
        if tree is None:
            tree = self._trees[problem_id] = new_tree(self.max_depth)
        return tree

    def _new_seq(self, problem_id: str, length: int) -> int:
        seq_id = self._next_seq_id
        self._next_seq_id = (self._next_seq_id + 1) % (2**31 - 1)
        self._seq_len[seq_id] = length
        self._seq_owner[seq_id] = problem_id
        return seq_id

    def _forget_seq(self, problem_id: str, seq_id: int) -> None:
        """The store dropped ``seq_id``: take it out of the trees (its tokens are uncounted)."""
        del self._seq_len[seq_id]
        del self._seq_owner[seq_id]
        in_global = seq_id not in self._live_ids or seq_id in self._live_global
        self._live_ids.discard(seq_id)
        self._live_global.discard(seq_id)
        self._trees[problem_id].remove(seq_id)
        if self._global is not None and in_global:
            self._global.remove(seq_id)
        live = self._live.get(problem_id)
        if live:
            for key in [k for k, v in live.items() if v == seq_id]:
                del live[key]

    def _forget_problem(self, problem_id: str) -> None:
        self._trees.pop(problem_id, None)
        self._live.pop(problem_id, None)
