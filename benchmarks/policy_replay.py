"""Does the length-aware policy pay for itself? Replay one trace against issue 21's targets.

For each ``k_max`` (the largest draft budget, vLLM's ``num_speculative_tokens``) the trace is
replayed (``replay.py``: greedy verification, cost model ``base + per_token * query tokens``)
under

* ``none`` – no speculation;
* ``flat/<t>x<f>`` – every request drafts ``t`` tokens with factor ``f`` at every step, from the
  same sources as ``das`` (``replay.py``'s ``flat+all``), for ``t`` in {4, 8, 16} up to ``k_max``
  and ``f`` in {1, 2}; ``best flat`` is the lowest makespan of these, per epoch;
* ``das/static`` – the length policy of ``--config`` with long budget ``k_max``, tuning off;
* ``das/aimd`` – the same with online tuning (``tuning.mode: aimd``, the config's tuning knobs:
  ``policy/tuning.py``);
* ``das`` – the full policy as the config ships it: whichever of the two its ``tuning.mode`` names;
* ``das/request`` – ``das`` with per-request tuning on (``tuning.request.mode: aimd``, the
  config's ``tuning.request`` knobs: ``policy/tuning.py``'s ``RequestTuner``), whatever the config ships;
* ``das/oracle`` – a bound, not a policy: ``das/static`` with each request's class known in
  advance from its *final* length (long past ``promotion.long_fraction`` of the limit, else short;
  the tail rule ``promotion.tail_running`` still lifts short requests in tail steps, without which
  a short request of ~1,200 tokens decoded undrafted set the oracle's makespan);
* ``arctic/<scope>`` – arctic-inference's ``SuffixDecodingCache`` with the same history and flat
  budget ``k_max`` x 1 (``arctic_baseline.py``), and ``union/<k_max>x1``: the union drafter
  (``flat+all``) with the same budget and arctic's context (``pattern_tokens`` = ``max_depth``; at
  16 tokens a factor-1 draft could never exceed 15 tokens).

The run's limit (``max_new_tokens``) is ``--max-new-tokens``, else the trace header's, else the
longest response of the trace. The batch gate is off in every policy (the linear cost model has
no compute-bound regime for it to avoid; the GPU runs decide the gate), unless ``--gate`` keeps
the config's for the DAS policies; the flat budgets are then replayed twice, without the gate
(``best flat``, the issue's baseline) and behind it (``flat/<t>x<f>+gate``: ``best gated flat``,
what the gate alone gives). Targets, per epoch >= 1 (epoch 0 has no history): ``das`` <= 0.90 x best flat and
<= 0.70 x none; ``das/aimd`` vs ``das/static`` (tuning: >= 5 % lower somewhere, never > 1 % higher).
``--extra-cost BASE:PER_TOKEN[:DRAFT_STEP]`` (ms, repeatable) prices the same simulation under
more cost models (drafting decisions do not depend on the cost model), e.g. one with a fixed
cost per drafting step as GPU engines pay; each gets its own ``targets_by_cost`` entry and table.
Writes ``<out>.json`` and ``<out>.png``; any trace file works (``.jsonl`` or ``.jsonl.zst``,
``synthetic_trace.py`` format).
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from arctic_baseline import SCOPES, ArcticSpeculator  # noqa: E402
import replay as replay_module  # noqa: E402
from replay import CostModel, _cpu_model, read_trace, replay  # noqa: E402

from openrlhf_das.config import DASConfig, LengthClass  # noqa: E402
from openrlhf_das.policy import is_tail_step, tail_floor  # noqa: E402
from openrlhf_das.speculator import DASSpeculator  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DAS_BOUND_FLAT, DAS_BOUND_NONE, TUNING_GAIN, TUNING_LOSS = 0.90, 0.70, 0.05, 0.01


def das_config(base: DASConfig, k_max: int, tuning: bool) -> DASConfig:
    """``base`` with its long budget at ``k_max`` (other classes capped at it)."""
    b = base.budgets
    return base.with_overrides({
        "budgets.long.tokens": k_max,
        "budgets.medium.tokens": min(b.medium.tokens, k_max),
        "budgets.short.tokens": min(b.short.tokens, k_max),
        "tuning.mode": "aimd" if tuning else "off",
    })


def cost_label(c: CostModel) -> str:
    """``"2.63+0.0145/token+2.4/drafting step ms"``: a cost model's key in the report."""
    ms = lambda x: f"{x * 1e3:g}"  # noqa: E731
    return f"{ms(c.base_s)}+{ms(c.per_token_s)}/token+{ms(c.draft_step_s)}/drafting step ms"


