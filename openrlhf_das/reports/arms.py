"""Two arms of one OpenRLHF run (stock vs ``--das``), step by step: per-step rows, a summary with
das/nodas ratios and a reward-noise estimate, and a comparison plot.

Used by ``make demo`` (rollout-only on CPU) and ``benchmarks/gpu/grpo_plot.py`` (GRPO on GPU).
Input: OpenRLHF's per-step status dicts (``timing/generation`` in seconds,
``rollout/reward_mean``, ``rollout/response_length_mean`` in tokens, ...) keyed by global step
(1-based), and optionally the DAS run directory's step records (``reports.iter_records``),
lined up with OpenRLHF's steps by order. Rows hold the columns of :data:`COLUMNS`; episodes are numbered from 1.

Timing means leave out the first :data:`WARMUP_STEPS` step(s): an arm's first generation carries the
engine's cold start (kernel JIT and caches: on the H200 GRPO run of 2026-12-04 the first arm's
step 1 took 71 s, the second arm's 20 s, every later step ~5 s), so including it measures arm order.
Rewards and lengths keep every step.
"""

from __future__ import annotations

import csv
import json
import math
import statistics
from pathlib import Path
from typing import Any, Mapping, Sequence

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
           "das_accepted_per_draft", "das_drafted_tokens", "das_propose_s", "das_rollout_s", "das_boundary_s"]
WARMUP_STEPS = 1
"""Leading steps left out of the timing means (cold start, see the module docstring)."""


def das_columns(rec: Mapping[str, Any]) -> dict[str, Any]:
    """DAS columns of one DAS run-dir step record: drafted tokens, proposer seconds, acceptance
    rate (accepted / drafted), accepted tokens per verify step and the seconds of OpenRLHF's own
    generation call (``das_rollout_s``: what the DAS hook timed, without its step-boundary work)."""
    das = rec.get("das") or {}
    total = (das.get("acceptance") or {}).get("total") or {}  # openrlhf_das.policy.acceptance.Counts
    drafted, accepted, verify = total.get("drafted"), total.get("accepted"), total.get("verify_steps")
    col = {"das_drafted_tokens": drafted, "das_propose_s": das.get("propose_seconds"),
           "das_rollout_s": rec.get("rollout_seconds")}
    if drafted:
        col["das_accept_rate"] = (accepted or 0) / drafted
    if verify:
        col["das_accepted_per_draft"] = (accepted or 0) / verify
    return col


