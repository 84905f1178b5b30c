"""Step-boundary cost of an engine's history swap: fresh build vs in-place update.

At every RL step boundary each engine makes the history actor's new snapshot its history
(``DASSpeculator.load_snapshot``), and the trainer waits for it before the next generation. A
fresh ``HistorySnapshot.build_index`` re-inserts the whole window into every tree, so its cost
grows with the history; ``HistorySnapshot.update_index`` only rebuilds the (problem, step)
buckets that changed. On the H200 GRPO run of 2026-12-04 (fresh builds) this wait grew by about
0.07 s per step to 2.5 s at step 30, ~20 % of the generation time.

This replays a GRPO-shaped run on SYNTHETIC rollouts (``synthetic_trace.py``: ``--problems``
problems, ``--problems-per-step`` of them per step with ``--samples`` responses each, median
``--median-len`` tokens), one snapshot per step as the actor builds it (window ``--window``
appearances), and times per step: ``fresh`` (``build_index``) and ``update`` (``update_index``
on the index of the previous step, after indexing in-flight sibling text as an engine does).
Both indexes are checked to hold the same tokens and problems at every step.

    python benchmarks/snapshot_load.py --steps 30 --out benchmarks/results/snapshot-load-cpu.json

``--data-path`` measures the whole step boundary instead, on a local Ray cluster: the trainer
hooks of ``integrations/openrlhf/samples.py`` (``GeneratorState``: capture, ``add_rollouts`` +
``end_step(push=False)``, then ``push_snapshots`` before the next generation) against a real
``RolloutHistoryActor`` and ``--engines`` stand-in engines (``step_boundary_engine.py``: the real
worker RPCs over a real ``DASSpeculator``, no vLLM). Per step it records the bytes that cross
each process boundary (trainer → actor rollouts, actor → trainer result, actor → engines
history, pickled sizes / payload lengths) and the seconds the trainer waits (``end_step``,
``push_snapshots``) and each engine spends loading history. At the end it checks that every
engine holds exactly the history of its problems that a fresh build from the actor's store holds.

    python benchmarks/snapshot_load.py --data-path --steps 30 --engines 2 \
        --out benchmarks/results/cpu-step-boundary-before.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from drafter_speed import machine_info  # noqa: E402
from synthetic_trace import SyntheticRollouts, TraceParams  # noqa: E402

from openrlhf_das.drafter import HistorySnapshot, Rollout  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--problems", type=int, default=24)
    p.add_argument("--problems-per-step", type=int, default=4)
    p.add_argument("--samples", type=int, default=8)
    p.add_argument("--median-len", type=float, default=380.0)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--window", type=int, default=5)
    p.add_argument("--max-depth", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data-path", action="store_true", help="measure the whole step boundary (Ray)")
    p.add_argument("--engines", type=int, default=2)
    p.add_argument("--no-pin", action="store_true", help="every engine gets all history (sticky off)")
    p.add_argument("--table", nargs=2, type=Path, metavar=("BEFORE", "AFTER"),
                   help="markdown table of two --data-path results")
    p.add_argument("--out", type=Path)
    a = p.parse_args(argv)
    if a.table:
        print(table(*a.table))
        return 0
    if a.data_path:
        return data_path(a)
    for name in ("problems", "problems_per_step", "samples", "steps", "window", "max_depth"):
        if getattr(a, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1")
    params = TraceParams(problems=a.problems, samples=a.samples, steps=a.steps,
                         problems_per_step=a.problems_per_step, median_len=a.median_len)
    gen = SyntheticRollouts(params, a.seed)
    shape = (a.max_depth, a.window, 10**12, True)
    rollouts: list[Rollout] = []
    index = None
    rows = []
    for step in range(a.steps):
        rollouts += [Rollout(r["problem_id"], step, np.asarray(r["response_token_ids"], np.int32)) for r in gen.step(step)]
        snap = HistorySnapshot.from_rollouts(rollouts, next_step=step + 1)
        t0 = time.perf_counter()
        fresh = snap.build_index(*shape)
        t_fresh = time.perf_counter() - t0
        if index is None:
            index = snap.build_index(*shape)
            counts, t_update = None, None
        else:
            t0 = time.perf_counter()
            counts = snap.update_index(index)
            t_update = time.perf_counter() - t0
        assert index.stats().tokens == fresh.stats().tokens and sorted(index.problem_ids()) == sorted(fresh.problem_ids())
        rows.append({"step": step, "history_tokens": fresh.stats().tokens, "fresh_s": t_fresh,
                     "update_s": t_update, "buckets": counts})
        # what the engine indexes during the next step: in-flight sibling text of its problems
        for pid in sorted({r.problem_id for r in rollouts[-a.problems_per_step * a.samples:]})[:2]:
            index.extend_live(pid, f"live-{step}", step + 1, rollouts[-1].tokens[:64])
        print(f"step {step:3d}: {rows[-1]['history_tokens']:8d} tokens  fresh {t_fresh:7.3f} s  "
              f"update {'   -   ' if t_update is None else f'{t_update:7.3f}'} s  {counts or ''}", flush=True)
    later = rows[len(rows) // 2:]
    summary = {"fresh_s_last": rows[-1]["fresh_s"], "update_s_last": rows[-1]["update_s"],
               "fresh_s_mean_second_half": statistics.fmean(r["fresh_s"] for r in later),
               "update_s_mean_second_half": statistics.fmean(r["update_s"] for r in later if r["update_s"] is not None)}
    summary["speedup_second_half"] = summary["fresh_s_mean_second_half"] / summary["update_s_mean_second_half"]
    print(json.dumps(summary, indent=1))
    _write_result(a, "snapshot_load", rows, summary)
    return 0


def _write_result(a: argparse.Namespace, benchmark: str, rows: list, summary: dict) -> None:
    """The result file of either measurement (``--out``; nothing without it)."""
    if a.out:
        a.out.parent.mkdir(parents=True, exist_ok=True)
        a.out.write_text(json.dumps({"benchmark": benchmark, "args": {k: str(v) for k, v in vars(a).items()},
                                     "machine": machine_info(), "steps": rows, "summary": summary}, indent=1))


def data_path(a: argparse.Namespace) -> int:
    import pickle
    import tempfile

    import ray

    from openrlhf_das.config import DASConfig
    from openrlhf_das.integrations.openrlhf import problem_ids
    from openrlhf_das.integrations.openrlhf.samples import GeneratorState
    from openrlhf_das.integrations.openrlhf.settings import IntegrationSettings
    from openrlhf_das.ray import create_history_actor, engine_for_problem
    from step_boundary_engine import CountingEngine

    def size(x: object) -> int:
        return len(pickle.dumps(x, protocol=5))

    here = str(Path(__file__).resolve().parent)
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": here}})
    config = DASConfig().with_overrides({"window": a.window, "max_depth": a.max_depth})
    pin = not a.no_pin
    engines = [ray.remote(CountingEngine).options(num_cpus=0).remote(config.to_dict()) for _ in range(a.engines)]
    params = TraceParams(problems=a.problems, samples=a.samples, steps=a.steps,
                         problems_per_step=a.problems_per_step, median_len=a.median_len)
    gen = SyntheticRollouts(params, a.seed)
    rows = []
    with tempfile.TemporaryDirectory() as run_dir:
        actor = create_history_actor(run_dir, config, engines, pin_problems=pin, num_cpus=0, snapshot_every=10**6)
        st = GeneratorState(actor, IntegrationSettings(run_dir=run_dir, sticky=pin))
        for step in range(a.steps + 1):
            t0 = time.perf_counter()
            st.before_generation()  # pushes the snapshots prepared at the previous step's end
            push_s = time.perf_counter() - t0
            loads = [e for log in ray.get([x.take_log.remote() for x in engines]) for e in log
                     if e["method"] == "das_load_snapshot"]
            if step:
                rows[-1].update(push_s=push_s, engine_bytes=sum(e["bytes"] for e in loads),
                                engine_load_s_max=max((e["seconds"] for e in loads), default=0.0))
                r = rows[-1]
                print(f"step {r['step']:3d}: rollouts {r['rollout_bytes']:9d} B  result {r['result_bytes']:7d} B  "
                      f"engines {r['engine_bytes']:9d} B  end_step {r['end_step_s']:.3f} s  push {r['push_s']:.3f} s",
                      flush=True)
            if step == a.steps:
                break
            for r in gen.step(step):  # what OpenRLHF's executor returns per sample (+ the DAS engine's id)
                prompt = f"problem {r['problem_id']}"
                problem_ids.register({"problem_id": r["problem_id"]}, prompt)
                resp = np.asarray(r["response_token_ids"], np.int32)
                st.capture({"prompt": prompt, "observation_tokens": np.concatenate([np.asarray(r["prompt_token_ids"], np.int32), resp]),
                            "action_ranges": [(len(r["prompt_token_ids"]), len(r["prompt_token_ids"]) + resp.size)],
                            "reward": 0.0, "das_problem_id": r["problem_id"]})
            rollout_bytes = sum(size(st.captured[i : i + 256]) for i in range(0, len(st.captured), 256))
            t0 = time.perf_counter()
            st.after_generation(1.0)
            rows.append({"step": step, "rollout_bytes": rollout_bytes, "end_step_s": time.perf_counter() - t0,
                         "result_bytes": size(st.last_result),
                         "history_tokens": ray.get(actor.status.remote())["history"]["tokens"]})
        # every engine holds what a fresh build of its share of the actor's store holds
        from openrlhf_das.drafter import HistorySnapshot
        from openrlhf_das.ray.persistence import load_checkpoint

        ray.get(actor.save_checkpoint.remote())
        snap = load_checkpoint(run_dir, a.window).snapshot
        for i, e in enumerate(engines):
            mine = {p for p in snap.problem_ids if not pin or engine_for_problem(p, a.engines) == i}
            fresh = HistorySnapshot.filter(snap, mine).build_index(a.max_depth, a.window, 10**12, True)
            want = {p: fresh.steps_of(p) for p in sorted(fresh.problem_ids())} | {"_tokens": fresh.tokens}
            assert ray.get(e.history.remote()) == want, f"engine {i} history differs from a fresh build"
    ray.shutdown()
    later = rows[len(rows) // 2:]
    summary = {k: statistics.fmean(r[k] for r in later) for k in
               ("rollout_bytes", "result_bytes", "engine_bytes", "end_step_s", "push_s", "engine_load_s_max")}
    summary = {f"{k}_mean_second_half": v for k, v in summary.items()}
    summary["boundary_bytes_mean_second_half"] = sum(summary[f"{k}_mean_second_half"] for k in ("rollout_bytes", "result_bytes", "engine_bytes"))
    summary["boundary_s_mean_second_half"] = summary["end_step_s_mean_second_half"] + summary["push_s_mean_second_half"]
    summary["boundary_bytes_total"] = sum(r["rollout_bytes"] + r["result_bytes"] + r["engine_bytes"] for r in rows)
    print(json.dumps(summary, indent=1))
    _write_result(a, "snapshot_load --data-path", rows, summary)
    return 0


def table(before: Path, after: Path) -> str:
    """Markdown: per-step means over the second half of two ``--data-path`` runs."""
    b, a = (json.loads(p.read_text())["summary"] for p in (before, after))
    rows = [
        ("trainer → actor (rollouts)", "rollout_bytes", "B"),
        ("actor → trainer (end_step result)", "result_bytes", "B"),
        ("actor → engines (history, all engines)", "engine_bytes", "B"),
        ("all step-boundary bytes", "boundary_bytes", "B"),
        ("trainer waits: end_step", "end_step_s", "s"),
        ("trainer waits: push_snapshots", "push_s", "s"),
        ("trainer waits: total", "boundary_s", "s"),
        ("engine history load (slowest engine)", "engine_load_s_max", "s"),
    ]
    out = [f"| per step (mean of steps 15-29) | before (`{before.name}`) | after (`{after.name}`) | after / before |",
           "|---|---:|---:|---:|"]
    for label, key, unit in rows:
        x, y = b[f"{key}_mean_second_half"], a[f"{key}_mean_second_half"]
        fmt = (lambda v: f"{v / 1000:,.1f} kB") if unit == "B" else (lambda v: f"{v:.3f} s")
        out.append(f"| {label} | {fmt(x)} | {fmt(y)} | {y / x:.2f} |")
    return "\n".join(out)


if __name__ == "__main__":
    sys.exit(main())
