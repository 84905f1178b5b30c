"""Turning loaded problem records into a :class:`datasets.Dataset`: ids, subsetting, validation."""

from __future__ import annotations

import hashlib
import random
from typing import Any

from datasets import Dataset


def stable_id(source: str, text: str) -> str:
    """16 hex chars of sha1(``source`` + newline + ``text``): the same in every process and run.

    For records whose dataset has no id of its own. Never derived from Python's ``hash()``,
    which is salted per process.
    """
    return hashlib.sha1(f"{source}\n{text}".encode()).hexdigest()[:16]


def check_limit(limit: int | None) -> None:
    """Raise ``ValueError`` unless ``limit`` is ``None`` or a positive int."""
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise ValueError(f"limit must be a positive int or None, got {limit!r}")


def to_dataset(name: str, rows: list[dict[str, Any]], limit: int | None, seed: int | None) -> Dataset:
    """Rows as a ``Dataset``: shuffled by ``random.Random(seed)`` when ``seed`` is given (source
    order otherwise), then cut to the first ``limit`` rows.

    Raises:
        ValueError: bad ``limit``, duplicate ``problem_id``, or no rows at all.
    """
    check_limit(limit)
    ids = [row["problem_id"] for row in rows]
    if len(set(ids)) != len(ids):
        raise ValueError(f"dataset {name!r} has duplicate problem_id values")
    if seed is not None:
        rows = list(rows)
        random.Random(seed).shuffle(rows)
    rows = rows[:limit]
    if not rows:
        raise ValueError(f"dataset {name!r} is empty: its package data holds no problems")
    return Dataset.from_list(rows)