def per_epoch(res, extra_costs: tuple[CostModel, ...] = ()) -> dict[str, Any]:
    steps = res.steps
    c = res.counts
    decode, accepted = sum(c.decode_steps), sum(c.accepted)
    return {
        "makespan_s": [s["makespan_s"] for s in steps],
        **({"makespan_s_by_cost": {cost_label(m): [s["makespan_s_extra"][j] for s in steps]
                                   for j, m in enumerate(extra_costs)}} if extra_costs else {}),
        "engine_steps": [s["engine_steps"] for s in steps],
        "tokens": [s["tokens"] for s in steps],
        "drafted": [s["drafted"] for s in steps],
        "accepted": [s["accepted"] for s in steps],
        "tokens_per_verify_step": (decode + accepted) / decode if decode else 1.0,
        "tokens_per_verify_step_by_epoch": [
            s["tokens"] / (s["tokens"] - s["accepted"]) if s["tokens"] > s["accepted"] else 1.0 for s in steps
        ],
        "speculator": res.speculator,
    }


def oracle_speculator(base_cls: type, cfg: DASConfig, steps: dict) -> type:
    """``base_cls`` (a DASSpeculator) whose ``class_of`` knows each request's final length in
    ``steps`` (a trace's): long past ``promotion.long_fraction`` of the limit, else short, lifted
    to the lowest drafting class in tail steps (the tail rule still applies)."""
    final = {f"{step}/{s.problem_id}/{s.sample_index}": s.response.size for step, v in steps.items() for s in v}
    long_at = cfg.promotion.long_fraction * cfg.max_new_tokens
    floor = (LengthClass.SHORT, LengthClass.MEDIUM, LengthClass.LONG)[tail_floor(cfg)]

    class Oracle(base_cls):  # type: ignore[misc, valid-type]
        def class_of(self, req, num_running=None):  # noqa: ANN001
            if final[req.request_id] > long_at:
                return LengthClass.LONG
            return floor if is_tail_step(self.config, num_running) else LengthClass.SHORT

    return Oracle


def run_one(task: tuple) -> tuple[str, dict[str, Any]]:
    """One policy of one ``k_max`` (a process-pool task): (name, per-epoch results)."""
    name, steps, base, k_max, cost, extra_costs = task
    t0 = time.perf_counter()
    sim = functools.partial(replay, extra_costs=extra_costs)
    epochs = functools.partial(per_epoch, extra_costs=extra_costs)

    if name == "none":
        out = epochs(sim(steps, ["none"], base, cost)["none"])
    elif name.startswith("flat/"):
        t, f = name.split("/")[1].removesuffix("+gate").split("x")
        policy = "flat+all+gate" if name.endswith("+gate") else "flat+all"
        out = epochs(sim(steps, [policy], base, cost, flat_tokens=int(t), flat_factor=float(f))[policy])
    elif name.startswith("union/"):
        cfg = base.with_overrides({"pattern_tokens": None})
        out = epochs(sim(steps, ["flat+all"], cfg, cost, flat_tokens=k_max, flat_factor=1.0)["flat+all"])
    elif name.startswith("arctic/"):
        spec = ArcticSpeculator(name.split("/")[1], k_max, 1.0, base)
        out = epochs(sim(steps, [], base, cost, extra={name: spec})[name])
    elif name == "das/oracle":
        cfg = das_config(base, k_max, tuning=False)
        replay_module.DASSpeculator = oracle_speculator(DASSpeculator, cfg, steps)
        try:
            out = epochs(sim(steps, ["das+all"], cfg, cost)["das+all"])
        finally:
            replay_module.DASSpeculator = DASSpeculator
    elif name == "das/request":
        cfg = das_config(base, k_max, tuning=base.tuning.mode == "aimd").with_overrides({"tuning.request.mode": "aimd"})
        out = epochs(sim(steps, ["das+all"], cfg, cost)["das+all"])
        out["config"] = cfg.to_dict()
    else:
        cfg = das_config(base, k_max, tuning=name == "das/aimd")
        out = epochs(sim(steps, ["das+all"], cfg, cost)["das+all"])
        out["config"] = cfg.to_dict()
    out["simulation_wall_s"] = time.perf_counter() - t0
    return name, out


