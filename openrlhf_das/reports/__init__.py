"""Reports: run directories (per-step records) → CSV / JSON / PNG / TensorBoard."""

from .render import render
from .run_dir import RunDirError, RunRecorder, load_run

__all__ = ["RunDirError", "RunRecorder", "load_run", "render"]
