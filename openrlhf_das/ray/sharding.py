"""Stable problem → engine pinning.

``engine_for_problem`` hashes the problem id with SHA-1 (not Python's ``hash()``, which is
salted per process), so the driver, the rollout side and the history actor agree on the engine
of a problem in every process and across restarts. All samples of a problem then go to one
engine, and each engine only needs the history of its own problems (≈ 1/num_engines of it).
"""

from __future__ import annotations

import hashlib
from typing import Iterable


def engine_for_problem(problem_id: str, num_engines: int) -> int:
    """Index in ``[0, num_engines)`` of the engine that serves ``problem_id``.

    The first 8 bytes of ``sha1(problem_id.encode("utf-8"))``, big-endian, modulo
    ``num_engines``. Deterministic across processes, machines and Python versions.
    """
    if num_engines < 1:
        raise ValueError(f"num_engines must be >= 1, got {num_engines}")
    digest = hashlib.sha1(problem_id.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") % num_engines


def shard_problems(problem_ids: Iterable[str], num_engines: int) -> list[set[str]]:
    """``problem_ids`` split by :func:`engine_for_problem` (one set per engine)."""
    shards: list[set[str]] = [set() for _ in range(num_engines)]
    for pid in problem_ids:
        shards[engine_for_problem(pid, num_engines)].add(pid)
    return shards
