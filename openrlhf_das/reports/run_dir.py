"""The run directory: what a DAS job records per step, in plain, versioned files.

Layout (``RUN_DIR``)::

    meta.json       {"format": "openrlhf-das/run", "version": 1, ...free-form run info}
    steps.jsonl     one JSON object per (step, mode): {"step", "mode", "rollout_seconds",
                    "output_tokens", "das": <proposer stats or null>}

Readers refuse anything else with :class:`RunDirError` naming the problem.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterable

RUN_FORMAT = "openrlhf-das/run"
RUN_VERSION = 1


class RunDirError(ValueError):
    """A run directory is missing, incomplete or of another format/version."""


class RunRecorder:
    """Appends step records to ``RUN_DIR/steps.jsonl`` (creates the directory and meta)."""

    def __init__(self, run_dir: str | Path, meta: dict[str, Any] | None = None) -> None:
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        (self.run_dir / "meta.json").write_text(
            json.dumps({"format": RUN_FORMAT, "version": RUN_VERSION, **(meta or {})}, indent=2)
        )

    def record(self, step: int, mode: str, rollout_seconds: float, output_tokens: int, das: dict | None) -> None:
        rec = {"step": step, "mode": mode, "rollout_seconds": rollout_seconds, "output_tokens": output_tokens, "das": das}
        with open(self.run_dir / "steps.jsonl", "a") as f:
            f.write(json.dumps(rec) + "\n")


def load_run(run_dir: str | Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """(meta, step records) of a run directory."""
    d = Path(run_dir)
    if not d.is_dir():
        raise RunDirError(f"run directory not found: {d}")
    meta_path, steps_path = d / "meta.json", d / "steps.jsonl"
    if not meta_path.is_file():
        raise RunDirError(f"{d} is not a DAS run directory: meta.json missing")
    try:
        meta = json.loads(meta_path.read_text())
    except json.JSONDecodeError as exc:
        raise RunDirError(f"{meta_path}: not valid JSON ({exc})") from exc
    if meta.get("format") != RUN_FORMAT or meta.get("version") != RUN_VERSION:
        raise RunDirError(f"{meta_path}: format {meta.get('format')!r} v{meta.get('version')} is not {RUN_FORMAT} v{RUN_VERSION}")
    if not steps_path.is_file():
        raise RunDirError(f"{d}: steps.jsonl missing (no step was recorded)")
    steps = list(_read_jsonl(steps_path))
    if not steps:
        raise RunDirError(f"{steps_path} is empty (no step was recorded)")
    return meta, steps


def _read_jsonl(path: Path) -> Iterable[dict[str, Any]]:
    for n, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as exc:
            raise RunDirError(f"{path}:{n}: not valid JSON ({exc})") from exc
        if not isinstance(rec, dict) or not {"step", "mode", "rollout_seconds"} <= rec.keys():
            raise RunDirError(f"{path}:{n}: a step record needs step, mode and rollout_seconds")
        yield rec
