"""Why does ``das`` miss 0.90 x the best flat budget? Per-request view of one policy replay.

Replays a trace (``replay.py``, the same settings as ``policy_replay.py``) under ``das`` (the
config as shipped), ``das/oracle`` and the best flat budget of each epoch (read from a
``policy_replay.py`` report), recording every engine step (running requests, draft tokens) and
every request (verify steps, draft tokens, accepted tokens, and for the length policies its class
and budget over time). Per epoch >= 1 it writes, for each policy,

* the makespan split: ``T`` engine steps (= verify steps of the last request to finish) and
  query tokens ``q = tokens + rejected draft tokens`` (every accepted draft token replaces one
  verify-step token), so a linear cost model prices ``T * base + q * per_token`` (+ drafting steps
  ``* draft_step``);
* the request that finishes last (sets ``T``): its length, verify steps, and under ``das`` its
  class and budget by generated length (the points where they change);
* rejected draft tokens by class at drafting time (who wastes; a request's last draft, verified
  after the speculator last sees the request, counts as rejected: at most k_max per request);
* bounds of any length policy whose longest request takes the best flat's ``T`` steps: no
  rejected draft token at all (``bound_T_flat``), and the same at ``das``'s ``T``.

Units: seconds of the replay cost models; tokens. Output: JSON (``--out``) and a short text summary.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import replay as replay_module  # noqa: E402
from policy_replay import das_config, oracle_speculator  # noqa: E402
from replay import CostModel, read_trace, replay  # noqa: E402

from openrlhf_das.config import DASConfig, LengthClass  # noqa: E402
from openrlhf_das.speculator import DASSpeculator  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
_RANK = {LengthClass.SHORT: 0, LengthClass.MEDIUM: 1, LengthClass.LONG: 2}


class Recording(DASSpeculator):
    """A DASSpeculator that records every engine step and every request's drafts and budgets."""

    def __init__(self, config: DASConfig, *a: Any, **kw: Any) -> None:
        super().__init__(config, *a, **kw)
        self.engine_steps: dict[int, list[tuple[int, int]]] = defaultdict(list)  # epoch -> (running, drafted)
        self.req: dict[str, dict[str, Any]] = {}

    def step(self, batch, num_running=None, padded_k=0, live_siblings=True):  # noqa: ANN001
        drafts = super().step(batch, num_running, padded_k, live_siblings)
        running = len(batch) if num_running is None else num_running
        c = self.config
        epoch = int(batch[0].request_id.split("/")[0]) if batch else 0
        total = 0
        for r, d in zip(batch, drafts):
            rec = self.req.setdefault(r.request_id, {"steps": 0, "drafted": 0, "accepted": 0, "last_draft": 0,
                                                     "changes": [], "rejected_by_class": [0, 0, 0]})
            if rec["last_draft"]:  # the previous draft's verification: num_sampled - 1 accepted
                acc = max(0, min(rec["last_draft"], r.num_sampled - 1))
                rec["accepted"] += acc
                rec["rejected_by_class"][rec["last_rank"]] += rec["last_draft"] - acc
            rank = _RANK[self.class_of(r, running)] if c.length_policy else -1
            if c.length_policy:
                b = self.budget_of(self.class_of(r, running), r.generated)
                state = (rank, b.tokens, b.factor)
            else:
                state = (-1, c.flat_budget.tokens, c.flat_budget.factor)
            if not rec["changes"] or tuple(rec["changes"][-1][1:]) != state:
                rec["changes"].append((r.generated, *state))
            rec["steps"] += 1
            rec["drafted"] += len(d)
            rec["last_draft"], rec["last_rank"] = len(d), max(rank, 0)
            total += len(d)
        self.engine_steps[epoch].append((running, total))
        return drafts


def run_policy(task: tuple) -> tuple[str, dict[str, Any]]:
    name, trace, base, k_max, flat = task
    _, steps = read_trace(trace)
    cls: type = Recording
    if name == "das/oracle":
        cfg = das_config(base, k_max, tuning=False)
        cls, policy = oracle_speculator(Recording, cfg, steps), "das+all"
    elif name == "das":
        cfg, policy = das_config(base, k_max, tuning=base.tuning.mode == "aimd"), "das+all"
    else:
        cfg, policy = base, "flat+all"
    specs: list[Recording] = []

    def make(config: DASConfig, *a: Any, **kw: Any) -> Recording:
        specs.append(cls(config, *a, **kw))
        return specs[-1]

    replay_module.DASSpeculator = make
    try:
        t, f = (flat.split("/")[1].split("x") if flat else ("4", "1"))
        res = replay(steps, [policy], cfg, CostModel(), flat_tokens=int(t), flat_factor=float(f))[policy]
    finally:
        replay_module.DASSpeculator = DASSpeculator
    spec = specs[0]
    lengths = {f"{s_}/{s.problem_id}/{s.sample_index}": int(s.response.size) for s_, v in steps.items() for s in v}
    return name, {"steps": res.steps, "engine_steps": {e: v for e, v in spec.engine_steps.items()},
                  "requests": {rid: {**r, "length": lengths[rid]} for rid, r in spec.req.items()}}


