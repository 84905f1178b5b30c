"""Render a run directory: ``acceptance_by_bucket.csv``, ``report.json``, ``acceptance.png``
and TensorBoard scalars under ``das/...`` (optionally the same scalars to a W&B run).

Statistics follow :mod:`openrlhf_das.policy.acceptance`: ``acceptance_rate = accepted /
drafted``, ``accepted_per_step = accepted / verify_steps`` (accepted draft tokens per verify
step; tokens per verify step = that + 1). Sums over engines and steps are of counts, never of
rates (:mod:`openrlhf_das.ray.aggregate`). Steps are grouped into at most ``max_lines``
step ranges for the plot. Records whose ``rollout_seconds`` is null (unknown) are left out of
time totals and the time plot.

Outputs (in ``out_dir``, default the run directory):

* ``acceptance_by_bucket.csv``: one row per (mode, step, bucket) with counts and both rates;
* ``report.json``: ``{"meta", "modes": {mode: {"steps": [...], "by_bucket", "by_class",
  "total", "rollout_seconds_total", "steps_with_time", "time_ratio_vs_nospec"?}}}``;
* ``acceptance.png``: acceptance rate and accepted tokens per verify step vs response-length
  bucket (one line per step range), rollout time per step per mode (and the drafter's CPU
  time, where recorded);
* ``tensorboard/<mode>/``: the scalars of :func:`openrlhf_das.ray.scalars.step_scalars`.
"""

from __future__ import annotations

import csv
import json
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

from ..ray.aggregate import counts_of, merge_acceptance
from ..ray.run_dir import load_run
from ..ray.scalars import step_scalars

CSV_NAME, JSON_NAME, PNG_NAME = "acceptance_by_bucket.csv", "report.json", "acceptance.png"


def _acceptance(records: list[dict[str, Any]]) -> dict[str, Any]:
    return merge_acceptance((r.get("das") or {}).get("acceptance") for r in records)


