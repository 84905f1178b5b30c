"""Batch gate: switch drafting off when the engine step is compute-bound.

Two modes (``DASConfig.gate``):

* :class:`MaxRunningGate` – the DAS authors' rule: no drafts while more than ``max_running``
  requests run.
* :class:`CostModelGate` – uses a *profiled* verify-cost table ``T(batch, tokens)`` (seconds
  for one forward pass of ``batch`` requests carrying ``tokens`` query tokens in total; written
  by ``benchmarks/profile_verify_cost.py`` on the target GPU). Drafts are kept, best
  expected-accepted-per-token first, only as far as they raise the step's token throughput:
  ``(batch + Σ score) / T(batch, batch + Σ len) > batch / T(batch, batch)``. On an engine that
  pads drafts to k (CUDA graphs), a drafted step costs ``T(batch, batch · (1 + k))`` whatever
  is kept, so the choice is per step: all drafts, or none (a draft-free step).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from ..drafter.suffix_tree import Draft

COST_TABLE_FORMAT = "openrlhf-das/verify-cost"


@dataclass(frozen=True)
class MaxRunningGate:
    max_running: int = 64

    def allows(self, num_running: int) -> bool:
        return num_running <= self.max_running


class CostTable:
    """Piecewise-linear ``T(batch, tokens)`` from profiled points (seconds)."""

    def __init__(self, points: Sequence[tuple[int, int, float]]) -> None:
        if not points:
            raise ValueError("cost table has no points")
        rows: dict[int, list[tuple[int, float]]] = {}
        for b, n, t in points:
            if b < 1 or n < b or t <= 0:
                raise ValueError(f"bad cost point (batch={b}, tokens={n}, seconds={t})")
            rows.setdefault(int(b), []).append((int(n), float(t)))
        self.batches = np.array(sorted(rows), dtype=np.float64)
        self._rows = [np.array(sorted(rows[int(b)]), dtype=np.float64) for b in self.batches]

    @classmethod
    def load(cls, path: str | Path) -> "CostTable":
        p = Path(path)
        if not p.is_file():
            raise FileNotFoundError(f"cost table not found: {p}")
        data = json.loads(p.read_text())
        if data.get("format") != COST_TABLE_FORMAT:
            raise ValueError(f"{p}: not a verify-cost table (format={data.get('format')!r})")
        return cls([(pt["batch"], pt["tokens"], pt["seconds"]) for pt in data["points"]])

    def seconds(self, batch: int, tokens: int) -> float:
        """Interpolated step time; clamped to the profiled range."""
        vals = [float(np.interp(tokens, r[:, 0], r[:, 1])) for r in self._rows]
        return float(np.interp(batch, self.batches, np.array(vals)))


class CostModelGate:
    """Keeps the prefix of drafts (sorted by score per token) that maximises tokens/second."""

    def __init__(self, table: CostTable) -> None:
        self.table = table

    def keep(self, drafts: Sequence[Draft], num_running: int, padded_k: int = 0) -> list[bool]:
        """Mask over ``drafts``: True = keep the draft, False = drop it this step.
        ``padded_k`` > 0: the engine pads every draft to that many tokens, so keep all drafts
        iff ``(batch + Σ score) / T(batch, batch · (1 + k)) > batch / T(batch, batch)``."""
        b = max(num_running, 1)
        idx = [i for i, d in enumerate(drafts) if len(d)]
        mask = [False] * len(drafts)
        if not idx:
            return mask
        best_rate = b / self.table.seconds(b, b)  # no drafts
        if padded_k > 0:
            gain = sum(drafts[i].score for i in idx)
            keep_all = (b + gain) / self.table.seconds(b, b * (1 + padded_k)) > best_rate
            return [keep_all and bool(len(d)) for d in drafts]
        idx.sort(key=lambda i: drafts[i].score / len(drafts[i]), reverse=True)
        best_k = 0
        tokens, gain = b, 0.0
        for k, i in enumerate(idx, start=1):
            tokens += len(drafts[i])
            gain += drafts[i].score
            rate = (b + gain) / self.table.seconds(b, tokens)
            if rate > best_rate:
                best_rate, best_k = rate, k
        for i in idx[:best_k]:
            mask[i] = True
        return mask
