"""Online tuning of per-(length class, length bucket) budgets from this run's acceptance (AIMD).

State: one :class:`~openrlhf_das.config.ClassBudget` per cell ``(class, bucket)``, starting at the
class budget. The speculator calls :meth:`BudgetTuner.observe` once per engine step with the
tracker's cumulative per-cell counts; a cell whose drafts since its last change hold at least
``tuning.min_drafted`` tokens is judged by their acceptance rate ``accepted / drafted``:

* rate >= ``increase_at``: tokens + 1 and factor + ``factor_step`` (additive increase);
* rate <  ``decrease_at``: tokens // 2 and factor / 2 (multiplicative decrease);
* otherwise unchanged; the cell's window restarts after every judgement.

Bounds: tokens in [``min_tokens``, ``k``] where ``k`` is the largest class budget (the engine's
``num_speculative_tokens``), factor in [``min_factor``, ``max_factor``]; a class whose configured
budget is 0 keeps 0 in every bucket (it never drafts, so it has nothing to learn from). Every
change is appended to ``changes`` (step, class, bucket, tokens, factor, rate) and logged at DEBUG.
Units: tokens; factor is the match-length multiplier of the draft cap.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Mapping

from ..config import ClassBudget, DASConfig, LengthClass
from .acceptance import Counts

logger = logging.getLogger(__name__)

Cell = tuple[str, int]  # (length class value, bucket index)


@dataclass
class _CellState:
    tokens: int
    factor: float
    drafted: int = 0  # tracker counts at the start of the current window
    accepted: int = 0


@dataclass
class BudgetTuner:
    config: DASConfig
    cells: dict[Cell, _CellState] = field(default_factory=dict)
    changes: list[dict] = field(default_factory=list)
    max_changes: int = 10_000
    """``changes`` keeps the newest this many entries."""

    @property
    def enabled(self) -> bool:
        return self.config.length_policy and self.config.tuning.mode == "aimd"

    def budget(self, length_class: LengthClass, bucket: int) -> ClassBudget:
        """The cell's current budget (the class budget until the cell is first judged)."""
        base = self.config.budgets.of(length_class)
        st = self.cells.get((length_class.value, bucket))
        if not self.enabled or st is None or base.tokens == 0:
            return base
        return ClassBudget(tokens=st.tokens, factor=st.factor)

    def observe(self, step: int, by_cell: Mapping[Cell, Counts]) -> None:
        """Judge every cell with enough new drafts in ``by_cell`` (cumulative counts)."""
        if not self.enabled:
            return
        t = self.config.tuning
        k = self.config.budgets.max_tokens
        for cell, c in by_cell.items():
            base = self.config.budgets.of(LengthClass(cell[0]))
            if base.tokens == 0:
                continue
            st = self.cells.get(cell)
            if st is None:
                st = self.cells[cell] = _CellState(base.tokens, base.factor)
            if c.drafted < st.drafted:  # the tracker was reset: restart the window
                st.drafted, st.accepted = c.drafted, c.accepted
            drafted = c.drafted - st.drafted
            if drafted < t.min_drafted:
                continue
            rate = (c.accepted - st.accepted) / drafted
            st.drafted, st.accepted = c.drafted, c.accepted
            tokens, factor = st.tokens, st.factor
            if rate >= t.increase_at:
                tokens, factor = tokens + 1, factor + t.factor_step
            elif rate < t.decrease_at:
                tokens, factor = tokens // 2, factor / 2
            tokens = min(max(tokens, t.min_tokens), k)
            factor = min(max(factor, t.min_factor), t.max_factor)
            if (tokens, factor) != (st.tokens, st.factor):
                st.tokens, st.factor = tokens, factor
                rec = {"step": step, "class": cell[0], "bucket": cell[1], "tokens": tokens, "factor": factor,
                       "rate": round(rate, 4)}
                self.changes.append(rec)
                del self.changes[: -self.max_changes]
                logger.debug("DAS tuning: %s", rec)

    def table(self) -> dict[str, dict[str, float]]:
        """Current budgets of the judged cells, ``{"long/2": {"tokens": 9, "factor": 2.5}}``."""
        return {f"{c}/{b}": {"tokens": s.tokens, "factor": s.factor} for (c, b), s in sorted(self.cells.items())}
