"""Reports: run directories (per-step records) → CSV / JSON / PNG / TensorBoard.

The run directory format, the sums over engines and the step scalars belong to the layer that
writes them (:mod:`openrlhf_das.ray.run_dir`, :mod:`openrlhf_das.ray.aggregate`,
:mod:`openrlhf_das.ray.scalars`: the history actor records each step); reports read them and
re-export their names here. Nothing under ``openrlhf_das.ray`` imports reports."""

from ..ray.aggregate import merge_acceptance, merge_engine_stats
from ..ray.run_dir import RunDirError, RunRecorder, iter_records, load_run
from ..ray.scalars import step_scalars
from .render import render

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
