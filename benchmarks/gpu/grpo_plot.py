"""Per-step numbers of the GRPO comparison runs (benchmarks/gpu/grpo_compare.sh) and their plot.

    grpo_plot.py extract --arm das --log train.log [--tb TB_DIR] [--das-run-dir DIR]
                         --steps-per-episode 6 --out steps.json      (also writes steps.csv)
    grpo_plot.py plot --nodas nodas/steps.json --das das/steps.json --out PREFIX
                                                                     (PREFIX.png + PREFIX.json)

``extract`` reads OpenRLHF's per-step status from the driver log (the ``✨ Global step N: {...}``
lines the PPO trainer prints; Ray forwards them) and, when given and readable, its TensorBoard
events (``train/timing/generation``, ``train/rollout/reward_mean``, ...; these win where both
have a step). DAS's ``RUN_DIR/steps.jsonl`` adds acceptance per step for the DAS arm. Stdlib only
(TensorBoard is optional); matplotlib only for ``plot``.

``plot`` summary (JSON): per arm, mean generation seconds per step in episode 1 and in later
episodes, and the same per 1k generated tokens (responses differ in length between arms once the
policies diverge); das/nodas ratios; reward means with a noise estimate: the per-step reward
difference das - nodas (paired by step), its mean, its standard error (std/sqrt(n)) and each arm's
per-step reward std.
"""

from __future__ import annotations

import argparse
import ast
import csv
import json
import math
import os
import re
import statistics
import sys
from pathlib import Path
from typing import Any

# OpenRLHF status key -> column
KEYS = {
    "timing/generation": "generation_s",
    "rollout/reward_mean": "reward",
    "rollout/response_length_mean": "response_length",
    "rollout/num_samples": "num_samples",
    "rollout/truncated_rate": "truncated_rate",
    "timing/step_total": "step_total_s",
    "timing/make_experience": "make_experience_s",
    "timing/ppo_train": "ppo_train_s",
    "timing/broadcast": "broadcast_s",
    "policy_loss": "policy_loss",
}
COLUMNS = ["step", "episode", *KEYS.values(), "gen_s_per_1k_tokens", "das_accept_rate",
           "das_accepted_per_draft", "das_drafted_tokens", "das_propose_s"]
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


def from_das_run_dir(run_dir: str | Path) -> list[dict[str, Any]]:
    path = Path(run_dir) / "steps.jsonl"
    if not path.is_file():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue  # a torn last line
    return out


def _das_columns(rec: dict[str, Any]) -> dict[str, Any]:
    das = rec.get("das") or {}
    total = (das.get("acceptance") or {}).get("total") or {}  # openrlhf_das.policy.acceptance.Counts
    drafted, accepted, verify = total.get("drafted"), total.get("accepted"), total.get("verify_steps")
    col = {"das_drafted_tokens": drafted, "das_propose_s": das.get("propose_seconds")}
    if drafted:
        col["das_accept_rate"] = (accepted or 0) / drafted
    if verify:
        col["das_accepted_per_draft"] = (accepted or 0) / verify
    return col