def _step_ranges(steps: list[int], max_lines: int) -> list[tuple[int, int]]:
    steps = sorted(set(steps))
    size = max(1, -(-len(steps) // max_lines))
    return [(chunk[0], chunk[-1]) for chunk in (steps[i : i + size] for i in range(0, len(steps), size))]


def render(
    run_dir: str | Path,
    out_dir: str | Path | None = None,
    max_lines: int = 4,
    tensorboard: bool = True,
    wandb_run: Any = None,
) -> dict[str, Path]:
    """Write the report files for ``run_dir`` (into ``out_dir`` or the run dir); returns paths.

    ``wandb_run``: an already initialised W&B run (anything with ``log(dict, step=int)``);
    wandb is never imported here. Raises :class:`~openrlhf_das.reports.RunDirError` for a
    missing, foreign or empty run directory.
    """
    meta, records = load_run(run_dir)
    out = Path(out_dir) if out_dir else Path(run_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"csv": out / CSV_NAME, "json": out / JSON_NAME, "png": out / PNG_NAME}

    by_mode: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in sorted(records, key=lambda r: int(r["step"])):
        by_mode[r["mode"]].append(r)

    _write_csv(by_mode, paths["csv"])
    paths["json"].write_text(json.dumps(_report(meta, by_mode), indent=2))
    _plot(by_mode, paths["png"], max_lines)
    if tensorboard:
        _tensorboard(by_mode, out / "tensorboard")
        paths["tensorboard"] = out / "tensorboard"
    if wandb_run is not None:
        _wandb(by_mode, wandb_run)
    return paths


def _write_csv(by_mode: dict[str, list[dict[str, Any]]], path: Path) -> None:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["mode", "step", "bucket", "drafted", "accepted", "verify_steps", "decode_steps",
                    "acceptance_rate", "accepted_per_step"])
        for mode, recs in by_mode.items():
            for r in recs:
                for bucket, d in _acceptance([r])["by_bucket"].items():
                    c = counts_of(d)
                    w.writerow([mode, r["step"], bucket, c.drafted, c.accepted, c.verify_steps, c.decode_steps,
                                f"{c.acceptance_rate:.4f}", f"{c.accepted_per_step:.4f}"])


def _report(meta: dict[str, Any], by_mode: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    modes: dict[str, Any] = {}
    for mode, recs in by_mode.items():
        timed = [r for r in recs if r.get("rollout_seconds") is not None]
        acc = _acceptance(recs)
        steps = []
        for r in recs:
            das = r.get("das") or {}
            steps.append({
                "step": r["step"],
                "rollout_seconds": r.get("rollout_seconds"),
                "output_tokens": r.get("output_tokens"),
                "total": (das.get("acceptance") or {}).get("total"),
                "by_class": (das.get("acceptance") or {}).get("by_class"),
                "engine_history": das.get("history"),
                "actor_history": r.get("history"),
                "faults": {k: das[k] for k in ("faults", "engine_faults", "bad_metadata") if k in das},
                "propose_seconds": das.get("propose_seconds"),
                "classes": r.get("classes"),
                "errors": r.get("errors") or [],
            })
        modes[mode] = {
            "steps": steps,
            "total": acc["total"],
            "by_bucket": acc["by_bucket"],
            "by_class": acc["by_class"],
            "rollout_seconds_total": sum(r["rollout_seconds"] for r in timed) if timed else None,
            "steps_with_time": sorted(int(r["step"]) for r in timed),
        }
    base = modes.get("nospec")
    if base and base["rollout_seconds_total"]:
        for m in modes.values():
            same = m["steps_with_time"] == base["steps_with_time"]
            total = m["rollout_seconds_total"]
            m["time_ratio_vs_nospec"] = total / base["rollout_seconds_total"] if same and total is not None else None
    return {"meta": meta, "modes": modes}


def _plot(by_mode: dict[str, list[dict[str, Any]]], path: Path, max_lines: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    fig, axes = plt.subplots(1, 3, figsize=(16, 4.5))
    for mode, recs in by_mode.items():
        with_das = [r for r in recs if r.get("das")]
        for lo, hi in _step_ranges([r["step"] for r in with_das], max_lines):
            counts = _acceptance([r for r in with_das if lo <= r["step"] <= hi])["by_bucket"]
            labels = [b for b, c in counts.items() if c["drafted"]]  # buckets with drafts only
            if not labels:
                continue
            label = f"{mode} steps {lo}-{hi}" if lo != hi else f"{mode} step {lo}"
            axes[0].plot(labels, [counts[b]["acceptance_rate"] for b in labels], marker="o", label=label)
            axes[1].plot(labels, [counts[b]["accepted_per_step"] for b in labels], marker="o", label=label)
    axes[0].set(title="acceptance rate by response length", xlabel="response length bucket (tokens)",
                ylabel="accepted / drafted")
    axes[1].set(title="accepted draft tokens per verify step", xlabel="response length bucket (tokens)",
                ylabel="accepted tokens / verify step")
    for mode, recs in by_mode.items():
        timed = [r for r in recs if r.get("rollout_seconds") is not None]
        if timed:
            axes[2].plot([r["step"] for r in timed], [r["rollout_seconds"] for r in timed], marker="o",
                         label=f"{mode} rollout")
        drafter = [r for r in recs if (r.get("das") or {}).get("propose_seconds") is not None]
        if drafter:
            axes[2].plot([r["step"] for r in drafter],
                         [r["das"].get("propose_seconds_max", r["das"]["propose_seconds"]) for r in drafter],
                         linestyle="--", marker=".", label=f"{mode} drafter CPU")
    axes[2].set(title="rollout time per step", xlabel="step", ylabel="seconds")
    axes[2].xaxis.set_major_locator(MaxNLocator(integer=True))
    for ax in axes:
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=7)
        else:
            ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes, color="gray")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _tensorboard(by_mode: dict[str, list[dict[str, Any]]], log_dir: Path) -> None:
    """One TensorBoard run per mode (``log_dir/<mode>``), so modes overlay on the same tags.

    Event files of an earlier render are replaced (the report is a function of the run
    directory). Uses tensorboard's own event writer (no torch/TensorFlow import)."""
    from tensorboard.compat.proto.event_pb2 import Event
    from tensorboard.compat.proto.summary_pb2 import Summary
    from tensorboard.summary.writer.event_file_writer import EventFileWriter

    for mode, recs in by_mode.items():
        (log_dir / mode).mkdir(parents=True, exist_ok=True)
        for old in (log_dir / mode).glob("events.out.tfevents.*"):
            old.unlink()
        writer = EventFileWriter(str(log_dir / mode))
        try:
            for r in recs:
                values = [Summary.Value(tag=t, simple_value=v) for t, v in step_scalars(r).items()]
                writer.add_event(Event(wall_time=float(r.get("wall_time") or time.time()), step=int(r["step"]),
                                       summary=Summary(value=values)))
        finally:
            writer.close()


def _wandb(by_mode: dict[str, list[dict[str, Any]]], run: Any) -> None:
    """Log the scalars to a W&B run; tags get the mode (``das/<mode>/...``) when there are several."""
    several = len(by_mode) > 1
    for mode, recs in by_mode.items():
        for r in recs:
            scalars = step_scalars(r)
            if several:
                scalars = {f"das/{mode}/{k[len('das/'):]}": v for k, v in scalars.items()}
            run.log(scalars, step=int(r["step"]))
