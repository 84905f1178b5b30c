"""``WindowedBuckets``: the one windowed per-problem history store.

Both holders of rollout history keep their items in it: the engines' :class:`HistoryIndex`
(items are suffix-tree sequence ids; removing one also removes it from the trees) and the history
actor's :class:`~openrlhf_das.ray.history_store.HistoryStore` (items are int32 token arrays). So
an engine's index built from the actor's snapshot holds exactly what the actor holds.

Invariants
----------
* A problem keeps the items of the last ``window`` *steps in which it appeared* (W counts
  appearances, not wall-clock steps): a new step beyond the window drops the oldest step's
  bucket; an item of a step older than all of a full window is refused.
* ``tokens`` never exceeds ``max_tokens`` after :meth:`enforce_cap`: least recently updated
  problems are evicted first, then the oldest steps of the problem being filled; a single step
  larger than the cap evicts its problem.
* Problems are kept in least-recently-updated order (:meth:`touch`, :meth:`bucket`).
* Every change of a bucket's content gives it a new ``rev`` (unique in the store), so a reader
  that remembers ``(step, rev)`` pairs can tell which buckets changed since (history deltas).
"""

from __future__ import annotations

import itertools
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Callable, Generic, Iterable, Iterator, TypeVar

T = TypeVar("T")


@dataclass(frozen=True)
class HistoryStats:
    """Size of a windowed history: the engines' index (``estimated_bytes``: native suffix-tree
    bytes, ``live_sequences``: in-flight sibling texts) or the actor's store (``token_bytes``:
    its int32 payload, 4 B per token). Fields a holder does not have are 0."""

    problems: int
    rollouts: int
    """Finished responses held."""
    tokens: int
    evicted_problems: int
    dropped_rollouts: int
    live_sequences: int = 0
    token_bytes: int = 0
    estimated_bytes: int = 0

    def as_dict(self) -> dict[str, int]:
        return dict(self.__dict__)


@dataclass
class Bucket(Generic[T]):
    """The items one problem produced at one step."""

    step: int
    items: list[T] = field(default_factory=list)
    rev: int = 0
    digest: bytes | None = None
    """Content digest when the bucket came whole from a snapshot (``HistorySnapshot``); None
    once anything else touched it (set and read by :class:`HistoryIndex`)."""