def policy_names(k_max: int, arctic: bool, gate: bool = False) -> list[str]:
    """Policies of one ``k_max``; ``gate``: the flat budgets also behind the config's batch gate
    (``flat/<t>x<f>+gate``: what the gate alone gives, without length classes)."""
    flats = [f"flat/{t}x{f}" for t in (4, 8, 16) if t <= k_max for f in (1, 2)]
    flats += [f"{n}+gate" for n in flats] if gate else []
    return ["none", *flats, "das/static", "das/aimd", "das/request", "das/oracle", *([f"union/{k_max}x1", *(f"arctic/{s}" for s in SCOPES)] if arctic else [])]


def run_k(steps, base: DASConfig, k_max: int, cost: CostModel, arctic: bool, jobs: int = 1,
          extra_costs: tuple[CostModel, ...] = ()) -> dict[str, Any]:
    t0 = time.perf_counter()
    gate = base.gate.mode != "off"
    tasks = [(n, steps, base, k_max, cost, extra_costs) for n in policy_names(k_max, arctic, gate)]
    if jobs > 1:
        with ProcessPoolExecutor(jobs) as pool:
            done = dict(pool.map(run_one, tasks))
    else:
        done = dict(map(run_one, tasks))
    policies = {t[0]: done[t[0]] for t in tasks}
    policies["das"] = dict(policies["das/aimd" if base.tuning.mode == "aimd" else "das/static"])
    policies["das"]["same_as"] = "das/aimd" if base.tuning.mode == "aimd" else "das/static"
    gate_at = base.gate.max_running if base.gate.mode == "max_running" else None
    bulk = functools.partial(bulk_seconds, steps, gate_at)
    out = {"policies": policies, "wall_s": time.perf_counter() - t0,
           "targets": targets(policies, len(steps), bulk(cost) if gate_at else None)}
    if extra_costs:
        out["targets_by_cost"] = {cost_label(m): targets(priced(policies, cost_label(m)), len(steps),
                                                         bulk(m) if gate_at else None) for m in extra_costs}
    return out


def bulk_seconds(steps: dict, max_running: int, cost: CostModel) -> list[float]:
    """Per epoch: seconds of ``none``'s engine steps with more than ``max_running`` requests
    running (the bulk), under ``cost``. A policy behind a ``max_running`` gate drafts nothing
    there, so its bulk steps are exactly these: its makespan minus this is its tail."""
    out = []
    for v in steps.values():
        lengths = np.sort(np.fromiter((s.response.size for s in v), np.int64))
        # step i runs the requests longer than i tokens
        running = len(lengths) - np.searchsorted(lengths, np.arange(lengths[-1]), side="right")
        bulk = running[running > max_running]
        out.append(float(len(bulk) * cost.base_s + cost.per_token_s * bulk.sum()))
    return out


def priced(pol: dict[str, Any], label: str) -> dict[str, Any]:
    """``pol`` with every policy's makespans those of the extra cost model ``label``."""
    return {n: {**p, "makespan_s": p["makespan_s_by_cost"][label]} for n, p in pol.items()}


