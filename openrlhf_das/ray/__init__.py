"""Ray side of DAS: the rollout-history actor, its store, engine sharding, checkpoints.

Imports Ray and the core only (no vLLM): the actor talks to engines through their
``das_rpc`` actor method. Names are resolved lazily (PEP 562), so the modules that need no Ray
(``sharding``, ``rollouts``, ``persistence``) import on machines without it, such as the GPU
benchmark machine (``benchmarks/engine_rollouts.py --engines N`` routes problems with
:func:`engine_for_problem`).
"""

from __future__ import annotations

import importlib
from typing import Any

_WHERE = {
    "RolloutHistoryActor": "history_actor",
    "create_history_actor": "history_actor",
    "HistoryStore": "history_store",
    "Checkpoint": "persistence",
    "CheckpointError": "persistence",
    "load_checkpoint": "persistence",
    "save_checkpoint": "persistence",
    "FinishedRollout": "rollouts",
    "engine_for_problem": "sharding",
    "shard_problems": "sharding",
}

__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_WHERE[name]}", __name__), name)
