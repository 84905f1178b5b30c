"""Ray side of DAS: the rollout-history actor, its store, engine sharding, checkpoints.

Imports Ray and the core only (no vLLM): the actor talks to engines through their
``das_rpc`` actor method.
"""

from .history_actor import RolloutHistoryActor, create_history_actor
from .history_store import HistoryStore, StoreStats
from .persistence import Checkpoint, CheckpointError, load_checkpoint, save_checkpoint
from .rollouts import FinishedRollout
from .sharding import engine_for_problem, shard_problems

__all__ = [
    "Checkpoint",
    "CheckpointError",
    "FinishedRollout",
    "HistoryStore",
    "RolloutHistoryActor",
    "StoreStats",
    "create_history_actor",
    "engine_for_problem",
    "load_checkpoint",
    "save_checkpoint",
    "shard_problems",
]