def targets(pol: dict[str, Any], n_epochs: int, bulk: list[float] | None = None) -> dict[str, Any]:
    """Issue 21's targets per epoch >= 1 (ratios of simulated makespans). ``best_flat`` is the
    best flat budget without a gate (the issue's baseline); with gated flat rows,
    ``das_vs_best_gated_flat`` tells what the length classes add to the gate. ``bulk``
    (:func:`bulk_seconds`, behind a ``max_running`` gate): ``bulk_share`` of ``none``'s makespan,
    ``das_tail_vs_none_tail`` and the tail ratio that ``das`` <= 0.70 x none needs
    (``tail_needed_for_none_target``: (0.70 - share) / (1 - share))."""
    flats = [k for k in pol if k.startswith("flat/") and not k.endswith("+gate")]
    gated = [k for k in pol if k.startswith("flat/") and k.endswith("+gate")]
    out: dict[str, Any] = {"epochs": []}
    for e in range(1, n_epochs):
        best = min(flats, key=lambda k: pol[k]["makespan_s"][e])
        best_gated = min(gated, key=lambda k: pol[k]["makespan_s"][e]) if gated else None
        das, static, aimd, none = (pol[k]["makespan_s"][e] for k in ("das", "das/static", "das/aimd", "none"))
        out["epochs"].append({
            "epoch": e,
            "best_flat": best,
            "das_vs_best_flat": das / pol[best]["makespan_s"][e],
            "das_vs_none": das / none,
            "das_static_vs_best_flat": static / pol[best]["makespan_s"][e],
            "aimd_vs_static": aimd / static,
            "das_request_vs_best_flat": pol["das/request"]["makespan_s"][e] / pol[best]["makespan_s"][e]
            if "das/request" in pol else None,
            "oracle_vs_best_flat": pol["das/oracle"]["makespan_s"][e] / pol[best]["makespan_s"][e]
            if "das/oracle" in pol else None,
            **({"best_gated_flat": best_gated,
                "das_vs_best_gated_flat": das / pol[best_gated]["makespan_s"][e]} if best_gated else {}),
            **({"bulk_share": bulk[e] / none,
                "das_tail_vs_none_tail": (das - bulk[e]) / (none - bulk[e]),
                "tail_needed_for_none_target": (DAS_BOUND_NONE * none - bulk[e]) / (none - bulk[e])} if bulk else {}),
        })
    ep = out["epochs"]
    out["das_vs_best_flat_met"] = all(x["das_vs_best_flat"] <= DAS_BOUND_FLAT for x in ep)
    out["das_vs_none_met"] = all(x["das_vs_none"] <= DAS_BOUND_NONE for x in ep)
    out["tuning_never_worse_by_1pct"] = all(x["aimd_vs_static"] <= 1 + TUNING_LOSS for x in ep)
    out["tuning_gain_5pct_somewhere"] = any(x["aimd_vs_static"] <= 1 - TUNING_GAIN for x in ep)
    arctic = {k: history_tokens_per_verify_step(v) for k, v in pol.items() if k.startswith("arctic/")}
    if arctic:  # the union drafter with arctic's budget and context
        union = next(k for k in pol if k.startswith("union/"))
        out["union_policy"] = union
        out["union_tokens_per_verify_step"] = history_tokens_per_verify_step(pol[union])
        out["arctic_tokens_per_verify_step"] = arctic
        out["union_vs_arctic_met"] = all(out["union_tokens_per_verify_step"] >= v for v in arctic.values())
    return out


def history_tokens_per_verify_step(p: dict[str, Any]) -> float:
    """Tokens per verify step (accepted + 1) pooled over epochs >= 1."""
    tokens, accepted = sum(p["tokens"][1:]), sum(p["accepted"][1:])
    return tokens / (tokens - accepted) if tokens > accepted else 1.0


