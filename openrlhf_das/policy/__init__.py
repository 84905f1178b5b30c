"""Length-aware policy: classes, promotion, budgets, batch gate, quota, acceptance stats.

Imports only the core (``openrlhf_das.config`` and ``openrlhf_das.drafter``).
"""

from .acceptance import AcceptanceTracker, Counts, bucket_labels
from .gate import CostModelGate, CostTable, MaxRunningGate
from .length_classes import assign_length_classes, promote
from .quota import apply_quota

__all__ = [
    "AcceptanceTracker",
    "CostModelGate",
    "CostTable",
    "Counts",
    "MaxRunningGate",
    "apply_quota",
    "assign_length_classes",
    "bucket_labels",
    "promote",
]
