"""Two arms of one OpenRLHF run (stock vs ``--das``), step by step: per-step rows, a summary with
das/nodas ratios and a reward-noise estimate, and a comparison plot.

Used by ``openrlhf-das report --stock A --das B``, ``make demo`` (rollout-only on CPU) and
``benchmarks/gpu/grpo_plot.py`` (GRPO on GPU); reading the arms' files is
:mod:`openrlhf_das.reports.openrlhf_logs`. The summary's ``targets`` are issue 22's quantities
(:func:`targets`): generation-time ratio after the first episode, the history-wait share of
generation at the last step, paired per-step reward and response-length differences.
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
    "rollout/reward_std": "reward_std",
    "rollout/response_length_mean": "response_length",
    "rollout/num_samples": "num_samples",
    "rollout/truncated_rate": "truncated_rate",
    "timing/step_total": "step_total_s",
    "timing/make_experience": "make_experience_s",
    "timing/ppo_train": "ppo_train_s",
    "timing/broadcast": "broadcast_s",
    "policy_loss": "policy_loss",
    # partial rollouts (DAS arm): weight versions of each sample's tokens, averaged over samples
    # (openrlhf_das.integrations.openrlhf.partial.version_info, logged through Experience.info)
    "das_weight_version_min": "weight_version_min",
    "das_weight_version_max": "weight_version_max",
    "das_off_policy": "off_policy_frac",
    "das_stale_token_frac": "stale_token_frac",
}
COLUMNS = ["step", "episode", *KEYS.values(), "gen_s_per_1k_tokens", "das_accept_rate",
           "das_accepted_per_draft", "das_drafted_tokens", "das_propose_s", "das_rollout_s", "das_boundary_s",
           "history_wait_share", "das_history_tokens"]
"""Fixed CSV columns; per-bucket acceptance adds ``das_drafted[<bucket>]``, ``das_accepted[<bucket>]``
and ``das_accept_rate[<bucket>]`` for each response-length bucket the DAS run recorded (labels of
``DASConfig.length_buckets``, which ``openrlhf-das-train`` spreads over ``--rollout.max_new_tokens``)."""
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
    tokens = (das.get("history") or {}).get("tokens")
    if tokens is not None:
        col["das_history_tokens"] = tokens
    for label, c in ((das.get("acceptance") or {}).get("by_bucket") or {}).items():
        if c.get("drafted"):
            col[f"das_drafted[{label}]"] = c["drafted"]
            col[f"das_accepted[{label}]"] = c.get("accepted", 0)
            col[f"das_accept_rate[{label}]"] = c.get("accepted", 0) / c["drafted"]
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
                if row["generation_s"] > 0:
                    row["history_wait_share"] = row["das_boundary_s"] / row["generation_s"]
        rows.append(row)
    return rows


def bucket_columns(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """The per-bucket acceptance columns present in ``rows``, buckets in first-seen order."""
    labels: list[str] = []
    for r in rows:
        for k in r:
            if k.startswith("das_drafted[") and k[len("das_drafted["):-1] not in labels:
                labels.append(k[len("das_drafted["):-1])
    return [f"{c}[{b}]" for b in labels for c in ("das_drafted", "das_accepted", "das_accept_rate")]


def bucket_labels(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """Response-length buckets with drafts in ``rows`` (first-seen order)."""
    return [c[len("das_drafted["):-1] for c in bucket_columns(rows) if c.startswith("das_drafted[")]


def write_csv(data: dict, path: str | Path) -> None:
    """``data["steps"]`` (rows) as CSV with the :data:`COLUMNS` and the per-bucket columns."""
    with open(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=COLUMNS + bucket_columns(data["steps"]), extrasaction="ignore")
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


def paired_difference(a_rows: list[dict], b_rows: list[dict], col: str) -> dict[str, Any]:
    """Per-step difference ``a - b`` of ``col`` over the steps both have: ``paired_steps``,
    ``mean``, ``std``, ``stderr`` (std / sqrt(n)) and ``within_2se`` (``|mean| <= 2 stderr``:
    the curves differ by no more than step-to-step noise; None with fewer than 2 steps)."""
    by_step = {r["step"]: r for r in b_rows if r.get(col) is not None}
    diffs = [r[col] - by_step[r["step"]][col] for r in a_rows if r.get(col) is not None and r["step"] in by_step]
    diffs = [d for d in diffs if not math.isnan(d)]
    std = statistics.stdev(diffs) if len(diffs) > 1 else None
    se = std / math.sqrt(len(diffs)) if std is not None else None
    mean = mean_of(diffs)
    return {"paired_steps": len(diffs), "mean": mean, "std": std, "stderr": se,
            "within_2se": None if se is None or mean is None else abs(mean) <= 2 * se}


def acceptance_by_bucket(rows: Sequence[Mapping[str, Any]], skip: int = 0) -> dict[str, dict[str, Any]]:
    """Drafted / accepted tokens and acceptance rate per response-length bucket, summed over
    the rows of steps ``> skip`` (rates from the sums)."""
    out: dict[str, dict[str, Any]] = {}
    for b in bucket_labels(rows):
        drafted = sum(r.get(f"das_drafted[{b}]", 0) for r in rows if r["step"] > skip)
        accepted = sum(r.get(f"das_accepted[{b}]", 0) for r in rows if r["step"] > skip)
        out[b] = {"drafted": drafted, "accepted": accepted, "acceptance_rate": accepted / drafted if drafted else None}
    return out


TARGET_GENERATION_RATIO = 0.80
"""Issue 22: DAS generation time per step after the first episode, as a share of stock's (0.85
for the partial-rollout pair)."""
TARGET_HISTORY_WAIT_SHARE = 0.02
"""Issue 22: step-boundary history wait at the last step, as a share of its generation time."""


def targets(nodas: dict, das: dict, warmup: int = WARMUP_STEPS, generation_ratio: float = TARGET_GENERATION_RATIO,
            history_wait_share: float = TARGET_HISTORY_WAIT_SHARE) -> dict[str, Any]:
    """Issue 22's quantities: the generation-time ratio das/stock over the steps after the first
    episode (steps ``<= warmup`` left out), the history-wait share of generation at the DAS arm's
    last step, and the paired per-step differences das - stock of reward mean and response
    length (mean, standard error, within 2 SE of zero), each with its target and whether it is met."""
    later = _ratio(mean_of(column(das["steps"], "generation_s", "later", skip=warmup)),
                   mean_of(column(nodas["steps"], "generation_s", "later", skip=warmup)))
    with_wait = [r for r in das["steps"] if r.get("das_boundary_s") is not None and r.get("generation_s")]
    last = dict(with_wait[-1]) if with_wait else None
    if last is not None:  # steps.json files written before the share column have the two times
        last["history_wait_share"] = last["das_boundary_s"] / last["generation_s"]
    reward = paired_difference(das["steps"], nodas["steps"], "reward")
    length = paired_difference(das["steps"], nodas["steps"], "response_length")
    return {
        "generation_s_ratio_after_episode_1": {
            "value": later, "target_max": generation_ratio, "met": None if later is None else later <= generation_ratio,
            "steps": {arm: len(column(d["steps"], "generation_s", "later", skip=warmup)) for arm, d in
                      (("nodas", nodas), ("das", das))}},
        "history_wait_share_last_step": {
            "step": None if last is None else last["step"],
            "value": None if last is None else last["history_wait_share"],
            "wait_s": None if last is None else last["das_boundary_s"],
            "generation_s": None if last is None else last["generation_s"],
            "target_max": history_wait_share,
            "met": None if last is None else last["history_wait_share"] <= history_wait_share},
        "reward_mean_diff_das_minus_nodas": reward,
        "response_length_diff_das_minus_nodas": length,
        "curves_within_noise": None if reward["within_2se"] is None or length["within_2se"] is None
        else bool(reward["within_2se"] and length["within_2se"]),
    }


def summarize(nodas: dict, das: dict, warmup: int = WARMUP_STEPS, **target_kw: float) -> dict:
    """Per arm (``{"steps": rows, "steps_per_episode": n}``): mean generation seconds per step and
    per 1k generated tokens in episode 1 / later episodes / all (steps ``<= warmup`` left out),
    reward and length means, per-step reward std, acceptance per bucket; das/nodas ratios; the
    per-step reward difference das - nodas (paired by step) with its standard error, which says
    how far apart the reward curves are beyond step-to-step noise; and :func:`targets`."""
    out: dict[str, Any] = {"warmup_steps_left_out_of_timing": warmup, "arms": {}}
    for name, data in (("nodas", nodas), ("das", das)):
        rows = data["steps"]
        rew = column(rows, "reward")
        timed = {col: {e: mean_of(column(rows, col, e, skip=warmup)) for e in ("all", "first", "later")}
                 for col in ("generation_s", "gen_s_per_1k_tokens", "das_boundary_s")}
        out["arms"][name] = {
            "steps": len(rows),
            "episodes": max((r["episode"] for r in rows), default=0),
            "steps_per_episode": data.get("steps_per_episode"),
            "generation_s_mean": timed["generation_s"],
            "gen_s_per_1k_tokens_mean": timed["gen_s_per_1k_tokens"],
            "das_boundary_s_mean": timed["das_boundary_s"],
            "step_total_s_mean": mean_of(column(rows, "step_total_s", skip=warmup)),
            "response_length_mean": mean_of(column(rows, "response_length")),
            "reward_mean": mean_of(rew),
            "reward_step_std": statistics.stdev(rew) if len(rew) > 1 else None,
            "reward_within_step_std_mean": mean_of(column(rows, "reward_std")),
            "das_accept_rate_mean": mean_of(column(rows, "das_accept_rate")),
            "acceptance_by_bucket": acceptance_by_bucket(rows),
            "weight_version_lag_max": max((r["weight_version_max"] - r["weight_version_min"] for r in rows
                                           if "weight_version_max" in r and "weight_version_min" in r), default=None),
        }
    a, b = out["arms"]["das"], out["arms"]["nodas"]
    out["ratio_das_over_nodas"] = {
        "generation_s": {e: _ratio(a["generation_s_mean"][e], b["generation_s_mean"][e]) for e in ("all", "first", "later")},
        "gen_s_per_1k_tokens": {e: _ratio(a["gen_s_per_1k_tokens_mean"][e], b["gen_s_per_1k_tokens_mean"][e])
                                for e in ("all", "first", "later")},
    }
    reward = paired_difference(das["steps"], nodas["steps"], "reward")
    out["reward_diff_das_minus_nodas"] = {k: reward[k] for k in ("paired_steps", "mean", "std", "stderr")}
    out["targets"] = targets(nodas, das, warmup, **target_kw)
    return out


def plot(nodas: dict, das: dict, prefix: str, title: str = "GRPO", warmup: int = WARMUP_STEPS,
         **target_kw: float) -> dict:
    """``PREFIX.json`` (:func:`summarize`) and ``PREFIX.png``, both arms per step: reward mean
    (band: the within-step reward std), response length, generation time with the DAS arm's
    step-boundary history wait (dashed), generation time per 1k tokens, DAS acceptance per
    response-length bucket and, for partial rollouts, the weight versions of the step's tokens.
    Dotted lines mark episode boundaries; timing panels leave out steps ``<= warmup``. Returns
    the summary."""
    summary = summarize(nodas, das, warmup, **target_kw)
    Path(prefix).parent.mkdir(parents=True, exist_ok=True)
    with open(f"{prefix}.json", "w") as fh:
        json.dump(summary, fh, indent=2)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    arms = (("nodas", nodas, "-o", "C0"), ("das", das, "-s", "C1"))
    buckets = bucket_labels(das["steps"])
    versions = any("weight_version_max" in r for _, d, _, _ in arms for r in d["steps"])
    panels = ["reward", "response_length", "generation_s", "gen_s_per_1k_tokens"]
    panels += ["buckets"] if buckets else []
    panels += ["versions"] if versions else []
    fig, axes = plt.subplots(len(panels), 1, figsize=(9, 2.6 * len(panels)), sharex=True)

    def series(data: dict, col: str, skip: int = 0) -> tuple[list[int], list[float]]:
        rows = [r for r in data["steps"] if r.get(col) is not None and r["step"] > skip]
        return [r["step"] for r in rows], [r[col] for r in rows]

    for ax, panel in zip(axes, panels):
        if panel in ("reward", "response_length", "generation_s", "gen_s_per_1k_tokens"):
            skip = warmup if panel in ("generation_s", "gen_s_per_1k_tokens") else 0
            for name, data, style, color in arms:
                xs, ys = series(data, panel, skip)
                ax.plot(xs, ys, style, ms=3, lw=1.2, color=color, label=name)
                if panel == "reward":
                    rows = [r for r in data["steps"] if r.get("reward") is not None and r.get("reward_std") is not None]
                    ax.fill_between([r["step"] for r in rows], [r["reward"] - r["reward_std"] for r in rows],
                                    [r["reward"] + r["reward_std"] for r in rows], color=color, alpha=0.12, lw=0)
                if panel == "generation_s" and name == "das":
                    wx, wy = series(data, "das_boundary_s", skip)
                    if wx:
                        ax.plot(wx, wy, "--", lw=1.0, color=color, label="das: step-boundary history wait")
            ax.set_ylabel({"reward": "reward (mean, band: std)", "response_length": "response length (tokens)",
                           "generation_s": "generation (s/step)", "gen_s_per_1k_tokens": "generation s / 1k tokens"}[panel],
                          fontsize=8)
        elif panel == "buckets":
            for i, b in enumerate(buckets):
                xs, ys = series(das, f"das_accept_rate[{b}]")
                ax.plot(xs, ys, "-", marker="os^vD<>"[i % 7], ms=3, lw=1.0, label=f"{b} tokens")
            ax.set_ylabel("DAS acceptance\n(accepted/drafted)", fontsize=8)
        else:
            for name, data, style, color in arms:
                for col, ls in (("weight_version_min", ":"), ("weight_version_max", "-")):
                    xs, ys = series(data, col)
                    if xs:
                        ax.plot(xs, ys, ls, marker=style[1], ms=3, lw=1.0, color=color, label=f"{name} {col[15:]}")
            ax.set_ylabel("weight version of\nthe step's tokens (mean)", fontsize=8)
        spe = nodas.get("steps_per_episode") or das.get("steps_per_episode") or 0
        last = max([r["step"] for d in (nodas, das) for r in d["steps"]], default=0)
        for e in range(1, (last - 1) // spe + 1 if spe else 0):
            ax.axvline(e * spe + 0.5, color="grey", lw=0.6, ls=":")
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=7)
    t = summary["targets"]
    fmt = lambda v, f="{:.2f}": "n/a" if v is None else f.format(v)  # noqa: E731
    r = summary["ratio_das_over_nodas"]["generation_s"]
    rd, ld = t["reward_mean_diff_das_minus_nodas"], t["response_length_diff_das_minus_nodas"]
    axes[0].set_title(
        f"{title}, DAS vs stock: generation das/nodas {fmt(r['all'])} (episode 1: {fmt(r['first'])}, later: "
        f"{fmt(r['later'])}; timing from step {warmup + 1})\nhistory wait at step "
        f"{t['history_wait_share_last_step']['step']}: {fmt(t['history_wait_share_last_step']['value'], '{:.1%}')} "
        f"of generation; reward diff {fmt(rd['mean'], '{:+.3f}')} ± {fmt(rd['stderr'], '{:.3f}')}, length diff "
        f"{fmt(ld['mean'], '{:+.1f}')} ± {fmt(ld['stderr'], '{:.1f}')} (SE)", fontsize=8)
    axes[-1].set_xlabel("step (dotted: episode boundaries)")
    fig.tight_layout()
    fig.savefig(f"{prefix}.png", dpi=110)
    plt.close(fig)
    return summary
