"""Response-length buckets that follow a run's own length range.

DAS reports acceptance per response-length bucket (``DASConfig.length_buckets``: upper edges,
last bucket open; labels from :func:`openrlhf_das.policy.bucket_labels`). The built-in edges
(1000, 2000, 4000, 8000) suit long reasoning rollouts; a run whose responses are cut at 256
tokens would put everything in the first bucket. :func:`edges_for` spreads ``buckets`` equal
buckets over ``0..max_len`` (the run's ``max_new_tokens``): edges at ``max_len * i / buckets``
for ``i = 1..buckets-1`` (rounded to integers); the last bucket is the open one (``>= max_len *
(buckets - 1) / buckets``). 256 tokens: 0-64, 64-128, 128-192, 192+.

``openrlhf-das-train`` applies it from ``--rollout.max_new_tokens`` unless the run chose its
own edges (:func:`chosen`), so the engines record, and every report renders, buckets over the
run's range; ``make demo`` does through it.
"""

from __future__ import annotations

from typing import Sequence

DEFAULT_EDGES: tuple[int, ...] = (1000, 2000, 4000, 8000)
"""``DASConfig().length_buckets``: edges that count as not chosen by the run."""


def edges_for(max_len: int, buckets: int = 4) -> tuple[int, ...]:
    """Upper edges of ``buckets`` response-length buckets over ``0..max_len`` (strictly
    increasing, positive; fewer when ``max_len`` is too small to split)."""
    if max_len < 1 or buckets < 1:
        raise ValueError("max_len and buckets must be >= 1")
    edges: list[int] = []
    for i in range(1, buckets):
        edge = max(1, round(max_len * i / buckets))
        if edge < max_len and (not edges or edge > edges[-1]):
            edges.append(edge)
    return tuple(edges) or (max_len,)


def chosen(edges: Sequence[int]) -> bool:
    """True if ``edges`` were set by the run (anything but :data:`DEFAULT_EDGES`)."""
    return tuple(edges) != DEFAULT_EDGES