def price(eng: list[tuple[int, int]], cost: CostModel) -> dict[str, float]:
    T = len(eng)
    q = sum(n + d for n, d in eng)
    dsteps = sum(1 for _, d in eng if d)
    return {"T": T, "q": q, "drafting_steps": dsteps, "base_s": T * cost.base_s, "token_s": q * cost.per_token_s,
            "draft_step_s": dsteps * cost.draft_step_s,
            "makespan_s": T * cost.base_s + q * cost.per_token_s + dsteps * cost.draft_step_s}


def analyse(runs: dict[str, dict[str, Any]], best: dict[int, str], costs: dict[str, CostModel],
            probe: str) -> list[dict[str, Any]]:
    out = []
    for e, bf in best.items():
        row: dict[str, Any] = {"epoch": e, "best_flat": bf, "policies": {}}
        for name in dict.fromkeys(("das", "das/oracle", bf, probe)):
            r = runs[name]
            eng = r["engine_steps"][e]
            reqs = {rid: x for rid, x in r["requests"].items() if rid.startswith(f"{e}/")}
            last = max(reqs, key=lambda rid: reqs[rid]["steps"])
            tokens = sum(x["length"] for x in reqs.values())
            drafted = sum(x["drafted"] for x in reqs.values())
            accepted = sum(x["accepted"] for x in reqs.values())
            rej = [sum(x["rejected_by_class"][i] for x in reqs.values()) for i in range(3)]
            top = sorted(reqs, key=lambda rid: -reqs[rid]["steps"])[:5]
            row["policies"][name] = {
                "by_cost": {k: price(eng, c) for k, c in costs.items()},
                "tokens": tokens, "drafted": drafted, "accepted": accepted, "rejected": drafted - accepted,
                "rejected_by_class": None if name.startswith("flat/") else rej,
                "bulk_steps_gt32": sum(1 for n, _ in eng if n > 32),
                "last": {"rid": last, **{k: reqs[last][k] for k in ("length", "steps", "drafted", "accepted", "changes")}},
                "top5": [(rid, reqs[rid]["length"], reqs[rid]["steps"]) for rid in top],
            }
        # the same request in every policy
        for name, p in row["policies"].items():
            p["steps_of_flat_last"] = runs[name]["requests"][row["policies"][bf]["last"]["rid"]]["steps"]
            p["steps_of_das_last"] = runs[name]["requests"][row["policies"]["das"]["last"]["rid"]]["steps"]
        row["bounds"] = {}
        for k, c in costs.items():
            f, d = row["policies"][bf]["by_cost"][k], row["policies"]["das"]["by_cost"][k]
            tok = row["policies"][bf]["tokens"]
            # that policy's T and drafting steps, with no rejected draft token
            bound = lambda x: x["T"] * c.base_s + tok * c.per_token_s + x["drafting_steps"] * c.draft_step_s  # noqa: E731
            pr = row["policies"][probe]["by_cost"][k]
            b_flat, b_das, t_min = bound(f), bound(d), pr["T"]
            b_min = min(bound(pr), b_flat, b_das)
            row["bounds"][k] = {"das_vs_best_flat": d["makespan_s"] / f["makespan_s"],
                                "oracle_vs_best_flat": row["policies"]["das/oracle"]["by_cost"][k]["makespan_s"] / f["makespan_s"],
                                "bound_T_flat": b_flat / f["makespan_s"], "bound_T_das": b_das / f["makespan_s"],
                                "T_min_probe": t_min, "bound_T_min": b_min / f["makespan_s"]}
        out.append(row)
    return out


def summary(trace: str, k: str, rows: list[dict[str, Any]]) -> str:
    lines = []
    names = {0: "S", 1: "M", 2: "L", -1: "F"}
    for row in rows:
        e, bf = row["epoch"], row["best_flat"]
        P = row["policies"]
        lines.append(f"{trace} k_max {k} epoch {e} (best flat {bf})")
        for n, p in P.items():
            d = p["by_cost"]["default"]
            last = p["last"]
            lines.append(f"  {n:11s} T {d['T']:5d}  q {d['q'] / 1e3:6.0f}k  rejected {p['rejected'] / 1e3:5.0f}k "
                         f"{'' if p['rejected_by_class'] is None else '(S/M/L ' + '/'.join(f'{x / 1e3:.0f}k' for x in p['rejected_by_class']) + ')'}"
                         f"  last {last['rid']} len {last['length']} steps {last['steps']} acc {last['accepted']}/{last['drafted']}"
                         f"  flat's last {p['steps_of_flat_last']} das's last {p['steps_of_das_last']}")
        ch = P["das"]["last"]["changes"]
        lines.append("  das last request (generated: class tokens x factor): "
                     + ", ".join(f"{g}:{names[c]} {t}x{f:g}" for g, c, t, f in ch[:14]) + (" ..." if len(ch) > 14 else ""))
        for k2, b in row["bounds"].items():
            lines.append(f"  [{k2}] das/flat {b['das_vs_best_flat']:.3f} oracle/flat {b['oracle_vs_best_flat']:.3f} "
                         f"no-rejection bound at flat's T {b['bound_T_flat']:.3f}, at das's T {b['bound_T_das']:.3f}, "
                         f"at the fewest T seen ({b['T_min_probe']} probe) {b['bound_T_min']:.3f}")
    return "\n".join(lines)