def extract(arm: str, log: str | None, tb: str | None, das_run_dir: str | None, steps_per_episode: int) -> dict:
    merged: dict[int, dict[str, Any]] = {}
    for source in ((from_log(log) if log and os.path.exists(log) else {}),
                   (from_tensorboard(tb) if tb and os.path.isdir(tb) else {})):
        for step, status in source.items():
            merged.setdefault(step, {}).update(status)
    das_records = from_das_run_dir(das_run_dir) if das_run_dir else []
    das_by_step = {int(r["step"]): r for r in das_records if "step" in r}
    # DAS numbers its steps itself; line them up with OpenRLHF's global steps (1-based) by order
    das_order = [das_by_step[s] for s in sorted(das_by_step)]
    rows = []
    for i, step in enumerate(sorted(merged)):
        status = merged[step]
        row: dict[str, Any] = {"step": step, "episode": (step - 1) // max(steps_per_episode, 1) + 1}
        for key, col in KEYS.items():
            if key in status and isinstance(status[key], (int, float)):
                row[col] = float(status[key])
        n = row.get("num_samples")
        if row.get("generation_s") and row.get("response_length") and n:
            row["gen_s_per_1k_tokens"] = row["generation_s"] / (row["response_length"] * n / 1000.0)
        if i < len(das_order):
            row.update(_das_columns(das_order[i]))
        rows.append(row)
    return {"arm": arm, "steps_per_episode": steps_per_episode, "steps": rows,
            "das_steps": [{k: r.get(k) for k in ("step", "mode", "rollout_seconds", "output_tokens")}
                          | {"das": _das_columns(r)} for r in das_records]}


def write_csv(data: dict, path: str | Path) -> None:
    with open(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=COLUMNS, extrasaction="ignore")
        w.writeheader()
        for row in data["steps"]:
            w.writerow(row)


# ---------------------------------------------------------------------- summary + plot
def _mean(xs: list[float]) -> float | None:
    xs = [x for x in xs if x is not None and not math.isnan(x)]
    return statistics.fmean(xs) if xs else None


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def _col(rows: list[dict], col: str, episodes: str = "all") -> list[float]:
    keep = {"all": lambda e: True, "first": lambda e: e == 1, "later": lambda e: e > 1}[episodes]
    return [r[col] for r in rows if col in r and keep(r["episode"])]


def summarize(nodas: dict, das: dict) -> dict:
    out: dict[str, Any] = {"arms": {}}
    for name, data in (("nodas", nodas), ("das", das)):
        rows = data["steps"]
        rew = _col(rows, "reward")
        out["arms"][name] = {
            "steps": len(rows),
            "episodes": max((r["episode"] for r in rows), default=0),
            "generation_s_mean": {e: _mean(_col(rows, "generation_s", e)) for e in ("all", "first", "later")},
            "gen_s_per_1k_tokens_mean": {e: _mean(_col(rows, "gen_s_per_1k_tokens", e)) for e in ("all", "first", "later")},
            "step_total_s_mean": _mean(_col(rows, "step_total_s")),
            "response_length_mean": _mean(_col(rows, "response_length")),
            "reward_mean": _mean(rew),
            "reward_step_std": statistics.stdev(rew) if len(rew) > 1 else None,
            "das_accept_rate_mean": _mean(_col(rows, "das_accept_rate")),
        }
    a, b = out["arms"]["das"], out["arms"]["nodas"]
    out["ratio_das_over_nodas"] = {
        "generation_s": {e: _ratio(a["generation_s_mean"][e], b["generation_s_mean"][e]) for e in ("all", "first", "later")},
        "gen_s_per_1k_tokens": {e: _ratio(a["gen_s_per_1k_tokens_mean"][e], b["gen_s_per_1k_tokens_mean"][e])
                                for e in ("all", "first", "later")},
    }
    by_step = {r["step"]: r for r in nodas["steps"]}
    diffs = [r["reward"] - by_step[r["step"]]["reward"] for r in das["steps"]
             if "reward" in r and r["step"] in by_step and "reward" in by_step[r["step"]]]
    out["reward_diff_das_minus_nodas"] = {
        "paired_steps": len(diffs),
        "mean": _mean(diffs),
        "std": statistics.stdev(diffs) if len(diffs) > 1 else None,
        "stderr": statistics.stdev(diffs) / math.sqrt(len(diffs)) if len(diffs) > 1 else None,
    }
    return out


def plot(nodas: dict, das: dict, prefix: str) -> dict:
    summary = summarize(nodas, das)
    Path(prefix).parent.mkdir(parents=True, exist_ok=True)
    with open(f"{prefix}.json", "w") as fh:
        json.dump(summary, fh, indent=2)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [("reward", "reward (mean over samples)"), ("response_length", "response length (tokens)"),
              ("generation_s", "generation time (s/step)"), ("gen_s_per_1k_tokens", "generation s per 1k tokens")]
    fig, axes = plt.subplots(len(panels), 1, figsize=(9, 2.6 * len(panels)), sharex=True)
    for ax, (col, label) in zip(axes, panels):
        for name, data, style in (("nodas", nodas, "-o"), ("das", das, "-s")):
            xs = [r["step"] for r in data["steps"] if col in r]
            ys = [r[col] for r in data["steps"] if col in r]
            ax.plot(xs, ys, style, ms=3, lw=1.2, label=name)
        spe = nodas.get("steps_per_episode") or das.get("steps_per_episode") or 0
        last = max([r["step"] for d in (nodas, das) for r in d["steps"]], default=0)
        for e in range(1, (last - 1) // spe + 1 if spe else 0):
            ax.axvline(e * spe + 0.5, color="grey", lw=0.6, ls=":")
        ax.set_ylabel(label, fontsize=8)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    r = summary["ratio_das_over_nodas"]["generation_s"]
    fmt = lambda v: "n/a" if v is None else f"{v:.2f}"  # noqa: E731
    axes[0].set_title(f"GRPO, DAS vs stock: generation time das/nodas = {fmt(r['all'])} "
                      f"(episode 1: {fmt(r['first'])}, later: {fmt(r['later'])})", fontsize=9)
    axes[-1].set_xlabel("step (dotted: episode boundaries)")
    fig.tight_layout()
    fig.savefig(f"{prefix}.png", dpi=110)
    plt.close(fig)
    return summary


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
        gen = _mean(_col(rows, "generation_s"))
        print(f"[grpo_plot] {a.arm}: {len(rows)} steps -> {a.out}; mean generation "
              f"{'n/a' if gen is None else f'{gen:.2f} s'}/step, reward {_mean(_col(rows, 'reward'))}")
        return 0 if rows else 1
    nodas, das = (json.loads(Path(x).read_text()) for x in (a.nodas, a.das))
    summary = plot(nodas, das, a.out)
    print(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