def plot(rep: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ks = list(rep["k_max"])
    fig, axes = plt.subplots(1, len(ks), figsize=(7 * len(ks), 4.8), squeeze=False)
    for ax, k in zip(axes[0], ks):
        pol = rep["k_max"][k]["policies"]
        names = [n for n in pol if not n.startswith(("arctic/", "union/")) and "same_as" not in pol[n]
                 and not n.endswith("+gate")]
        epochs = range(1, len(pol["none"]["makespan_s"]))
        width = 0.8 / len(names)
        for i, n in enumerate(names):
            vals = [pol[n]["makespan_s"][e] / pol["none"]["makespan_s"][e] for e in epochs]
            bars = ax.bar(np.arange(len(vals)) + i * width, vals, width, label=n)
            if n.startswith("das"):
                for b, v in zip(bars, vals):
                    ax.text(b.get_x() + b.get_width() / 2, v, f"{v:.3f}", ha="center", va="bottom", fontsize=7)
        ax.axhline(DAS_BOUND_NONE, color="k", ls=":", lw=0.8)
        ax.set_xticks(np.arange(len(epochs)) + width * (len(names) - 1) / 2, [f"epoch {e}" for e in epochs])
        ax.set_ylabel("simulated makespan / none")
        ax.set_title(f"k_max = {k}")
        ax.legend(fontsize=7, ncol=2)
    cm = rep["cost_model"]
    draft = f" + {cm['draft_step_s'] * 1e3:g} ms/drafting step" if cm.get("draft_step_s") else ""
    fig.suptitle(f"{rep['trace']}: length policy vs flat budgets (replay cost model "
                 f"{cm['base_s'] * 1e3:g} ms + {cm['per_token_s'] * 1e3:g} ms/token{draft})")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def markdown(rep: dict[str, Any]) -> str:
    """The docs' table of a report: makespan / none per policy, k_max and epoch >= 1, and the
    targets' ratios; then one such table per extra cost model."""
    out = [_markdown_table(rep["k_max"], None)]
    for label in next(iter(rep["k_max"].values())).get("targets_by_cost", {}):
        out.append(f"\nCost model {label} (same simulation, priced again):\n\n" + _markdown_table(rep["k_max"], label))
    return "\n".join(out)


def _markdown_table(by_k: dict[str, Any], label: str | None) -> str:
    rep = {"k_max": {k: {"policies": r["policies"] if label is None else priced(r["policies"], label),
                         "targets": r["targets"] if label is None else r["targets_by_cost"][label]}
                     for k, r in by_k.items()}}
    gated = any("best_gated_flat" in t for r in rep["k_max"].values() for t in r["targets"]["epochs"])
    split = any("bulk_share" in t for r in rep["k_max"].values() for t in r["targets"]["epochs"])
    lines = ["| k_max | epoch | none (s) | best flat | best flat / none | das / none | das / best flat | "
             "das/aimd / das/static | das/request / best flat | oracle / best flat |"
             + (" best gated flat | das / best gated flat |" if gated else "")
             + (" bulk share of none | das tail / none tail | tail needed for 0.70 |" if split else ""),
             "|" + "---|" * (10 + 2 * gated + 3 * split)]
    for k, r in rep["k_max"].items():
        pol = r["policies"]
        for t in r["targets"]["epochs"]:
            e = t["epoch"]
            none = pol["none"]["makespan_s"][e]
            ratio = {n: pol[n]["makespan_s"][e] / none for n in (t["best_flat"], "das")}
            oracle, req = t.get("oracle_vs_best_flat"), t.get("das_request_vs_best_flat")
            lines.append(f"| {k} | {e} | {none:.2f} | {t['best_flat']} | {ratio[t['best_flat']]:.3f} | "
                         f"{ratio['das']:.3f} | {t['das_vs_best_flat']:.3f} | "
                         f"{t['aimd_vs_static']:.3f} | {'' if req is None else f'{req:.3f}'} | "
                         f"{'' if oracle is None else f'{oracle:.3f}'} |"
                         + (f" {t['best_gated_flat']} | {t['das_vs_best_gated_flat']:.3f} |" if gated else "")
                         + (f" {t['bulk_share']:.3f} | {t['das_tail_vs_none_tail']:.3f} | "
                            f"{t['tail_needed_for_none_target']:.3f} |" if split else ""))
    for k, r in rep["k_max"].items():
        t = r["targets"]
        if label is None and "union_tokens_per_verify_step" in t:
            arctic = ", ".join(f"{n.split('/')[1]} {v:.3f}" for n, v in t["arctic_tokens_per_verify_step"].items())
            lines.append(f"\nk_max {k}: tokens per verify step (epochs >= 1), union drafter ({t['union_policy']}) "
                         f"{t['union_tokens_per_verify_step']:.3f}; arctic SuffixDecodingCache {arctic}.")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("trace", help="trace file, or with --table a report JSON")
    ap.add_argument("--table", action="store_true", help="print the markdown table of a report JSON and exit")
    ap.add_argument("--config", default=str(ROOT / "configs" / "das" / "default.yaml"))
    ap.add_argument("--k-max", type=int, nargs="+", default=[8, 16])
    ap.add_argument("--max-new-tokens", type=int)
    ap.add_argument("--gate", action="store_true", help="keep the config's batch gate (default: off)")
    ap.add_argument("--no-arctic", action="store_true", help="skip the arctic SuffixDecodingCache baseline")
    ap.add_argument("--base-ms", type=float, default=10.0)
    ap.add_argument("--per-token-ms", type=float, default=0.005)
    ap.add_argument("--draft-step-ms", type=float, default=0.0,
                    help="cost of an engine step in which any request drafts, on top (ms; default 0)")
    ap.add_argument("--extra-cost", action="append", default=[], metavar="BASE:PER_TOKEN[:DRAFT_STEP]",
                    help="another cost model (ms) priced on the same simulation; repeatable")
    ap.add_argument("--jobs", type=int, default=2, help="policies replayed in parallel (processes)")
    ap.add_argument("--out", help="output stem (default: benchmarks/results/replay-policy-<trace name>)")
    args = ap.parse_args()
    if args.table:
        print(markdown(json.loads(Path(args.trace).read_text())))
        return

    head, steps = read_trace(args.trace)
    limit = args.max_new_tokens or head.get("max_new_tokens") or max(
        s.response.size for v in steps.values() for s in v)
    base = DASConfig.from_yaml(args.config).with_overrides({"max_new_tokens": int(limit)})
    if not args.gate:
        base = base.with_overrides({"gate.mode": "off"})
    cost = CostModel(args.base_ms * 1e-3, args.per_token_ms * 1e-3, args.draft_step_ms * 1e-3)
    extra_costs = tuple(CostModel.parse_ms(x) for x in args.extra_cost)
    name = Path(args.trace).name.split(".jsonl")[0]
    stem = Path(args.out) if args.out else ROOT / "benchmarks" / "results" / f"replay-policy-{name}"
    rep: dict[str, Any] = {
        "trace": name,
        "trace_header": head,
        "synthetic": bool(head.get("synthetic", False)),
        "max_new_tokens": int(limit),
        "config": base.to_dict(),
        "cost_model": cost.as_dict(),
        **({"extra_cost_models": {cost_label(m): m.as_dict() for m in extra_costs}} if extra_costs else {}),
        "machine": {"cpu": _cpu_model()},
        "command": " ".join(["python", *sys.argv]),
        "k_max": {},
    }
    for k in args.k_max:
        rep["k_max"][str(k)] = run_k(steps, base, k, cost, not args.no_arctic, args.jobs, extra_costs)
        t = rep["k_max"][str(k)]["targets"]
        print(f"k_max={k}: " + json.dumps({kk: v for kk, v in t.items()}, default=float), flush=True)
    stem.parent.mkdir(parents=True, exist_ok=True)
    Path(f"{stem}.json").write_text(json.dumps(rep, indent=1))  # not with_suffix: names hold dots ("0.5b")
    plot(rep, Path(f"{stem}.png"))


if __name__ == "__main__":
    main()
