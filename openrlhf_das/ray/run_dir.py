"""The run directory: what a DAS job records per step, in plain, versioned files.

Layout (``RUN_DIR``)::

    meta.json       {"format": "openrlhf-das/run", "version": 2, ...free-form run info}
    steps.jsonl     one JSON object per (step, mode), appended as each step ends
    history/        the history actor's snapshots (see ``openrlhf_das.ray.persistence``)

Step record (version 2; version 1 is the same without the optional keys, and with
``rollout_seconds``/``output_tokens`` always numbers)::

    {"step": int, "mode": str,              # e.g. "das", "nospec"
     "rollout_seconds": float | null,       # wall time of the step's rollout, null = unknown
     "output_tokens": int | null,           # response tokens generated in the step
     "das": {"engines": n, "acceptance": {"total", "by_class", "by_bucket"}, "history": {...},
             "faults": n, "engine_faults": n, "propose_seconds": s, ...} | null,
     "wall_time": unix seconds,             # when the record was written
     ...optional: "history" (the actor's own store), "rollouts", "classes", "errors"}

``steps.jsonl`` is append-only; each record is one ``write`` followed by ``fsync``. A final
line without its newline (a writer killed mid-write) is ignored by readers and cut off by a
resuming recorder. Readers refuse anything else with :class:`RunDirError` naming the problem.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any, Iterator

RUN_FORMAT = "openrlhf-das/run"
RUN_VERSION = 2
READABLE_VERSIONS = (1, 2)
STEPS_NAME = "steps.jsonl"


class RunDirError(ValueError):
    """A run directory is missing, incomplete or of another format/version."""


class RunRecorder:
    """Appends step records to ``RUN_DIR/steps.jsonl`` (creates the directory and meta).

    With ``resume=True`` an existing run directory of this version is continued: its
    ``meta.json`` is kept (``meta`` is only written for a new directory) and a torn final line
    is cut off. Without it, ``meta.json`` is (re)written.
    """

    def __init__(self, run_dir: str | Path, meta: dict[str, Any] | None = None, resume: bool = False) -> None:
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        meta_path = self.run_dir / "meta.json"
        if resume and meta_path.is_file():
            found = read_meta(self.run_dir)
            if found.get("version") != RUN_VERSION:
                raise RunDirError(f"{meta_path}: cannot append to a version {found.get('version')} run (this is v{RUN_VERSION})")
            _cut_torn_tail(self.run_dir / STEPS_NAME)
        else:
            tmp = meta_path.with_suffix(".json.tmp")
            tmp.write_text(json.dumps({"format": RUN_FORMAT, "version": RUN_VERSION, **(meta or {})}, indent=2))
            tmp.replace(meta_path)

    def record(
        self,
        step: int,
        mode: str,
        rollout_seconds: float | None,
        output_tokens: int | None,
        das: dict[str, Any] | None,
        **extra: Any,
    ) -> dict[str, Any]:
        """Append one step record (``extra``: optional v2 keys); returns it."""
        rec = {
            "step": int(step),
            "mode": mode,
            "rollout_seconds": rollout_seconds,
            "output_tokens": output_tokens,
            "das": das,
            "wall_time": time.time(),
            **extra,
        }
        line = (json.dumps(rec) + "\n").encode()
        fd = os.open(self.run_dir / STEPS_NAME, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line)
            os.fsync(fd)
        finally:
            os.close(fd)
        return rec


def read_meta(run_dir: str | Path) -> dict[str, Any]:
    """``meta.json`` of a run directory, checked for format and a readable version."""
    d = Path(run_dir)
    if not d.is_dir():
        raise RunDirError(f"run directory not found: {d}")
    meta_path = d / "meta.json"
    if not meta_path.is_file():
        raise RunDirError(f"{d} is not a DAS run directory: meta.json missing")
    try:
        meta = json.loads(meta_path.read_text())
    except json.JSONDecodeError as exc:
        raise RunDirError(f"{meta_path}: not valid JSON ({exc})") from exc
    if not isinstance(meta, dict) or meta.get("format") != RUN_FORMAT or meta.get("version") not in READABLE_VERSIONS:
        fmt, ver = (meta.get("format"), meta.get("version")) if isinstance(meta, dict) else (None, None)
        raise RunDirError(f"{meta_path}: format {fmt!r} v{ver} is not {RUN_FORMAT} v{'/'.join(map(str, READABLE_VERSIONS))}")
    return meta


def iter_records(run_dir: str | Path) -> Iterator[dict[str, Any]]:
    """Step records of ``run_dir`` in file order (none if ``steps.jsonl`` does not exist yet)."""
    path = Path(run_dir) / STEPS_NAME
    if not path.is_file():
        return
    text = path.read_text()
    lines = text.split("\n")
    complete = lines[:-1]  # the last element is "" or a torn line without its newline
    for n, line in enumerate(complete, start=1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as exc:
            raise RunDirError(f"{path}:{n}: not valid JSON ({exc})") from exc
        if not isinstance(rec, dict) or not {"step", "mode", "rollout_seconds"} <= rec.keys():
            raise RunDirError(f"{path}:{n}: a step record needs step, mode and rollout_seconds")
        yield rec


def load_run(run_dir: str | Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """(meta, step records) of a run directory with at least one record."""
    meta = read_meta(run_dir)
    steps_path = Path(run_dir) / STEPS_NAME
    if not steps_path.is_file():
        raise RunDirError(f"{run_dir}: {STEPS_NAME} missing (no step was recorded)")
    steps = list(iter_records(run_dir))
    if not steps:
        raise RunDirError(f"{steps_path} is empty (no step was recorded)")
    return meta, steps


def _cut_torn_tail(path: Path) -> None:
    """Truncate ``path`` after its last newline (drops a record torn by a kill mid-write)."""
    if not path.is_file():
        return
    data = path.read_bytes()
    keep = data.rfind(b"\n") + 1
    if keep != len(data):
        with open(path, "r+b") as f:
            f.truncate(keep)
