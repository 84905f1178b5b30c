"""Per-step numbers of the GRPO comparison runs (benchmarks/gpu/grpo_compare.sh) and their plot.

    grpo_plot.py extract --arm das --log train.log [--tb TB_DIR] [--das-run-dir DIR]
                         --steps-per-episode 6 --out steps.json      (also writes steps.csv)
    grpo_plot.py plot --nodas nodas/steps.json --das das/steps.json --out PREFIX
                                                                     (PREFIX.png + PREFIX.json)

``extract`` reads OpenRLHF's per-step status from the driver log (the ``✨ Global step N: {...}``
lines the PPO trainer prints; Ray forwards them) and, when given and readable, its TensorBoard
events (``train/timing/generation``, ``train/rollout/reward_mean``, ...; these win where both
have a step). DAS's ``RUN_DIR/steps.jsonl`` adds acceptance per step for the DAS arm. Rows,
summary and plot: ``openrlhf_das.reports.arms`` (also behind ``make demo``); TensorBoard is
optional, matplotlib needed only for ``plot``.

``plot`` summary (JSON): per arm, mean generation seconds per step in episode 1 and in later
episodes, and the same per 1k generated tokens (responses differ in length between arms once the
policies diverge); das/nodas ratios; reward means with a noise estimate: the per-step reward
difference das - nodas (paired by step), its mean, its standard error (std/sqrt(n)) and each arm's
per-step reward std.
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import re
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # this checkout's openrlhf_das
from openrlhf_das.reports import iter_records  # noqa: E402
from openrlhf_das.reports.arms import column, das_columns, mean_of, plot, step_rows, write_csv  # noqa: E402

_STEP_LINE = re.compile(r"Global step (\d+): (\{.*\})\s*$")


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
    steps: dict[int, dict[str, Any]] = {}
    with open(path, encoding="utf-8", errors="replace") as fh:
        for line in fh:
            m = _STEP_LINE.search(line.rstrip("\n"))
            if not m:
                continue
            try:
                status = _literal(m.group(2))
            except (ValueError, SyntaxError):
                continue
            steps[int(m.group(1))] = status  # a resumed run repeats steps: the last one wins
    return steps


def from_tensorboard(tb_dir: str | Path) -> dict[int, dict[str, Any]]:
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


def extract(arm: str, log: str | None, tb: str | None, das_run_dir: str | None, steps_per_episode: int) -> dict:
    """Per-step rows of one arm (``openrlhf_das.reports.arms.step_rows``) from its driver log,
    TensorBoard events (these win where both have a step) and DAS run directory."""
    merged: dict[int, dict[str, Any]] = {}
    for source in ((from_log(log) if log and os.path.exists(log) else {}),
                   (from_tensorboard(tb) if tb and os.path.isdir(tb) else {})):
        for step, status in source.items():
            merged.setdefault(step, {}).update(status)
    das_records = list(iter_records(das_run_dir)) if das_run_dir else []
    return {"arm": arm, "steps_per_episode": steps_per_episode,
            "steps": step_rows(merged, das_records, steps_per_episode),
            "das_steps": [{k: r.get(k) for k in ("step", "mode", "rollout_seconds", "output_tokens")}
                          | {"das": das_columns(r)} for r in das_records]}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    e = sub.add_parser("extract")
    e.add_argument("--arm", required=True)
    e.add_argument("--log")
    e.add_argument("--tb")
    e.add_argument("--das-run-dir")
    e.add_argument("--steps-per-episode", type=int, required=True)
    e.add_argument("--out", required=True, help="steps.json (steps.csv is written next to it)")
    q = sub.add_parser("plot")
    q.add_argument("--nodas", required=True)
    q.add_argument("--das", required=True)
    q.add_argument("--out", required=True, help="output prefix: PREFIX.png, PREFIX.json")
    a = p.parse_args(argv)
    if a.cmd == "extract":
        data = extract(a.arm, a.log, a.tb, a.das_run_dir, a.steps_per_episode)
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        Path(a.out).write_text(json.dumps(data, indent=1))
        write_csv(data, Path(a.out).with_suffix(".csv"))
        rows = data["steps"]
        gen = mean_of(column(rows, "generation_s"))
        print(f"[grpo_plot] {a.arm}: {len(rows)} steps -> {a.out}; mean generation "
              f"{'n/a' if gen is None else f'{gen:.2f} s'}/step, reward {mean_of(column(rows, 'reward'))}")
        return 0 if rows else 1
    nodas, das = (json.loads(Path(x).read_text()) for x in (a.nodas, a.das))
    summary = plot(nodas, das, a.out)
    print(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
