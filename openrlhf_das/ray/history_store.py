"""``HistoryStore``: the history actor's windowed per-problem token store.

The actor never drafts, so it keeps plain int32 token arrays (4 bytes per token, plus ~100 B
per response) instead of suffix trees (~180 B per token per tree), and builds
:class:`~openrlhf_das.drafter.HistorySnapshot`\\ s and per-step
:class:`~openrlhf_das.drafter.HistoryDelta`\\ s from them for the engines.

The window, cap and LRU rules are those of :class:`~openrlhf_das.drafter.window.WindowedBuckets`,
the one implementation the engines' :class:`~openrlhf_das.drafter.HistoryIndex` uses too, so an
engine's index built from a snapshot holds exactly what the store holds for its problems.
Problems are kept in least-recently-updated order; snapshots list them in that order, so a store
rebuilt from its snapshot (:meth:`from_snapshot`) has the same order and content.
"""

from __future__ import annotations

from typing import AbstractSet, Iterable

import numpy as np

from ..drafter import HistoryDelta, HistorySnapshot, Rollout
from ..drafter.suffix_tree import as_tokens
from ..drafter.window import HistoryStats, WindowedBuckets, WindowedHistory

BucketState = dict[str, list[tuple[int, int]]]
"""``{problem_id: [(step, rev), ...]}`` in LRU order: what an engine was last sent."""


class HistoryStore(WindowedHistory):
    """Per-problem windowed response tokens with a global token cap."""

    def __init__(self, window: int, max_tokens: int) -> None:
        if window < 1 or max_tokens < 1:
            raise ValueError(f"window and max_tokens must be >= 1, got {window=}, {max_tokens=}")
        self._w: WindowedBuckets[np.ndarray] = WindowedBuckets(window, max_tokens, _size)

    # ------------------------------------------------------------------ queries
    def response_lengths(self, problem_id: str) -> list[int]:
        """Lengths (tokens) of the problem's responses inside its window."""
        return [int(r.size) for r in self._w.items_of(problem_id)]

    def stats(self) -> HistoryStats:
        """Problems, rollouts, tokens, ``token_bytes`` (4 × tokens), evictions, dropped rollouts."""
        return self._w.stats(token_bytes=4 * self._w.tokens)

    # ------------------------------------------------------------------ updates
    def add(self, problem_id: str, step: int, tokens: Iterable[int] | np.ndarray) -> bool:
        """File one response of ``problem_id`` under ``step``; False if it fell out of the window.

        The tokens are copied: arrays that arrived through Ray may be zero-copy views of a whole
        object-store buffer, which the store must not keep alive."""
        return self._w.add(problem_id, step, np.array(as_tokens(tokens), copy=True)) is not None

    def set_max_tokens(self, max_tokens: int) -> None:
        """Change the cap (evicting at once if it shrank)."""
        self._w.set_max_tokens(max_tokens)

    # ------------------------------------------------------------------ snapshots and deltas
    def snapshot(self, next_step: int, problems: AbstractSet[str] | None = None) -> HistorySnapshot:
        """The history of ``problems`` (all when None) as a snapshot, problems in LRU order."""
        return HistorySnapshot.from_rollouts(
            [Rollout(p, b.step, r) for p in self._pids(problems) for b in self._w.buckets(p) for r in b.items], next_step
        )

    def bucket_state(self, problems: AbstractSet[str] | None = None) -> BucketState:
        """``(step, rev)`` of every bucket of ``problems`` (all when None), problems in LRU order."""
        return {p: [(b.step, b.rev) for b in self._w.buckets(p)] for p in self._pids(problems)}

    def delta(self, base: BucketState, next_step: int, problems: AbstractSet[str] | None = None,
              classes: dict[str, str | None] | None = None) -> tuple[HistoryDelta, BucketState]:
        """What turns the snapshot an engine built from ``base`` (a former :meth:`bucket_state`)
        into ``snapshot(next_step, problems)``: the buckets that are new or changed (whole),
        those that are gone, and the tail of the new problem order. Returns the delta and the new
        state. Its cost is that of the changed buckets (plus O(buckets) bookkeeping)."""
        now = self.bucket_state(problems)
        gone_problems = [p for p in base if p not in now]
        gone_buckets: list[tuple[str, int]] = []
        put: list[Rollout] = []
        for p, buckets in now.items():
            old = dict(base.get(p, ()))
            steps = {s for s, _ in buckets}
            gone_buckets += [(p, s) for s in old if s not in steps]
            for b in self._w.buckets(p):
                if old.get(b.step) != b.rev:
                    put += [Rollout(p, b.step, r) for r in b.items]
        kept_old = [p for p in base if p in now]
        new_order = list(now)
        same = 0
        while same < len(kept_old) and kept_old[same] == new_order[same]:
            same += 1
        delta = HistoryDelta(
            next_step=int(next_step),
            gone_problems=tuple(gone_problems),
            gone_buckets=tuple(gone_buckets),
            put=HistorySnapshot.from_rollouts(put, next_step),
            order_tail=tuple(new_order[same:]),
            classes=dict(classes or {}),
        )
        return delta, now

    @classmethod
    def from_snapshot(cls, snapshot: HistorySnapshot, window: int, max_tokens: int) -> "HistoryStore":
        """A store holding ``snapshot`` (inserted in snapshot order: LRU order is kept)."""
        store = cls(window, max_tokens)
        for r in snapshot.rollouts():
            store.add(r.problem_id, r.step, r.tokens)
        return store

    def _pids(self, problems: AbstractSet[str] | None) -> list[str]:
        pids = self._w.problem_ids()
        return pids if problems is None else [p for p in pids if p in problems]


def _size(tokens: np.ndarray) -> int:
    return int(tokens.size)
