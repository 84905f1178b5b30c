"""One arm of an OpenRLHF run, read from the files the run leaves: per-step status dicts and the
DAS run directory, turned into :func:`openrlhf_das.reports.arms.step_rows`.

Sources of OpenRLHF's per-step status (``timing/generation``, ``rollout/reward_mean``, ...), any
of which may be present:

* the driver log (``train.log``, or ``train.log.gz``): the ``✨ Global step N: {...}`` lines the
  PPO trainer prints (the async trainer prints ``Global step N: {...}``; Ray forwards both). A
  resumed run repeats steps: the last line of a step wins;
* TensorBoard events (``train/<key>`` scalars); these win where both have a step;
* ``rollout_only.json`` (``openrlhf-das-train --rollout-only``: a list of status dicts with
  ``step``).

:func:`load_arm` accepts a ``steps.json`` written by :func:`extract` (``grpo_compare.sh``'s
per-arm output), a run folder (``<ckpt.path>`` or ``grpo_compare.sh``'s ``$OUT/grpo/<arm>``:
``steps.json`` if present, else ``train.log[.gz]``, ``tb/`` or ``tensorboard/``,
``rollout_only.json``, and the DAS run directory ``das/`` when it has a ``meta.json``).
"""

from __future__ import annotations

import ast
import gzip
import json
import re
from pathlib import Path
from typing import Any, Mapping

from .arms import das_columns, step_rows
from . import iter_records  # the run-dir reader, wherever it lives (reports re-exports it)

_STEP_LINE = re.compile(r"Global step (\d+): (\{.*\})\s*$")
DAS_RECORD_KEYS = ("step", "mode", "rollout_seconds", "output_tokens")


def _literal(text: str) -> dict[str, Any]:
    """A status dict as printed by Python (may hold nan/inf/tensors' floats)."""
    text = re.sub(r"\b(nan|inf)\b", lambda m: f"'{m.group(1)}'", text)
    text = re.sub(r"(?:tensor|np\.\w+|numpy\.\w+)\(([-0-9.e+naif']+)[^)]*\)", r"\1", text)
    raw = ast.literal_eval(text)
    out = {}
    for k, v in raw.items():
        if isinstance(v, str) and v in ("nan", "inf"):
            v = float(v)
        out[k] = v
    return out


def from_log(path: str | Path) -> dict[int, dict[str, Any]]:
    """Per-step status dicts from a driver log (plain or ``.gz``); a repeated step keeps its last."""
    steps: dict[int, dict[str, Any]] = {}
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8", errors="replace") as fh:
        for line in fh:
            m = _STEP_LINE.search(line.rstrip("\n"))
            if not m:
                continue
            try:
                status = _literal(m.group(2))
            except (ValueError, SyntaxError):
                continue
            steps[int(m.group(1))] = status
    return steps


def from_tensorboard(tb_dir: str | Path) -> dict[int, dict[str, Any]]:
    """Per-step ``train/*`` scalars of every event file under ``tb_dir`` (``{}`` without tensorboard)."""
    try:
        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    except ImportError:
        return {}
    steps: dict[int, dict[str, Any]] = {}
    for events in sorted(Path(tb_dir).rglob("events.out.tfevents.*")):
        acc = EventAccumulator(str(events.parent), size_guidance={"scalars": 0})
        acc.Reload()
        for tag in acc.Tags().get("scalars", []):
            if not tag.startswith("train/"):
                continue
            for ev in acc.Scalars(tag):
                steps.setdefault(int(ev.step), {})[tag[len("train/"):]] = float(ev.value)
    return steps


def from_rollout_only(path: str | Path) -> dict[int, dict[str, Any]]:
    """Per-step status dicts of a ``rollout_only.json``."""
    return {int(r["step"]): dict(r) for r in json.loads(Path(path).read_text())}


def extract(arm: str, log: str | Path | None, tb: str | Path | None, das_run_dir: str | Path | None,
            steps_per_episode: int, rollout_only: str | Path | None = None) -> dict[str, Any]:
    """One arm: ``{"arm", "steps_per_episode", "steps": rows, "das_steps": [...]}`` from whichever
    sources exist (later sources win per key: log, then rollout_only.json, then TensorBoard)."""
    merged: dict[int, dict[str, Any]] = {}
    sources = [(from_log, log), (from_rollout_only, rollout_only), (from_tensorboard, tb)]
    for read, path in sources:
        if path is None or not Path(path).exists():
            continue
        for step, status in read(path).items():
            merged.setdefault(step, {}).update(status)
    das_records = list(iter_records(das_run_dir)) if das_run_dir and Path(das_run_dir).is_dir() else []
    return {"arm": arm, "steps_per_episode": steps_per_episode,
            "steps": step_rows(merged, das_records, steps_per_episode),
            "das_steps": [{k: r.get(k) for k in DAS_RECORD_KEYS} | {"das": das_columns(r)} for r in das_records]}


def _first(folder: Path, *names: str) -> Path | None:
    return next((folder / n for n in names if (folder / n).exists()), None)


def load_arm(path: str | Path, arm: str | None = None, steps_per_episode: int | None = None,
             das_run_dir: str | Path | None = None) -> dict[str, Any]:
    """An arm from ``steps.json`` or a run folder (module docstring). ``steps_per_episode`` is
    needed for a folder without ``steps.json``."""
    p = Path(path)
    if p.is_file():
        data = json.loads(p.read_text())
        if isinstance(data, Mapping) and "steps" in data:
            return dict(data)
        raise ValueError(f"{p}: not an arm's steps.json (no 'steps')")
    if not p.is_dir():
        raise FileNotFoundError(f"{p}: no such file or folder")
    if (p / "steps.json").is_file() and das_run_dir is None:
        return load_arm(p / "steps.json")
    if steps_per_episode is None:
        raise ValueError(f"{p}: a run folder without steps.json needs steps_per_episode")
    if das_run_dir is None and (p / "das" / "meta.json").is_file():
        das_run_dir = p / "das"
    tb = _first(p, "tb", "tensorboard")
    return extract(arm or p.name, _first(p, "train.log", "train.log.gz"), tb, das_run_dir, steps_per_episode,
                   rollout_only=_first(p, "rollout_only.json"))
