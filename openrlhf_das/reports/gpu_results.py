"""The GPU results table, read from the committed result files (``benchmarks/gpu/results/*.json``).

Each file written by ``benchmarks/engine_rollouts.py`` has ``summary[mode]["all_epochs_s"]`` (total
rollout seconds of every epoch) and ``epochs1plus_s`` (epochs after the first, where DAS has
history) per mode, plus ``args`` and ``machine``. :func:`gpu_rows` gives, for every DAS mode
(name starting with ``das``) of every file that also holds a baseline, its time over the
baselines of the same file — i.e. measured in the same device call: ``nospec`` (stock vLLM
without speculation, with the scheduling that file used) and ``nospec_sync`` (no speculation,
synchronous scheduling, as vLLM runs every CPU drafter). Ratios are computed here from the
seconds; no number is copied by hand. Files of another shape are skipped.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

BASELINES = ("nospec", "nospec_sync")


def _seconds(summary: dict[str, Any], mode: str, key: str) -> float | None:
    v = (summary.get(mode) or {}).get(key) if isinstance(summary.get(mode), dict) else None
    return float(v) if isinstance(v, (int, float)) and v > 0 else None


def _dataset(args: dict[str, Any]) -> str:
    """The problem set: the prompts file's (``humaneval-<model>.json``) when one was given, which
    overrides ``--dataset``, else ``--dataset``."""
    prompts = args.get("prompts_file")
    return Path(str(prompts)).name.split("-")[0] if prompts else str(args.get("dataset", "?"))


def gpu_rows(results_dir: str | Path) -> list[dict[str, Any]]:
    """One row per (file, DAS mode): ``file``, ``gpu``, ``model``, ``workload``, ``mode``, and
    ``<baseline>`` / ``<baseline>_later`` = DAS seconds / baseline seconds over all epochs /
    epochs after the first (None when the file lacks that baseline)."""
    rows = []
    for path in sorted(Path(results_dir).glob("*.json")):
        try:
            data = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        summary = data.get("summary")
        args = data.get("args") if isinstance(data.get("args"), dict) else {}
        machine = data.get("machine") if isinstance(data.get("machine"), dict) else {}
        if not isinstance(summary, dict):
            continue
        for mode in sorted(summary):
            if not mode.startswith("das") or _seconds(summary, mode, "all_epochs_s") is None:
                continue
            row: dict[str, Any] = {
                "file": path.name,
                "gpu": str(machine.get("gpu", "?")).replace("NVIDIA ", "").split(" ")[0],
                "model": Path(str(args.get("model", "?"))).name,
                "workload": f"{_dataset(args)} {args.get('problems', '?')}x{args.get('samples', '?')} "
                            f"{args.get('epochs', '?')}ep <={args.get('max_tokens', '?')}",
                "mode": mode,
            }
            for base in BASELINES:
                for suffix, key in (("", "all_epochs_s"), ("_later", "epochs1plus_s")):
                    das, ref = _seconds(summary, mode, key), _seconds(summary, base, key)
                    row[base + suffix] = das / ref if das is not None and ref is not None else None
            if any(row[b] is not None for b in BASELINES):
                rows.append(row)
    return rows


def format_rows(rows: list[dict[str, Any]]) -> list[str]:
    """Text lines of the table (time of the DAS mode / time of the baseline; < 1 is faster)."""

    def r(v: float | None) -> str:
        return f"{v:.2f}x" if v is not None else "-"

    head = f"{'GPU':<5} {'model':<28} {'workload':<30} {'mode':<9} {'/nospec':>8} {'/sync':>7}  file"
    lines = [head]
    for row in rows:
        lines.append(f"{row['gpu']:<5} {row['model'][:28]:<28} {row['workload'][:30]:<30} {row['mode']:<9} "
                     f"{r(row['nospec']):>8} {r(row['nospec_sync']):>7}  {row['file']}")
    return lines
