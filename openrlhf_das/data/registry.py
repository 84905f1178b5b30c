"""Shipped datasets by name."""

from __future__ import annotations

import functools
from collections.abc import Callable

from datasets import Dataset

from .code_datasets import load_code
from .math_datasets import MATH_SOURCES, load_math

DatasetLoader = Callable[[int | None, int | None], Dataset]
DATASETS: dict[str, DatasetLoader] = {
    **{name: functools.partial(load_math, name) for name in MATH_SOURCES},
    "humaneval": load_code,
}


def load_dataset_by_name(name: str, limit: int | None = None, seed: int | None = None) -> Dataset:
    """Load the shipped dataset ``name`` (one of :data:`DATASETS`); see ``load_math``/``load_code``.

    Raises:
        ValueError: unknown ``name`` (the message lists the valid ones), bad ``limit``, no rows.
    """
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; valid names: {', '.join(sorted(DATASETS))}")
    return DATASETS[name](limit, seed)
