"""Online tuning of per-(length class, length bucket) budgets from this run's acceptance:
AIMD above the static class budget, for the cells of the requests that set the makespan.

State: one :class:`~openrlhf_das.config.ClassBudget` per cell ``(class, bucket)``, starting at the
class budget. The speculator calls :meth:`BudgetTuner.observe` once per engine step with the
tracker's cumulative per-cell counts. Only cells of ``tuning.classes`` (default: long) in length
buckets >= ``tuning.from_bucket`` (default: past the first bucket) are tuned; every other cell keeps
its class budget. A tuned cell whose drafts since its last change hold at least
``tuning.min_drafted`` tokens is judged by their acceptance rate ``accepted / drafted``:

* rate >= ``increase_at``: tokens + 1 and factor + ``factor_step`` (additive increase);
* rate <  ``decrease_at``: the excess over the class budget is halved, tokens and factor (the
  factor's down to a whole ``factor_step``): multiplicative decrease towards the static budget;
* otherwise unchanged; the cell's window restarts after every judgement.

Bounds: tokens in [class budget, ``k``] where ``k`` is the largest class budget (the engine's
``num_speculative_tokens``), factor in [class factor, ``max(max_factor, class factor)``]; a class
whose configured budget is 0 keeps 0 in every bucket (it never drafts, so it has nothing to learn
from). Every change is appended to ``changes`` (step, class, bucket, tokens, factor, rate) and
logged at DEBUG. Units: tokens; factor is the match-length multiplier of the draft cap.

Why only upwards, and only there (replay of the real traces, docs/configuration.md "Length policy
on replay"): the makespan is the verify steps of the longest request, and an extra draft token
costs a small fraction of an engine step. Cutting the budget of a poorly accepted cell also cut
the budget of the hard requests that set the makespan (the former AIMD rule, which could halve
down to 1 token, was slower than the static budgets in most epochs); raising the budgets of
every cell, short-lived medium requests and the bulk's first bucket included, paid for draft
tokens of requests that never set the makespan.
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

    def tuned(self, cell: Cell) -> bool:
        """Whether the rule tunes ``cell`` (its class is in ``tuning.classes``, its bucket at or
        past ``tuning.from_bucket``, its class budget not 0)."""
        t = self.config.tuning
        cls = LengthClass(cell[0])
        return cls in t.classes and cell[1] >= t.from_bucket and self.config.budgets.of(cls).tokens > 0

    def budget(self, length_class: LengthClass, bucket: int) -> ClassBudget:
        """The cell's current budget (the class budget until the cell is first judged)."""
        base = self.config.budgets.of(length_class)
        st = self.cells.get((length_class.value, bucket))
        if not self.enabled or st is None or base.tokens == 0:
            return base
        return ClassBudget(tokens=st.tokens, factor=st.factor)

    def observe(self, step: int, by_cell: Mapping[Cell, Counts]) -> None:
        """Judge every tuned cell with enough new drafts in ``by_cell`` (cumulative counts)."""
        if not self.enabled:
            return
        t = self.config.tuning
        k = self.config.budgets.max_tokens
        for cell, c in by_cell.items():
            if not self.tuned(cell):
                continue
            base = self.config.budgets.of(LengthClass(cell[0]))
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
                tokens = base.tokens + (tokens - base.tokens) // 2
                steps = int((factor - base.factor) / 2 / t.factor_step + 1e-9) if t.factor_step else 0
                factor = base.factor + steps * t.factor_step  # halved, down to a whole factor_step
            tokens = min(max(tokens, base.tokens), max(k, base.tokens))
            factor = min(max(factor, base.factor), max(t.max_factor, base.factor))
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


@dataclass
class _RequestState:
    scale: float = 1.0
    drafted: int = 0  # the current window's counts
    accepted: int = 0


@dataclass
class RequestTuner:
    """Per-request scale of the budget from the request's own acceptance
    (``tuning.request``, :class:`~openrlhf_das.config.RequestTuningConfig`).

    A cell's budget serves every request of a class and length bucket alike; within one cell,
    requests differ in how predictable their text is. Each request keeps a ``scale`` (1 at its
    first draft). Every ``window`` draft tokens of the request are judged by their acceptance rate:
    >= ``increase_at``: scale + ``scale_step`` (at most ``max_scale``); < ``decrease_at``: the
    excess over 1 halved (down to a whole ``scale_step``), or at or below 1 the scale halved (at
    least ``min_scale``). The budget
    handed out is the cell's budget scaled (:meth:`budget`), with the scale at least 1 in tail steps.
    Units: tokens; ``scale`` is a multiplier of tokens and factor alike.
    """

    config: DASConfig
    requests: dict[str, _RequestState] = field(default_factory=dict)
    changes: int = 0
    """Scale changes so far (all requests)."""

    @property
    def enabled(self) -> bool:
        return self.config.length_policy and self.config.tuning.request.mode == "aimd"

    def observe(self, request_id: str, drafted: int, accepted: int) -> None:
        """One verify step of ``request_id``: ``accepted`` of its ``drafted`` draft tokens."""
        if not self.enabled or drafted <= 0:
            return
        t = self.config.tuning.request
        st = self.requests.get(request_id)
        if st is None:
            st = self.requests[request_id] = _RequestState()
        st.drafted += drafted
        st.accepted += accepted
        if st.drafted < t.window:
            return
        rate = st.accepted / st.drafted
        st.drafted = st.accepted = 0
        scale = st.scale
        if rate >= t.increase_at:
            scale = min(scale + t.scale_step, t.max_scale)
        elif rate < t.decrease_at:
            if scale > 1.0:  # the excess halved, down to a whole scale_step
                scale = 1.0 + (int((scale - 1.0) / 2 / t.scale_step + 1e-9) * t.scale_step if t.scale_step else 0.0)
            else:
                scale = max(scale / 2, t.min_scale)
        if scale != st.scale:
            st.scale = scale
            self.changes += 1

    def scale(self, request_id: str, tail: bool = False) -> float:
        st = self.requests.get(request_id)
        s = 1.0 if st is None else st.scale
        return max(s, 1.0) if tail else s

    def budget(self, request_id: str, base: ClassBudget, tail: bool = False,
               length_class: LengthClass | None = None) -> ClassBudget:
        """``base`` (the request's class or cell budget) scaled by the request's scale; tokens in
        [1, k] (k: the largest class budget), factor at most ``max(tuning.max_factor, base
        factor)``; a budget of 0 stays 0. ``tail``: a step of at most ``promotion.tail_running``
        running requests (the scale counts as at least 1). ``length_class`` outside
        ``tuning.request.classes``: ``base``."""
        if not self.enabled or base.tokens == 0:
            return base
        if length_class is not None and length_class not in self.config.tuning.request.classes:
            return base
        s = self.scale(request_id, tail)
        if s == 1.0:
            return base
        k = max(self.config.budgets.max_tokens, base.tokens)
        tokens = min(max(int(round(base.tokens * s)), 1), k)
        factor = min(base.factor * s, max(self.config.tuning.max_factor, base.factor))
        return ClassBudget(tokens=tokens, factor=factor)

    def forget(self, request_id: str) -> None:
        self.requests.pop(request_id, None)