def markdown(result: dict[str, Any], trace: str) -> str:
    """One docs row per k_max and epoch >= 1: the default model's split and bounds, then the
    extra cost model's ratios against its own best flat."""
    lines = ["| trace | k_max | epoch | best flat | T das / flat / fewest | rejected das (M / L) / flat | "
             "das / best flat | bound at flat's T | bound at fewest T | GPU-shaped: das / best flat | bound at fewest T |",
             "|" + "---|" * 11]
    for k, r in result["k_max"].items():
        extra = next(iter(r["extra_best"].values()), [])
        label = next(iter(r["extra_best"]), None)
        for i, row in enumerate(r["default_best"]):
            P, b = row["policies"], row["bounds"]["default"]
            probe = next(n for n in P if n.endswith("x16"))
            T = lambda n: P[n]["by_cost"]["default"]["T"]  # noqa: E731
            rej = P["das"]["rejected_by_class"]
            g = extra[i]["bounds"][label] if label else None
            lines.append(
                f"| {trace} | {k} | {row['epoch']} | {row['best_flat']} | {T('das')} / {T(row['best_flat'])} / {T(probe)} | "
                f"{P['das']['rejected'] / 1e3:.0f}k ({rej[1] / 1e3:.0f}k / {rej[2] / 1e3:.0f}k) / "
                f"{P[row['best_flat']]['rejected'] / 1e3:.0f}k | {b['das_vs_best_flat']:.3f} | {b['bound_T_flat']:.3f} | "
                f"{b['bound_T_min']:.3f} | "
                + (f"{g['das_vs_best_flat']:.3f} ({extra[i]['best_flat']}) | {g['bound_T_min']:.3f} |" if g else " | |"))
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("report", help="policy_replay.py report JSON (its trace, config, k_max and best flats)")
    ap.add_argument("--k-max", nargs="+", help="default: the report's")
    ap.add_argument("--trace", help="default: benchmarks/traces/<the report's trace>.jsonl*")
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--out", required=True)
    ap.add_argument("--table", action="store_true", help="print the markdown table of --out's JSON and exit")
    args = ap.parse_args()
    rep = json.loads(Path(args.report).read_text())
    if args.table:
        print(markdown(json.loads(Path(args.out).read_text()), rep["trace"].split("-")[1]))
        return
    trace = args.trace or next(p for p in (ROOT / "benchmarks" / "traces").glob(f"{rep['trace']}.jsonl*"))
    base = DASConfig.from_dict(rep["config"])
    costs = {"default": CostModel(**rep["cost_model"])}
    for label, m in rep.get("extra_cost_models", {}).items():
        costs[label] = CostModel(**m)
    result: dict[str, Any] = {"report": args.report, "k_max": {}}
    for k in args.k_max or list(rep["k_max"]):
        r = rep["k_max"][k]
        best = {t["epoch"]: t["best_flat"] for t in r["targets"]["epochs"]}
        for label in r.get("targets_by_cost", {}):
            for t in r["targets_by_cost"][label]["epochs"]:
                if t["best_flat"] != best[t["epoch"]]:
                    best.setdefault(f"{label}:{t['epoch']}", t["best_flat"])
        flats = sorted({v for v in best.values()})
        probe = f"flat/{k}x16"  # the tail's fewest verify steps: k_max tokens whenever anything matches
        tasks = [(n, str(trace), base, int(k), n if n.startswith("flat/") else None)
                 for n in ["das", "das/oracle", *flats, probe]]
        with ProcessPoolExecutor(args.jobs) as pool:
            runs = dict(pool.map(run_policy, tasks))
        rows = analyse(runs, {e: b for e, b in best.items() if isinstance(e, int)}, costs, probe)
        gpu = {}
        for label in r.get("targets_by_cost", {}):  # the extra model's own best flat
            gb = {t["epoch"]: t["best_flat"] for t in r["targets_by_cost"][label]["epochs"]}
            gpu[label] = analyse(runs, gb, {"default": costs["default"], label: costs[label]}, probe)
        result["k_max"][k] = {"default_best": rows, "extra_best": gpu}
        print(summary(rep["trace"], k, rows), flush=True)
        for label, rows2 in gpu.items():
            print(f"-- best flat of {label}:")
            print(summary(rep["trace"], k, rows2), flush=True)
    Path(args.out).write_text(json.dumps(result, indent=1, default=str))


if __name__ == "__main__":
    main()