class WindowedBuckets(Generic[T]):
    """Per-problem step buckets of items, windowed by appearances, with a token cap and LRU order.

    ``size_of(item)`` is an item's current token count; ``on_remove(problem_id, item)`` runs for
    every item the store drops (window, cap, explicit removal), after its size was subtracted;
    ``on_discard(problem_id)`` for every problem removed. The owner reports growth of an item
    already stored with :meth:`grow`.
    """

    def __init__(self, window: int, max_tokens: int, size_of: Callable[[T], int],
                 on_remove: Callable[[str, T], None] | None = None,
                 on_discard: Callable[[str], None] | None = None) -> None:
        if window < 1:
            raise ValueError(f"window must be >= 1, got {window}")
        if max_tokens < 1:
            raise ValueError(f"max_tokens must be >= 1, got {max_tokens}")
        self.window = window
        self.max_tokens = max_tokens
        self._size_of = size_of
        self._on_remove = on_remove
        self._on_discard = on_discard
        self._problems: OrderedDict[str, list[Bucket[T]]] = OrderedDict()  # buckets ascending by step
        self._revs = itertools.count(1)
        self.tokens = 0
        self.items = 0
        self.evicted = 0
        """Problems evicted by the token cap."""
        self.dropped = 0
        """Items refused because their step was older than a full window."""

    # ------------------------------------------------------------------ queries
    def __contains__(self, problem_id: str) -> bool:
        return problem_id in self._problems

    def __len__(self) -> int:
        return len(self._problems)

    def problem_ids(self) -> list[str]:
        """Problems, least recently updated first."""
        return list(self._problems)

    def buckets(self, problem_id: str) -> list[Bucket[T]]:
        """The problem's buckets, ascending by step (the live list: do not modify)."""
        return self._problems.get(problem_id, [])

    def steps_of(self, problem_id: str) -> list[int]:
        return [b.step for b in self._problems.get(problem_id, ())]

    def stats(self, live_sequences: int = 0, token_bytes: int = 0, estimated_bytes: int = 0) -> HistoryStats:
        """Counts; ``live_sequences`` of the items are in-flight texts, not finished rollouts."""
        return HistoryStats(len(self._problems), self.items - live_sequences, self.tokens, self.evicted,
                            self.dropped, live_sequences, token_bytes, estimated_bytes)

    def items_of(self, problem_id: str) -> Iterator[T]:
        for b in self._problems.get(problem_id, ()):
            yield from b.items

    # ------------------------------------------------------------------ updates
    def touch(self, problem_id: str) -> None:
        """Create the problem if new, else mark it most recently used."""
        if problem_id in self._problems:
            self._problems.move_to_end(problem_id)
        else:
            self._problems[problem_id] = []

    def bucket(self, problem_id: str, step: int) -> Bucket[T] | None:
        """The problem's bucket of ``step`` (created inside the window, dropping the oldest step
        beyond it); None when ``step`` is older than all of a full window. Touches the problem."""
        self.touch(problem_id)
        steps = self._problems[problem_id]
        for b in steps:
            if b.step == step:
                return b
        if len(steps) >= self.window and step < steps[0].step:
            return None
        b = Bucket(step, rev=next(self._revs))
        steps.append(b)
        steps.sort(key=lambda s: s.step)
        while len(steps) > self.window:
            self._drop_bucket(problem_id, steps, steps[0])
        return b

    def add(self, problem_id: str, step: int, item: T) -> Bucket[T] | None:
        """File ``item`` under (problem, step) and enforce the cap (the problem itself is evicted
        last); None (counted in ``dropped``) when the step fell out of the window."""
        b = self.bucket(problem_id, step)
        if b is None:
            self.dropped += 1
            return None
        b.items.append(item)
        b.rev = next(self._revs)
        b.digest = None
        self.items += 1
        self.tokens += self._size_of(item)
        self.enforce_cap(problem_id)
        return b

    def grow(self, problem_id: str, tokens: int) -> None:
        """An item of ``problem_id`` grew by ``tokens`` (already applied to its size)."""
        self.tokens += tokens
        self.enforce_cap(problem_id)

    def remove(self, problem_id: str, item: T) -> bool:
        """Remove one item (compared by equality); False when the problem does not hold it."""
        for b in self._problems.get(problem_id, ()):
            for j, x in enumerate(b.items):
                if x == item:
                    del b.items[j]
                    b.rev = next(self._revs)
                    b.digest = None
                    self._forget(problem_id, x)
                    return True
        return False

    def drop_step(self, problem_id: str, step: int) -> bool:
        """Remove the problem's bucket of ``step``; False when it has none."""
        steps = self._problems.get(problem_id)
        b = next((s for s in steps if s.step == step), None) if steps else None
        if b is None:
            return False
        self._drop_bucket(problem_id, steps, b)
        return True

    def discard(self, problem_id: str) -> bool:
        """Remove a problem and all its items (not counted as an eviction); False if absent."""
        steps = self._problems.get(problem_id)
        if steps is None:
            return False
        while steps:
            self._drop_bucket(problem_id, steps, steps[0])
        del self._problems[problem_id]
        if self._on_discard is not None:
            self._on_discard(problem_id)
        return True

    def evict(self, problem_id: str) -> None:
        if self.discard(problem_id):
            self.evicted += 1

    def set_max_tokens(self, max_tokens: int) -> None:
        """Change the cap (evicting at once if it shrank)."""
        if max_tokens < 1:
            raise ValueError(f"max_tokens must be >= 1, got {max_tokens}")
        self.max_tokens = max_tokens
        self.enforce_cap(None)

    def enforce_cap(self, keep: str | None) -> None:
        """Evict least recently used problems (``keep`` last) until ``tokens <= max_tokens``."""
        while self.tokens > self.max_tokens:
            victim = next((p for p in self._problems if p != keep), None)
            if victim is not None:
                self.evict(victim)
                continue
            steps = self._problems[keep]  # type: ignore[index]
            if len(steps) > 1:
                self._drop_bucket(keep, steps, steps[0])  # type: ignore[arg-type]
            else:  # one step of one problem exceeds the cap: drop it whole
                self.evict(keep)  # type: ignore[arg-type]
                return

    # ------------------------------------------------------------------ internals
    def _drop_bucket(self, problem_id: str, steps: list[Bucket[T]], b: Bucket[T]) -> None:
        steps.remove(b)
        for item in b.items:
            self._forget(problem_id, item)
        b.items = []

    def _forget(self, problem_id: str, item: T) -> None:
        self.tokens -= self._size_of(item)
        self.items -= 1
        if self._on_remove is not None:
            self._on_remove(problem_id, item)


class WindowedHistory:
    """Queries shared by the holders of a :class:`WindowedBuckets` (``self._w``): the engines'
    ``HistoryIndex`` and the actor's ``HistoryStore``."""

    _w: WindowedBuckets

    @property
    def window(self) -> int:
        return self._w.window

    @property
    def max_tokens(self) -> int:
        return self._w.max_tokens

    @property
    def tokens(self) -> int:
        """Tokens held (in-flight texts included)."""
        return self._w.tokens

    def __contains__(self, problem_id: str) -> bool:
        return problem_id in self._w

    def problem_ids(self) -> list[str]:
        """Problems, least recently updated first."""
        return self._w.problem_ids()

    def steps_of(self, problem_id: str) -> list[int]:
        """Steps (ascending) the problem holds responses of."""
        return self._w.steps_of(problem_id)

    def past_lengths(self, problem_ids: Iterable[str]) -> dict[str, list[int]]:
        """``response_lengths`` of each known problem of ``problem_ids``."""
        return {p: self.response_lengths(p) for p in problem_ids if p in self._w}

    def response_lengths(self, problem_id: str) -> list[int]:  # pragma: no cover - overridden
        raise NotImplementedError