def step_rows(statuses: Mapping[int, Mapping[str, Any]], das_records: Sequence[Mapping[str, Any]],
              steps_per_episode: int) -> list[dict[str, Any]]:
    """One row per OpenRLHF step: the :data:`KEYS` columns, ``gen_s_per_1k_tokens`` and, for the
    DAS arm, the DAS columns of the run-dir record of the same order and ``das_boundary_s``: the
    step's generation time (OpenRLHF's ``timing/generation``) minus ``das_rollout_s``, i.e. the
    DAS step-boundary work in the trainer's critical path (snapshot push before the step, history
    hand-off after it)."""
    das_by_step = {int(r["step"]): r for r in das_records if "step" in r}
    # DAS numbers its steps itself; line them up with OpenRLHF's global steps (1-based) by order
    das_order = [das_by_step[s] for s in sorted(das_by_step)]
    rows = []
    for i, step in enumerate(sorted(statuses)):
        status = statuses[step]
        row: dict[str, Any] = {"step": step, "episode": (step - 1) // max(steps_per_episode, 1) + 1}
        for key, col in KEYS.items():
            if key in status and isinstance(status[key], (int, float)):
                row[col] = float(status[key])
        n = row.get("num_samples")
        if row.get("generation_s") and row.get("response_length") and n:
            row["gen_s_per_1k_tokens"] = row["generation_s"] / (row["response_length"] * n / 1000.0)
        if i < len(das_order):
            row.update(das_columns(das_order[i]))
            if row.get("generation_s") is not None and row.get("das_rollout_s") is not None:
                row["das_boundary_s"] = row["generation_s"] - row["das_rollout_s"]
        rows.append(row)
    return rows


def write_csv(data: dict, path: str | Path) -> None:
    """``data["steps"]`` (rows) as CSV with the :data:`COLUMNS`."""
    with open(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=COLUMNS, extrasaction="ignore")
        w.writeheader()
        for row in data["steps"]:
            w.writerow(row)


def mean_of(xs: list[float]) -> float | None:
    """Mean of the values that are not None/NaN (None when there are none)."""
    xs = [x for x in xs if x is not None and not math.isnan(x)]
    return statistics.fmean(xs) if xs else None


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def column(rows: list[dict], col: str, episodes: str = "all", skip: int = 0) -> list[float]:
    """Values of ``col`` in ``rows`` of episode 1 (``first``), later episodes or ``all``, leaving
    out steps ``<= skip``."""
    keep = {"all": lambda e: True, "first": lambda e: e == 1, "later": lambda e: e > 1}[episodes]
    return [r[col] for r in rows if col in r and keep(r["episode"]) and r["step"] > skip]


def summarize(nodas: dict, das: dict, warmup: int = WARMUP_STEPS) -> dict:
    """Per arm (``{"steps": rows, "steps_per_episode": n}``): mean generation seconds per step and
    per 1k generated tokens in episode 1 / later episodes / all (steps ``<= warmup`` left out),
    reward and length means, per-step reward std; das/nodas ratios; the per-step reward difference
    das - nodas (paired by step) with its standard error, which says how far apart the reward
    curves are beyond step-to-step noise."""
    out: dict[str, Any] = {"warmup_steps_left_out_of_timing": warmup, "arms": {}}
    for name, data in (("nodas", nodas), ("das", das)):
        rows = data["steps"]
        rew = column(rows, "reward")
        timed = {col: {e: mean_of(column(rows, col, e, skip=warmup)) for e in ("all", "first", "later")}
                 for col in ("generation_s", "gen_s_per_1k_tokens", "das_boundary_s")}
        out["arms"][name] = {
            "steps": len(rows),
            "episodes": max((r["episode"] for r in rows), default=0),
            "generation_s_mean": timed["generation_s"],
            "gen_s_per_1k_tokens_mean": timed["gen_s_per_1k_tokens"],
            "das_boundary_s_mean": timed["das_boundary_s"],
            "step_total_s_mean": mean_of(column(rows, "step_total_s", skip=warmup)),
            "response_length_mean": mean_of(column(rows, "response_length")),
            "reward_mean": mean_of(rew),
            "reward_step_std": statistics.stdev(rew) if len(rew) > 1 else None,
            "das_accept_rate_mean": mean_of(column(rows, "das_accept_rate")),
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
        "mean": mean_of(diffs),
        "std": statistics.stdev(diffs) if len(diffs) > 1 else None,
        "stderr": statistics.stdev(diffs) / math.sqrt(len(diffs)) if len(diffs) > 1 else None,
    }
    return out


def plot(nodas: dict, das: dict, prefix: str, title: str = "GRPO", warmup: int = WARMUP_STEPS) -> dict:
    """``PREFIX.json`` (:func:`summarize`) and ``PREFIX.png`` (reward, length, generation time per step,
    both arms; dotted lines at episode boundaries; the timing panels leave out steps ``<= warmup``);
    returns the summary."""
    summary = summarize(nodas, das, warmup)
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
            skip = warmup if col in ("generation_s", "gen_s_per_1k_tokens") else 0
            xs = [r["step"] for r in data["steps"] if col in r and r["step"] > skip]
            ys = [r[col] for r in data["steps"] if col in r and r["step"] > skip]
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
    axes[0].set_title(f"{title}, DAS vs stock: generation time das/nodas = {fmt(r['all'])} "
                      f"(episode 1: {fmt(r['first'])}, later: {fmt(r['later'])}; timing from step {warmup + 1})",
                      fontsize=9)
    axes[-1].set_xlabel("step (dotted: episode boundaries)")
    fig.tight_layout()
    fig.savefig(f"{prefix}.png", dpi=110)
    plt.close(fig)
    return summary
