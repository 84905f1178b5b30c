"""Per-step draft-token quota: long requests are served first, then medium, then short.

Given each request's budget and class, returns budgets whose sum is at most ``quota``; within
a class, requests keep input order (the engine's batch order).
"""

from __future__ import annotations

from typing import Sequence

from ..config import LengthClass


def apply_quota(budgets: Sequence[int], classes: Sequence[LengthClass], quota: int) -> list[int]:
    out = [0] * len(budgets)
    left = quota
    for cls in (LengthClass.LONG, LengthClass.MEDIUM, LengthClass.SHORT):
        for i, (b, c) in enumerate(zip(budgets, classes)):
            if c is cls and b > 0 and left > 0:
                out[i] = min(b, left)
                left -= out[i]
    return out
