"""Online promotion relative to the run: thresholds from the run's limit and the problem's history.

A request's class at a decode step (ranks: 0 short, 1 medium, 2 long) is the highest of

* its base class (the trainer's ranking of its problem, ``length_classes.assign_length_classes``);
* medium once it has generated more than ``medium_at`` tokens, long past ``long_at``, where
  ``medium_at = promotion.medium_fraction * max_new_tokens`` and ``long_at =
  promotion.long_fraction * max_new_tokens`` when the run's limit is known (else the absolute
  ``promote_medium_tokens`` / ``promote_long_tokens``), so a threshold never lies beyond the limit;
* long once it has generated more than ``problem_at``, the ``promotion.history_quantile`` of its
  problem's past response lengths (inf for a problem without history): a sample running longer
  than most of its problem's earlier samples is heading for the tail;
* in a step with at most ``promotion.tail_running`` running requests, the lowest class whose
  budget is not 0 (``tail_floor``): the requests still running then are the longest of their
  batch, and the longest requests set the makespan.

Promotion never demotes. Every function here works on scalars and on numpy arrays alike, so the
host speculator and a device drafter can share one definition.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from ..config import DASConfig

NO_THRESHOLD = math.inf


def run_thresholds(config: DASConfig, max_new_tokens: int | None = None) -> tuple[float, float]:
    """(medium_at, long_at) in generated tokens for a run whose limit is ``max_new_tokens``
    (None: ``config.max_new_tokens``; both None: the absolute ``promote_*_tokens``)."""
    limit = max_new_tokens if max_new_tokens is not None else config.max_new_tokens
    if limit is None:
        return float(config.promote_medium_tokens), float(config.promote_long_tokens)
    p = config.promotion
    return p.medium_fraction * limit, p.long_fraction * limit


def problem_threshold(past_lengths: Sequence[int], quantile: float | None) -> float:
    """Generated length past which a request of this problem is promoted to long: the
    ``quantile`` (linear interpolation) of the problem's past response lengths; inf without
    history or with ``quantile`` None."""
    if quantile is None or not len(past_lengths):
        return NO_THRESHOLD
    return float(np.quantile(np.asarray(past_lengths, dtype=np.float64), quantile))


def is_tail_step(config: DASConfig, num_running: int | None) -> bool:
    """Whether a step of ``num_running`` running requests is a tail step (at most
    ``promotion.tail_running``; 0 = never); None (unknown) is not."""
    return num_running is not None and num_running <= config.promotion.tail_running


def tail_floor(config: DASConfig) -> int:
    """Lowest class rank whose budget is not 0 (2 when every class budget is 0)."""
    b = config.budgets
    for rank, budget in enumerate((b.short, b.medium, b.long)):
        if budget.tokens > 0:
            return rank
    return 2


def promoted_rank(base_rank, generated, medium_at: float, long_at: float, problem_at=NO_THRESHOLD,
                  floor: int = 0):
    """Class rank after promotion (scalars or numpy arrays, broadcast); see the module doc.
    ``floor``: ``tail_floor(config)`` in a tail step, else 0."""
    rank = np.maximum(base_rank, floor)
    rank = np.where(generated > medium_at, np.maximum(rank, 1), rank)
    rank = np.where((generated > long_at) | (generated > problem_at), 2, rank)
    return rank if isinstance(rank, np.ndarray) and rank.ndim else int(rank)
