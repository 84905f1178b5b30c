"""Length-aware policy: classes, promotion, budgets, batch gate, quota, acceptance stats.

Imports only the core (``openrlhf_das.config`` and ``openrlhf_das.drafter``).
"""

from .acceptance import AcceptanceTracker, Counts, bucket_labels
from .gate import CostModelGate, CostTable, MaxRunningGate
from .length_classes import assign_length_classes, promote
from .promotion import is_tail_step, problem_threshold, promoted_rank, run_thresholds, tail_floor
from .quota import apply_quota
from .tuning import BudgetTuner, RequestTuner

__all__ = [
    "AcceptanceTracker",
    "BudgetTuner",
    "CostModelGate",
    "CostTable",
    "Counts",
    "MaxRunningGate",
    "RequestTuner",
    "apply_quota",
    "assign_length_classes",
    "bucket_labels",
    "is_tail_step",
    "problem_threshold",
    "promote",
    "promoted_rank",
    "run_thresholds",
    "tail_floor",
]
