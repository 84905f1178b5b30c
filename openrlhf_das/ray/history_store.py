"""``HistoryStore``: the history actor's windowed per-problem token store.

The actor never drafts, so it keeps plain int32 token arrays (4 bytes per token, plus ~100 B
per response) instead of suffix trees (~180 B per token per tree), and builds
:class:`~openrlhf_das.drafter.HistorySnapshot`\\ s from them for the engines.

Invariants (the same as :class:`~openrlhf_das.drafter.HistoryIndex`, so an engine's index built
from a snapshot holds exactly what the store holds for its problems):

* A problem keeps the responses of the last ``window`` steps *in which it appeared* (W counts
  appearances, not wall-clock steps). A response of a step older than all of a full window is
  dropped (counted in ``dropped_rollouts``).
* ``tokens`` never exceeds ``max_tokens`` after :meth:`add` returns: least recently updated
  problems are evicted first, then the oldest steps of the problem being filled; a single step
  larger than the cap evicts its problem.
* Problems are kept in least-recently-updated order; snapshots list them in that order, so a
  store rebuilt from its snapshot (:meth:`from_snapshot`) has the same order and content.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from typing import AbstractSet, Iterable

import numpy as np

from ..drafter import HistorySnapshot, Rollout
from ..drafter.suffix_tree import as_tokens


@dataclass
class _Step:
    step: int
    responses: list[np.ndarray] = field(default_factory=list)


@dataclass(frozen=True)
class StoreStats:
    """Size of a store. ``token_bytes`` = 4 × ``tokens`` (the int32 payload)."""

    problems: int
    rollouts: int
    tokens: int
    token_bytes: int
    evicted_problems: int
    dropped_rollouts: int

    def as_dict(self) -> dict[str, int]:
        return dict(self.__dict__)


class HistoryStore:
    """Per-problem windowed response tokens with a global token cap."""

    def __init__(self, window: int, max_tokens: int) -> None:
        if window < 1 or max_tokens < 1:
            raise ValueError(f"window and max_tokens must be >= 1, got {window=}, {max_tokens=}")
        self.window = window
        self.max_tokens = max_tokens
        self._problems: OrderedDict[str, list[_Step]] = OrderedDict()  # steps ascending
        self._tokens = 0
        self._rollouts = 0
        self._evicted = 0
        self._dropped = 0

    # ------------------------------------------------------------------ queries
    @property
    def tokens(self) -> int:
        return self._tokens

    def __contains__(self, problem_id: str) -> bool:
        return problem_id in self._problems

    def problem_ids(self) -> list[str]:
        """Problems, least recently updated first."""
        return list(self._problems)

    def steps_of(self, problem_id: str) -> list[int]:
        return [s.step for s in self._problems.get(problem_id, ())]

    def response_lengths(self, problem_id: str) -> list[int]:
        """Lengths (tokens) of the problem's responses inside its window."""
        return [int(r.size) for s in self._problems.get(problem_id, ()) for r in s.responses]

    def past_lengths(self, problem_ids: Iterable[str]) -> dict[str, list[int]]:
        """``response_lengths`` of each known problem of ``problem_ids``."""
        return {p: self.response_lengths(p) for p in problem_ids if p in self._problems}

    def stats(self) -> StoreStats:
        return StoreStats(len(self._problems), self._rollouts, self._tokens, 4 * self._tokens, self._evicted, self._dropped)

    # ------------------------------------------------------------------ updates
    def add(self, problem_id: str, step: int, tokens: Iterable[int] | np.ndarray) -> bool:
        """File one response of ``problem_id`` under ``step``; False if it fell out of the window.

        The tokens are copied: arrays that arrived through Ray may be zero-copy views of a whole
        object-store buffer, which the store must not keep alive."""
        arr = np.array(as_tokens(tokens), copy=True)
        steps = self._problems.get(problem_id)
        if steps is None:
            steps = self._problems[problem_id] = []
        else:
            self._problems.move_to_end(problem_id)
        bucket = next((s for s in steps if s.step == step), None)
        if bucket is None:
            if len(steps) >= self.window and step < steps[0].step:
                self._dropped += 1
                return False
            bucket = _Step(step)
            steps.append(bucket)
            steps.sort(key=lambda s: s.step)
            while len(steps) > self.window:
                self._drop_oldest(steps)
        bucket.responses.append(arr)
        self._tokens += arr.size
        self._rollouts += 1
        self._enforce_cap(problem_id)
        return True

    def set_max_tokens(self, max_tokens: int) -> None:
        """Change the cap (evicting at once if it shrank)."""
        if max_tokens < 1:
            raise ValueError(f"max_tokens must be >= 1, got {max_tokens}")
        self.max_tokens = max_tokens
        self._enforce_cap(None)

    # ------------------------------------------------------------------ snapshots
    def snapshot(self, next_step: int, problems: AbstractSet[str] | None = None) -> HistorySnapshot:
        """The history of ``problems`` (all when None) as a snapshot, problems in LRU order."""
        pids = self._problems if problems is None else [p for p in self._problems if p in problems]
        return HistorySnapshot.from_rollouts(
            [Rollout(p, s.step, r) for p in pids for s in self._problems[p] for r in s.responses], next_step
        )

    @classmethod
    def from_snapshot(cls, snapshot: HistorySnapshot, window: int, max_tokens: int) -> "HistoryStore":
        """A store holding ``snapshot`` (inserted in snapshot order: LRU order is kept)."""
        store = cls(window, max_tokens)
        for r in snapshot.rollouts():
            store.add(r.problem_id, r.step, r.tokens)
        return store

    # ------------------------------------------------------------------ internals
    def _drop_oldest(self, steps: list[_Step]) -> None:
        old = steps.pop(0)
        self._tokens -= sum(r.size for r in old.responses)
        self._rollouts -= len(old.responses)

    def _evict(self, problem_id: str) -> None:
        steps = self._problems.pop(problem_id)
        while steps:
            self._drop_oldest(steps)
        self._evicted += 1

    def _enforce_cap(self, keep: str | None) -> None:
        while self._tokens > self.max_tokens:
            victim = next((p for p in self._problems if p != keep), None)
            if victim is not None:
                self._evict(victim)
            elif len(self._problems[keep]) > 1:  # type: ignore[index]
                self._drop_oldest(self._problems[keep])  # type: ignore[index]
            else:  # one step of one problem exceeds the cap
                self._evict(keep)  # type: ignore[arg-type]

