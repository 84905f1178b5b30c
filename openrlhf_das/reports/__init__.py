"""Reports: run directories (per-step records) → CSV / JSON / PNG / TensorBoard."""

from .aggregate import merge_acceptance, merge_engine_stats
from .render import render
from .run_dir import RunDirError, RunRecorder, iter_records, load_run
from .scalars import step_scalars

__all__ = [
    "RunDirError",
    "RunRecorder",
    "iter_records",
    "load_run",
    "merge_acceptance",
    "merge_engine_stats",
    "render",
    "step_scalars",
]
