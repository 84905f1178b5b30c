"""Acceptance bookkeeping per request, per length class and per response-length bucket.

Counting convention (vLLM's): after a verify step of a request that had ``d > 0`` draft
tokens, ``accepted = len(sampled_token_ids) - 1`` (0..d). Per group we keep

* ``drafted``  – draft tokens proposed,
* ``accepted`` – draft tokens accepted,
* ``verify_steps`` – decode steps that verified a non-empty draft,
* ``decode_steps`` – decode steps of requests that were considered for drafting (budget > 0,
  step not gated), with or without a resulting draft. Requests with no budget are not
  tracked at all: that is what keeps them free.

Derived: ``acceptance_rate = accepted / drafted``; ``accepted_per_step = accepted /
verify_steps``; tokens per verify step = accepted_per_step + 1.
A request's bucket is that of its response length when the draft was proposed.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field
from typing import Any, Sequence

from ..config import LengthClass


@dataclass
class Counts:
    drafted: int = 0
    accepted: int = 0
    verify_steps: int = 0
    decode_steps: int = 0

    def add(self, other: "Counts") -> None:
        self.drafted += other.drafted
        self.accepted += other.accepted
        self.verify_steps += other.verify_steps
        self.decode_steps += other.decode_steps

    @property
    def acceptance_rate(self) -> float:
        return self.accepted / self.drafted if self.drafted else 0.0

    @property
    def accepted_per_step(self) -> float:
        return self.accepted / self.verify_steps if self.verify_steps else 0.0

    def as_dict(self) -> dict[str, float]:
        return {
            "drafted": self.drafted,
            "accepted": self.accepted,
            "verify_steps": self.verify_steps,
            "decode_steps": self.decode_steps,
            "acceptance_rate": self.acceptance_rate,
            "accepted_per_step": self.accepted_per_step,
        }


def bucket_labels(edges: Sequence[int]) -> list[str]:
    """Labels like ``0-1k``, ``1k-2k``, ..., ``8k+`` for upper ``edges``."""

    def fmt(x: int) -> str:
        return f"{x // 1000}k" if x % 1000 == 0 and x else str(x)

    lows = [0, *edges]
    labels = [f"{fmt(lo)}-{fmt(hi)}" for lo, hi in zip(lows, edges)]
    labels.append(f"{fmt(edges[-1])}+")
    return labels


@dataclass
class _Pending:
    drafted: int
    length_class: LengthClass
    bucket: int


@dataclass
class AcceptanceTracker:
    """Accumulates :class:`Counts` by class, by bucket, by (class, bucket) cell and in total."""

    edges: Sequence[int] = (1000, 2000, 4000, 8000)
    by_class: dict[str, Counts] = field(default_factory=dict)
    by_bucket: list[Counts] = field(default_factory=list)
    by_cell: dict[tuple[str, int], Counts] = field(default_factory=dict)
    """Keyed by (length class value, bucket index); cells appear when first verified."""
    total: Counts = field(default_factory=Counts)
    _pending: dict[str, _Pending] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.edges = tuple(self.edges)
        self.by_bucket = [Counts() for _ in range(len(self.edges) + 1)]
        self.by_class = {c.value: Counts() for c in LengthClass}
        self.by_cell = {}

    def bucket_of(self, response_length: int) -> int:
        return bisect.bisect_right(self.edges, response_length)

    def on_proposed(self, request_id: str, drafted: int, length_class: LengthClass, response_length: int) -> None:
        """Record the draft (possibly empty) given to a request for its next verify step."""
        self._pending[request_id] = _Pending(drafted, length_class, self.bucket_of(response_length))

    def on_verified(self, request_id: str, num_sampled: int) -> Counts | None:
        """Record a verify result: ``num_sampled`` tokens came out of the step (accepted + 1).
        Returns the request's counts of this verify step (None: no draft was pending)."""
        p = self._pending.pop(request_id, None)
        if p is None or num_sampled <= 0:
            return None
        accepted = min(max(num_sampled - 1, 0), p.drafted)
        c = Counts(p.drafted, accepted, 1 if p.drafted else 0, 1)
        self.total.add(c)
        self.by_class[p.length_class.value].add(c)
        self.by_bucket[p.bucket].add(c)
        cell = self.by_cell.get((p.length_class.value, p.bucket))
        if cell is None:
            cell = self.by_cell[(p.length_class.value, p.bucket)] = Counts()
        cell.add(c)
        return c

    @property
    def has_pending(self) -> bool:
        return bool(self._pending)

    def forget(self, request_id: str) -> None:
        self._pending.pop(request_id, None)

    def snapshot(self) -> dict[str, Any]:
        """Plain-dict view (JSON/RPC friendly)."""
        labels = bucket_labels(self.edges)
        return {
            "total": self.total.as_dict(),
            "by_class": {k: v.as_dict() for k, v in self.by_class.items()},
            "by_bucket": {labels[i]: c.as_dict() for i, c in enumerate(self.by_bucket)},
        }

    def reset(self) -> None:
        self.total = Counts()
        self.__post_init__()
