"""History-actor checkpoints in ``RUN_DIR/history/``: npz + JSON, never pickle.

Files::

    history/history-step00000012.npz   HistorySnapshot (format "openrlhf-das/history-snapshot"
                                       v1, loaded with allow_pickle=False); next_step = step + 1
    history/state.json                 {"format": "openrlhf-das/history-actor-state",
                                        "version": 1, "step", "history_file", "history_sha256",
                                        "rollouts", "tokens", "window", "max_tokens",
                                        "saved_at", "acceptance" (cumulative, informative)}

Write order: the npz (temp file + rename), then ``state.json`` (temp file + rename), then the
older npz files are deleted. ``state.json`` therefore always names a complete npz, whatever
moment a writer is killed at. :func:`load_checkpoint` refuses — with
:class:`CheckpointError` naming the reason — a state of another format/version, a missing or
altered npz (SHA-256), counts that disagree, or a window other than the current one.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..drafter import HistorySnapshot, SnapshotError

STATE_FORMAT = "openrlhf-das/history-actor-state"
STATE_VERSION = 1
HISTORY_DIR = "history"
STATE_NAME = "state.json"


class CheckpointError(ValueError):
    """A history checkpoint is corrupt, incomplete, of another format or of another config."""


@dataclass(frozen=True)
class Checkpoint:
    """A loaded checkpoint: the history of steps <= ``step`` and its state record."""

    step: int
    snapshot: HistorySnapshot
    state: dict[str, Any]


def save_checkpoint(
    run_dir: str | Path, step: int, snapshot: HistorySnapshot, window: int, max_tokens: int, extra: dict[str, Any]
) -> Path:
    """Write the checkpoint of ``step`` (``snapshot.next_step`` must be ``step + 1``); returns
    the state path."""
    if snapshot.next_step != step + 1:
        raise ValueError(f"snapshot.next_step {snapshot.next_step} != step + 1 ({step + 1})")
    d = Path(run_dir) / HISTORY_DIR
    d.mkdir(parents=True, exist_ok=True)
    name = f"history-step{step:08d}.npz"
    data = snapshot.to_npz_bytes()
    _atomic_write(d / name, data)
    state = {
        "format": STATE_FORMAT,
        "version": STATE_VERSION,
        "step": int(step),
        "history_file": name,
        "history_sha256": hashlib.sha256(data).hexdigest(),
        "rollouts": snapshot.num_rollouts,
        "tokens": snapshot.num_tokens,
        "window": int(window),
        "max_tokens": int(max_tokens),
        "saved_at": time.time(),
        **extra,
    }
    _atomic_write(d / STATE_NAME, json.dumps(state, indent=1).encode())
    for old in d.glob("history-step*.npz"):
        if old.name != name:
            old.unlink(missing_ok=True)
    return d / STATE_NAME


def load_checkpoint(run_dir: str | Path, window: int) -> Checkpoint | None:
    """The checkpoint of ``run_dir`` (None when none was written); raises CheckpointError."""
    d = Path(run_dir) / HISTORY_DIR
    state_path = d / STATE_NAME
    if not state_path.is_file():
        return None
    try:
        state = json.loads(state_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{state_path}: not valid JSON ({exc})") from exc
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
        raise CheckpointError(f"{state_path}: not a history-actor state")
    if state.get("version") != STATE_VERSION:
        raise CheckpointError(f"{state_path}: unsupported version {state.get('version')} (expected {STATE_VERSION})")
    if state.get("window") != window:
        raise CheckpointError(f"{state_path}: saved with window {state.get('window')}, this run uses window {window}")
    npz = d / str(state.get("history_file"))
    if not npz.is_file():
        raise CheckpointError(f"{state_path}: history file {npz.name} is missing")
    data = npz.read_bytes()
    if hashlib.sha256(data).hexdigest() != state.get("history_sha256"):
        raise CheckpointError(f"{npz}: SHA-256 differs from {state_path} (file altered or torn)")
    try:
        snap = HistorySnapshot.from_npz_bytes(data)
    except SnapshotError as exc:
        raise CheckpointError(f"{npz}: {exc}") from exc
    step = int(state["step"])
    if (snap.num_rollouts, snap.num_tokens, snap.next_step) != (state.get("rollouts"), state.get("tokens"), step + 1):
        raise CheckpointError(f"{npz}: contents disagree with {state_path} (rollouts/tokens/step)")
    return Checkpoint(step, snap, state)


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    tmp.replace(path)
