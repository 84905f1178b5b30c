"""Length classes: rank problems by their past response lengths; promote requests online.

Offline (between steps): the problems of the next batch are ranked by (mean, max) of their
past response lengths; the top ``long_ratio`` are ``long``, the next ``medium_ratio`` are
``medium``, the rest ``short``. Problems with no history get ``unknown_class`` and do not take
part in the ranking.

Online (during a step): a request whose generated length exceeds ``promote_medium_tokens`` is
at least ``medium``; past ``promote_long_tokens`` it is ``long``. Lengths are counted in
*generated* tokens (the prompt is excluded so that classes do not depend on prompt length).
The DAS authors' code promotes to long already at 3000 tokens, which looks like a bug; we keep
the two documented thresholds (3000 → medium, 5000 → long).
"""

from __future__ import annotations

import math
from typing import Mapping, Sequence

from ..config import LengthClass


def assign_length_classes(
    problem_ids: Sequence[str],
    past_lengths: Mapping[str, Sequence[int]],
    long_ratio: float = 0.2,
    medium_ratio: float = 0.4,
    unknown_class: LengthClass = LengthClass.MEDIUM,
) -> dict[str, LengthClass]:
    """Class of every distinct problem in ``problem_ids``.

    Ranking key: (mean length, max length), descending; ties keep input order. With n known
    problems, the first ``round(n * long_ratio)`` are long and the next
    ``round(n * medium_ratio)`` medium.
    """
    distinct = list(dict.fromkeys(problem_ids))
    known = [p for p in distinct if past_lengths.get(p)]
    ranked = sorted(
        known,
        key=lambda p: (sum(past_lengths[p]) / len(past_lengths[p]), max(past_lengths[p])),
        reverse=True,
    )
    n = len(ranked)
    n_long = min(n, _round_half_up(n * long_ratio))
    n_medium = min(n - n_long, _round_half_up(n * medium_ratio))
    classes = {p: unknown_class for p in distinct}
    for i, p in enumerate(ranked):
        if i < n_long:
            classes[p] = LengthClass.LONG
        elif i < n_long + n_medium:
            classes[p] = LengthClass.MEDIUM
        else:
            classes[p] = LengthClass.SHORT
    return classes


def promote(
    length_class: LengthClass,
    generated_tokens: int,
    promote_medium_tokens: int = 3000,
    promote_long_tokens: int = 5000,
) -> LengthClass:
    """The class after online promotion; never demotes."""
    if generated_tokens > promote_long_tokens:
        return LengthClass.LONG
    if generated_tokens > promote_medium_tokens and length_class is LengthClass.SHORT:
        return LengthClass.MEDIUM
    return length_class


def _round_half_up(x: float) -> int:
    return int(math.floor(x + 0.5))
