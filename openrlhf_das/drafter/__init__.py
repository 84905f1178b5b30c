"""Drafter core: suffix trees, windowed history, snapshots and draft choice.

Imports nothing of vLLM, Ray or OpenRLHF (enforced by ``tests/test_layering.py``).
"""

from .drafter import Drafter, DraftRequest
from .history_index import HistoryIndex
from .window import HistoryStats
from .snapshot import HistoryDelta, HistoryFeed, HistorySnapshot, Rollout, SnapshotError
from .suffix_tree import EMPTY_DRAFT, Draft

__all__ = [
    "Draft",
    "DraftRequest",
    "Drafter",
    "EMPTY_DRAFT",
    "HistoryDelta",
    "HistoryFeed",
    "HistoryIndex",
    "HistorySnapshot",
    "HistoryStats",
    "Rollout",
    "SnapshotError",
]
