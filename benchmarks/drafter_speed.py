"""Drafter speed: µs per request per decode step, and history build throughput (tokens/s).

Decode side (batch ``--batch`` requests, ``max_depth`` 64, history of SYNTHETIC rollouts from
``synthetic_trace.py``): each measured step gives every request its context (prompt + output
so far), times the call, then advances each request by the tokens a greedy verifier would emit
(accepted + 1), so per-request trees and live sibling text grow as in a real rollout.

* ``speculator.step``   – the whole DAS step (accounting, classes, budgets, drafts), every
  request long-class so that every request drafts; all sources on (request, problem, global,
  siblings).
  Variants: without siblings; with the ``das`` replay policy's sources (request + problem);
  with a 16-token budget.
* ``drafter.propose``   – the same drafts without the policy layer.
* ``native``            – the floor: a bare Python loop of the native calls a step needs
  (``extend_ndarray`` of the new tokens into the request tree and ``speculate_ndarray`` on the
  request, problem and global trees).
* ``gated`` / ``all_short`` – steps in which nothing drafts (more than ``max_running`` requests,
  or every request short-class).

Build side: ``HistorySnapshot.build_index`` on ``--build-tokens`` tokens with and without the
global tree, against a bare ``extend_ndarray`` loop.

Each figure is the run with the least process-CPU time of ``--repeats`` runs, reported as both
wall and CPU time (CPU time is less sensitive to a shared machine); the report includes the
CPU model, core count and load average.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from replay import _cpu_model, verify  # noqa: E402
from synthetic_trace import SyntheticRollouts, TraceParams  # noqa: E402

from openrlhf_das.config import DASConfig, LengthClass  # noqa: E402
from openrlhf_das.drafter import Drafter, DraftRequest, HistoryIndex, HistorySnapshot, Rollout  # noqa: E402
from openrlhf_das.drafter.suffix_tree import new_tree  # noqa: E402
from openrlhf_das.speculator import DASSpeculator, StepRequest  # noqa: E402


LIVE_STEP = 3
"""The step the live requests belong to (the history holds steps 0-2)."""


def machine_info() -> dict[str, Any]:
    import importlib.metadata as md

    return {
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "loadavg": os.getloadavg(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "arctic_inference": md.version("arctic-inference"),
    }


class Clock:
    """Accumulates wall and process-CPU seconds of timed sections (the machine may be shared:
    CPU time is the less load-sensitive of the two)."""

    def __init__(self) -> None:
        self.wall = 0.0
        self.cpu = 0.0
        self._w = self._c = 0.0

    def start(self) -> None:
        self._w, self._c = time.perf_counter(), time.process_time()

    def stop(self, count: bool = True) -> None:
        if count:
            self.wall += time.perf_counter() - self._w
            self.cpu += time.process_time() - self._c

    def per(self, n: float, unit: float = 1e6) -> dict[str, float]:
        """Wall and CPU time per item (µs by default)."""
        return {"wall": self.wall / n * unit, "cpu": self.cpu / n * unit}


def _best(fn: Callable[[], dict[str, float]], repeats: int) -> dict[str, float]:
    """The run with the least CPU time."""
    return min((fn() for _ in range(repeats)), key=lambda d: d["cpu"])


# ---------------------------------------------------------------------------- data
def make_workload(batch: int, seed: int) -> tuple[HistorySnapshot, list[tuple[str, np.ndarray, np.ndarray]]]:
    """History (3 steps of rollouts of 64 problems) and ``batch`` live requests from step 3."""
    params = TraceParams(problems=64, samples=16, steps=4, median_len=400, max_len=4096)
    gen = SyntheticRollouts(params, seed)
    rollouts: list[Rollout] = []
    for s in range(3):
        rollouts += [Rollout(r["problem_id"], s, np.asarray(r["response_token_ids"], np.int32)) for r in gen.step(s)]
    live = [
        (r["problem_id"], np.asarray(r["prompt_token_ids"], np.int32), np.asarray(r["response_token_ids"], np.int32))
        for r in gen.step(3)
    ]
    live = [x for x in live if x[2].size > 300][:batch]
    return HistorySnapshot.from_rollouts(rollouts, next_step=LIVE_STEP), live


class _Live:
    """Requests advancing through their recorded responses (positions in generated tokens)."""

    def __init__(self, live: list[tuple[str, np.ndarray, np.ndarray]], start: int = 32) -> None:
        self.pids = [x[0] for x in live]
        self.full = [np.concatenate([x[1], x[2]]) for x in live]
        self.np = [int(x[1].size) for x in live]
        self.resp = [x[2].tolist() for x in live]
        self.pos = [start] * len(live)
        self.last = [1] * len(live)

    def contexts(self) -> list[np.ndarray]:
        return [f[: n + p] for f, n, p in zip(self.full, self.np, self.pos)]

    def advance(self, drafts: list[list[int]]) -> None:
        for i, d in enumerate(drafts):
            if self.pos[i] >= len(self.resp[i]) - 8:  # keep every request running
                self.pos[i] = 32
                continue
            _, emit = verify(d, self.resp[i], self.pos[i])
            self.pos[i] += emit
            self.last[i] = emit


# ---------------------------------------------------------------------------- decode timing
def time_speculator(
    index: HistoryIndex, live: list, cfg: DASConfig, cls: LengthClass, steps: int, num_running: int | None
) -> dict[str, float]:
    """µs per request per ``DASSpeculator.step`` (wall and CPU). ``index`` is left as found."""
    spec = DASSpeculator(cfg)
    spec.swap(index, LIVE_STEP, {p: cls for p in index.problem_ids()})
    state = _Live(live)
    clock = Clock()
    for k in range(steps + 1):
        ctx = state.contexts()
        batch = [
            StepRequest(f"r{i}", c, state.np[i], state.pids[i], None, state.last[i]) for i, c in enumerate(ctx)
        ]
        clock.start()
        drafts = spec.step(batch, num_running=num_running)
        clock.stop(count=k > 0)  # step 0 builds the per-request trees from scratch: excluded
        state.advance(drafts)
    for i in range(len(live)):
        spec.finish(f"r{i}", keep_as_sibling=False)  # removes the live sibling text again
    return clock.per(steps * len(live))


def time_propose(index: HistoryIndex, live: list, cfg: DASConfig, steps: int) -> dict[str, float]:
    """µs per request per ``Drafter.propose`` (no policy layer; siblings on)."""
    drafter = Drafter(index, max_depth=cfg.max_depth, min_token_prob=cfg.min_token_prob, live_step=LIVE_STEP)
    b = cfg.budgets.long
    state = _Live(live)
    clock = Clock()
    for k in range(steps + 1):
        reqs = [DraftRequest(f"r{i}", c, state.np[i], state.pids[i], b.tokens, b.factor) for i, c in enumerate(state.contexts())]
        clock.start()
        drafts = drafter.propose(reqs)
        clock.stop(count=k > 0)
        state.advance([list(d.token_ids) for d in drafts])
    for i in range(len(live)):
        drafter.finish(f"r{i}", keep_as_sibling=False)
    return clock.per(steps * len(live))


def time_native(index: HistoryIndex, live: list, cfg: DASConfig, steps: int) -> dict[str, Any]:
    """µs (CPU) per request per step of the bare native calls, in total and per call kind."""
    b = cfg.budgets.long
    args = (b.tokens, b.factor, 0.0, cfg.min_token_prob, False)
    state = _Live(live)
    trees = [new_tree(cfg.max_depth) for _ in live]
    indexed = [0] * len(live)
    problem = [index.problem_tree(p) for p in state.pids]
    glob = index.global_tree
    parts = {k: 0.0 for k in ("extend_request", "speculate_request", "speculate_problem", "speculate_global")}
    pc = time.process_time
    for k in range(steps + 1):
        drafts = []
        for i, ctx in enumerate(state.contexts()):
            pattern = ctx[-cfg.max_depth :]
            t0 = pc()
            trees[i].extend_ndarray(0, ctx[indexed[i] :])
            t1 = pc()
            trees[i].speculate_ndarray(pattern, *args)
            t2 = pc()
            d = problem[i].speculate_ndarray(pattern, *args)
            t3 = pc()
            glob.speculate_ndarray(pattern, *args)
            t4 = pc()
            indexed[i] = ctx.size
            drafts.append(list(d.token_ids))
            if k:
                for key, dt in zip(parts, (t1 - t0, t2 - t1, t3 - t2, t4 - t3)):
                    parts[key] += dt
        state.advance(drafts)
    n = steps * len(live) / 1e6
    out = {key: v / n for key, v in parts.items()}
    return {"cpu": sum(out.values()), **out}


def speculate_vs_pattern(index: HistoryIndex, live: list, cfg: DASConfig) -> dict[str, float]:
    """CPU µs of one ``speculate_ndarray`` on the problem tree vs the context length passed."""
    b = cfg.budgets.long
    ctxs = [(index.problem_tree(p), np.concatenate([pr, r[:200]])) for p, pr, r in live]
    out = {}
    for length in (4, 8, 16, 32, 64):
        t0 = time.process_time()
        for _ in range(5):
            for tree, ctx in ctxs:
                tree.speculate_ndarray(ctx[-length:], b.tokens, b.factor, 0.0, cfg.min_token_prob, False)
        out[str(length)] = (time.process_time() - t0) / (5 * len(ctxs)) * 1e6
    return out


# ---------------------------------------------------------------------------- build timing
def build_snapshot(tokens: int, seed: int) -> HistorySnapshot:
    """About ``tokens`` response tokens of SYNTHETIC rollouts over 3 steps."""
    params = TraceParams(problems=128, samples=16, steps=3, median_len=max(16.0, tokens / (128 * 16 * 3 * 1.5)))
    gen = SyntheticRollouts(params, seed)
    rollouts = [Rollout(r["problem_id"], s, np.asarray(r["response_token_ids"], np.int32)) for s in range(3) for r in gen.step(s)]
    return HistorySnapshot.from_rollouts(rollouts, next_step=3)


def time_build(snap: HistorySnapshot, global_tree: bool, repeats: int) -> dict[str, float]:
    """``build_index`` throughput (snapshot tokens/s, wall and CPU) and the time to free it."""

    def run() -> dict[str, float]:
        clock, free = Clock(), Clock()
        clock.start()
        index = snap.build_index(64, 5, 10**12, global_tree)
        clock.stop()
        free.start()
        del index  # dropping an index (e.g. at a swap) frees every native tree
        free.stop()
        return {**clock.per(snap.num_tokens, 1.0), "free_s": free.wall}

    best = _best(run, repeats)
    return {"wall_tok_s": 1 / best["wall"], "cpu_tok_s": 1 / best["cpu"], "free_s": best["free_s"]}


def time_build_native(snap: HistorySnapshot, global_tree: bool, repeats: int) -> dict[str, float]:
    """Same trees and order as ``build_index``, but a bare ``extend_ndarray`` loop."""
    items = [(r.problem_id, r.tokens) for r in sorted(snap.rollouts(), key=lambda r: r.step)]

    def run() -> dict[str, float]:
        trees: dict[str, Any] = {}
        glob = new_tree(64) if global_tree else None
        clock = Clock()
        clock.start()
        for seq_id, (pid, toks) in enumerate(items):
            tree = trees.get(pid)
            if tree is None:
                tree = trees[pid] = new_tree(64)
            tree.extend_ndarray(seq_id, toks)
            if glob is not None:
                glob.extend_ndarray(seq_id, toks)
        clock.stop()
        return clock.per(snap.num_tokens, 1.0)

    best = _best(run, repeats)
    return {"wall_tok_s": 1 / best["wall"], "cpu_tok_s": 1 / best["cpu"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--steps", type=int, default=20, help="measured decode steps per run")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--build-tokens", type=int, default=2_000_000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="drafter_speed.json")
    args = ap.parse_args()

    snap, live = make_workload(args.batch, args.seed)
    index = snap.build_index(64, 5, 10**12, True)
    base = DASConfig().with_overrides({"gate.mode": "off"})
    nosib = base.with_overrides({"use_siblings": False})
    das = nosib.with_overrides({"use_global_tree": False})  # request + problem trees (replay's `das`)
    big = base.with_overrides({"budgets.long": {"tokens": 16, "factor": 4.0}})
    gated = DASConfig()  # max_running gate at 64
    r, n = args.repeats, args.steps
    decode = {
        "batch": len(live),
        "history_tokens": snap.num_tokens,
        "unit": "µs per request per decode step",
        "speculator_step": _best(lambda: time_speculator(index, live, base, LengthClass.LONG, n, None), r),
        "speculator_step_no_siblings": _best(lambda: time_speculator(index, live, nosib, LengthClass.LONG, n, None), r),
        "speculator_step_das_sources": _best(lambda: time_speculator(index, live, das, LengthClass.LONG, n, None), r),
        "speculator_step_budget16": _best(lambda: time_speculator(index, live, big, LengthClass.LONG, n, None), r),
        "drafter_propose": _best(lambda: time_propose(index, live, base, n), r),
        "native_calls": _best(lambda: time_native(index, live, base, n), r),
        "speculate_cpu_us_vs_context_len": speculate_vs_pattern(index, live, base),
        "gated_step": _best(lambda: time_speculator(index, live, gated, LengthClass.LONG, n, 10 * len(live)), r),
        "all_short_step": _best(lambda: time_speculator(index, live, base, LengthClass.SHORT, n, None), r),
        "target_us": 30.0,
    }
    del index
    bsnap = build_snapshot(args.build_tokens, args.seed)
    build = {
        "tokens": bsnap.num_tokens,
        "rollouts": bsnap.num_rollouts,
        "unit": "snapshot tokens per second (the global tree indexes each token a second time)",
        "build_index_global": time_build(bsnap, True, r),
        "build_index_no_global": time_build(bsnap, False, r),
        "native_extend_global": time_build_native(bsnap, True, r),
        "native_extend_no_global": time_build_native(bsnap, False, r),
        "target_tok_s": 2e6,
    }
    out = {"machine": machine_info(), "synthetic_data": True, "decode": decode, "build": build}
    Path(args.out).write_text(json.dumps(out, indent=1))
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
