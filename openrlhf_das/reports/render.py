"""Render a run directory: ``acceptance_by_bucket.csv``, ``report.json``, ``acceptance.png``
and TensorBoard scalars under ``das/...``.

Bucket statistics follow :mod:`openrlhf_das.policy.acceptance`: ``acceptance_rate =
accepted / drafted``, ``accepted_per_step = accepted / verify_steps`` (tokens per verify step
= that + 1). Steps are grouped into at most ``max_lines`` step ranges for the plot.
"""

from __future__ import annotations

import csv
import json
from collections import defaultdict
from pathlib import Path
from typing import Any

from ..policy.acceptance import Counts
from .run_dir import load_run

CSV_NAME, JSON_NAME, PNG_NAME = "acceptance_by_bucket.csv", "report.json", "acceptance.png"


def _bucket_counts(records: list[dict[str, Any]]) -> dict[str, Counts]:
    out: dict[str, Counts] = {}
    for r in records:
        for bucket, c in ((r.get("das") or {}).get("acceptance", {}).get("by_bucket", {})).items():
            acc = out.setdefault(bucket, Counts())
            acc.add(Counts(int(c["drafted"]), int(c["accepted"]), int(c["verify_steps"]), int(c["decode_steps"])))
    return out


def _step_ranges(steps: list[int], max_lines: int) -> list[tuple[int, int]]:
    steps = sorted(set(steps))
    size = max(1, -(-len(steps) // max_lines))
    return [(chunk[0], chunk[-1]) for chunk in (steps[i : i + size] for i in range(0, len(steps), size))]


def render(run_dir: str | Path, out_dir: str | Path | None = None, max_lines: int = 4, tensorboard: bool = True) -> dict[str, Path]:
    """Write the report files for ``run_dir`` (into ``out_dir`` or the run dir); returns paths."""
    meta, records = load_run(run_dir)
    out = Path(out_dir) if out_dir else Path(run_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"csv": out / CSV_NAME, "json": out / JSON_NAME, "png": out / PNG_NAME}

    by_mode: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in records:
        by_mode[r["mode"]].append(r)

    with open(paths["csv"], "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["mode", "step", "bucket", "drafted", "accepted", "verify_steps", "decode_steps", "acceptance_rate", "accepted_per_step"])
        for mode, recs in by_mode.items():
            for r in recs:
                for bucket, c in _bucket_counts([r]).items():
                    w.writerow([mode, r["step"], bucket, c.drafted, c.accepted, c.verify_steps, c.decode_steps,
                                f"{c.acceptance_rate:.4f}", f"{c.accepted_per_step:.4f}"])

    report = {"meta": meta, "modes": {}}
    for mode, recs in by_mode.items():
        report["modes"][mode] = {
            "steps": [
                {"step": r["step"], "rollout_seconds": r["rollout_seconds"], "output_tokens": r.get("output_tokens"),
                 "total": ((r.get("das") or {}).get("acceptance") or {}).get("total")}
                for r in recs
            ],
            "rollout_seconds_total": sum(r["rollout_seconds"] for r in recs),
            "by_bucket": {b: c.as_dict() for b, c in _bucket_counts(recs).items()},
        }
    modes = report["modes"]
    if "nospec" in modes:
        base = modes["nospec"]["rollout_seconds_total"]
        for m in modes.values():
            m["time_ratio_vs_nospec"] = m["rollout_seconds_total"] / base if base else None
    paths["json"].write_text(json.dumps(report, indent=2))

    _plot(by_mode, paths["png"], max_lines)
    if tensorboard:
        _tensorboard(by_mode, out / "tensorboard")
        paths["tensorboard"] = out / "tensorboard"
    return paths


def _plot(by_mode: dict[str, list[dict[str, Any]]], path: Path, max_lines: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(16, 4.5))
    for mode, recs in by_mode.items():
        if not any(r.get("das") for r in recs):
            continue
        for lo, hi in _step_ranges([r["step"] for r in recs], max_lines):
            counts = _bucket_counts([r for r in recs if lo <= r["step"] <= hi])
            labels = [b for b, c in counts.items() if c.drafted]  # buckets with drafts only
            if not labels:
                continue
            label = f"{mode} steps {lo}-{hi}" if lo != hi else f"{mode} step {lo}"
            axes[0].plot(labels, [counts[b].acceptance_rate for b in labels], marker="o", label=label)
            axes[1].plot(labels, [counts[b].accepted_per_step + 1 for b in labels], marker="o", label=label)
    axes[0].set(title="acceptance rate by response length", xlabel="response length bucket (tokens)", ylabel="accepted / drafted")
    axes[1].set(title="tokens per verify step by response length", xlabel="response length bucket (tokens)", ylabel="accepted + 1")
    for mode, recs in by_mode.items():
        axes[2].plot([r["step"] for r in recs], [r["rollout_seconds"] for r in recs], marker="o", label=mode)
    axes[2].set(title="rollout time per step", xlabel="step", ylabel="seconds")
    for ax in axes:
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _tensorboard(by_mode: dict[str, list[dict[str, Any]]], log_dir: Path) -> None:
    from torch.utils.tensorboard import SummaryWriter

    with SummaryWriter(str(log_dir)) as w:
        for mode, recs in by_mode.items():
            for r in recs:
                step = int(r["step"])
                w.add_scalar(f"das/{mode}/rollout_seconds", r["rollout_seconds"], step)
                acc = (r.get("das") or {}).get("acceptance") or {}
                if acc:
                    w.add_scalar(f"das/{mode}/acceptance_rate", acc["total"]["acceptance_rate"], step)
                    w.add_scalar(f"das/{mode}/accepted_per_step", acc["total"]["accepted_per_step"], step)
                    for bucket, c in acc.get("by_bucket", {}).items():
                        w.add_scalar(f"das/{mode}/bucket_{bucket}/accepted_per_step", c["accepted_per_step"], step)
