"""Replay equivalence: the device drafter (``DeviceDrafter``, suffix-gpu's pure-PyTorch path on
CPU) against the host suffix-tree drafter (``DASSpeculator`` / arctic-inference) on a real trace.

Setup (issue 20, "replay equivalence"): the trace's first step (``--history-step``, default 0)
is the history (problem corpora + global corpus); the requests are the ``--requests`` longest
responses of the next step (``--step``, default 1; ``--requests 0``: all of them). Both drafters
see the same sources and budgets:

* **own text** (request tree / ``LocalMatchKernel`` over the row of the token buffer);
* **problem history + live siblings**: the problem's history responses plus the in-flight
  responses of the same problem. The host drafter appends sibling text every step, holding back
  its newest ``max_depth`` tokens (``Drafter``); the device drafter gets it through
  ``append_live`` from the token-buffer rows at the cadence of ``DASDeviceProposer`` (every
  ``device_drafter.live_interval`` drafted steps, chunks of >= ``live_chunk`` new tokens, the
  newest ``pattern + k + 1`` tokens held back, ``pattern`` tokens of overlap);
* **global**: every history response, plain token ids.

Budgets are flat: every request gets ``k`` tokens with the match-length factor of the config's
``fill_budget`` (what a padded drafted step gives every request), no gate, ``padded_k = 0``.
The device drafter always takes the best-scoring source (ties: own, problem, global); the host
reference is run the same way (``global_fallback: false``, the ``cpu`` column) and, for
information, with the config's default fallback rule (``cpu_fallback``).

Replay: lockstep greedy verification. Every engine step, every running request is drafted for
(the device drafter batched exactly as the engine calls it: ``DeviceDrafter.propose`` on a
``[B, S]`` int32 token buffer of the running rows with per-row slots, budgets and factors), the
draft is verified against the recorded response (accepted = longest matching prefix) and the
request advances by accepted + 1 (the bonus token; never past its end). Reported: tokens per
verify step (emitted tokens / request-steps) per generated-length bucket (the request's length
before the step) and overall, per k, and the device / host ratios.

Output: ``--out`` JSON (default ``benchmarks/results/cpu-device-replay.json``) and a PNG beside
it; each bucket also carries ``se``, the standard error of its mean (request-steps taken as
independent: a scale for trajectory noise, not a bound). CPU only, one torch thread (``--threads``;
more threads on a shared 2-core machine made ``propose`` ~100x slower): the default 64 requests
at k = 4 and 8 take 3-4 minutes.

Measured (H100 Qwen2.5-0.5B MATH-500 trace, 64 longest step-1 requests, defaults: pattern 16,
64 occurrences, 4 backoff caps, live buffer 1 << 14, factor 2): device / host tokens per verify
step 1.001 (k = 4) and 0.998 (k = 8) overall; per bucket 0.989-1.009 (k = 4) and 0.978-1.002
(k = 8), the lowest in the >= 1536 bucket (582 verify steps, 5.35 vs 5.47 tokens, less than one
standard error apart). Diagnostics on the 8 longest requests at k = 8: own text alone, device >=
host in every bucket; without the global source the >= 1536 bucket is equal (5.336 vs 5.333);
matching at every length 1..16 instead of the caps 16/8/4/2, or a live buffer of 1 << 16, does
not raise the device's >= 1536 bucket.
"""

from __future__ import annotations

import argparse
import bisect
import json
import os
import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from replay import Sample, read_trace  # noqa: E402

from openrlhf_das.config import DASConfig, overrides_from_items  # noqa: E402
from openrlhf_das.drafter import HistorySnapshot, Rollout  # noqa: E402
from openrlhf_das.speculator import DASSpeculator, StepRequest  # noqa: E402

HERE = Path(__file__).resolve().parent
TRACE = HERE / "traces" / "h100-qwen0.5b-math500-T1.jsonl.zst"
OUT = HERE / "results" / "cpu-device-replay.json"
QWEN_VOCAB = 151936


# ---------------------------------------------------------------------------- inputs
@dataclass
class Workload:
    history: list[Sample]
    requests: list[Sample]
    edges: list[int]


def load_workload(trace: str | Path, requests: int, history_step: int = 0, step: int = 1,
                  edges: Sequence[int] = (512, 1024, 1536)) -> Workload:
    """History = the trace's ``history_step``; requests = the ``requests`` longest responses of
    ``step`` (0: all), longest first (ties: trace order)."""
    _, steps = read_trace(trace)
    hist = [s for s in steps[history_step] if s.response.size]
    reqs = [s for s in steps[step] if s.response.size]
    order = sorted(range(len(reqs)), key=lambda i: -int(reqs[i].response.size))
    if requests > 0:
        order = order[:requests]
    return Workload(hist, [reqs[i] for i in order], list(edges))


def replay_config(base: DASConfig, k: int, fallback: bool = False) -> DASConfig:
    """``base`` with the replay's flat budget (k tokens, ``fill_budget`` factor), no gate, no
    length policy, and ``global_fallback`` = ``fallback``."""
    factor = base.fill_budget.factor
    return base.with_overrides({
        "length_policy": False,
        "flat_budget": {"tokens": k, "factor": factor},
        "gate.mode": "off",
        "global_fallback": fallback,
        "step_quota_tokens": None,
    })


# ---------------------------------------------------------------------------- accounting
@dataclass
class Tally:
    """Per-bucket request-steps, emitted tokens, drafted and accepted draft tokens."""

    steps: np.ndarray
    emitted: np.ndarray
    drafted: np.ndarray
    accepted: np.ndarray
    emitted_sq: np.ndarray
    engine_steps: int = 0
    wall_s: float = 0.0

    @classmethod
    def zeros(cls, n: int) -> "Tally":
        z = lambda: np.zeros(n, np.int64)  # noqa: E731
        return cls(z(), z(), z(), z(), z())

    def add(self, bucket: int, drafted: int, accepted: int, emitted: int) -> None:
        self.steps[bucket] += 1
        self.emitted[bucket] += emitted
        self.emitted_sq[bucket] += emitted * emitted
        self.drafted[bucket] += drafted
        self.accepted[bucket] += accepted

    def summary(self, labels: Sequence[str]) -> dict[str, Any]:
        def row(s, e, d, a, q):
            # se: standard error of the mean tokens per verify step (request-steps taken as
            # independent; a rough scale for the noise of a bucket, not a confidence bound)
            var = (q / s - (e / s) ** 2) if s else 0.0
            return {"verify_steps": int(s), "tokens_per_verify_step": float(e / s) if s else None,
                    "se": float(np.sqrt(max(var, 0.0) / s)) if s > 1 else None,
                    "drafted": int(d), "accepted": int(a),
                    "acceptance_rate": float(a / d) if d else None}

        out = row(self.steps.sum(), self.emitted.sum(), self.drafted.sum(), self.accepted.sum(),
                  self.emitted_sq.sum())
        out["by_bucket"] = {lab: row(self.steps[i], self.emitted[i], self.drafted[i], self.accepted[i],
                                     self.emitted_sq[i]) for i, lab in enumerate(labels)}
        out["engine_steps"] = self.engine_steps
        out["wall_s"] = self.wall_s
        return out


def bucket_labels(edges: Sequence[int]) -> list[str]:
    lo = [0, *edges]
    return [f"{a}-{b}" for a, b in zip(lo, edges)] + [f">={edges[-1]}"]


def verify(draft: Sequence[int], response: np.ndarray, pos: int) -> tuple[int, int]:
    """(accepted, emitted) of greedy verification of ``draft`` at ``response[pos:]``."""
    remaining = int(response.size) - pos
    n = min(len(draft), remaining)
    a = 0
    while a < n and int(draft[a]) == int(response[pos + a]):
        a += 1
    return a, min(a + 1, remaining)


# ---------------------------------------------------------------------------- host reference
def run_cpu(cfg: DASConfig, w: Workload) -> Tally:
    """Lockstep replay with the host drafter (``DASSpeculator.step``, ``padded_k = 0``)."""
    t0 = time.perf_counter()
    spec = DASSpeculator(cfg)
    snap = HistorySnapshot.from_rollouts([Rollout(s.problem_id, 0, s.response) for s in w.history], 1)
    spec.load_snapshot(snap)
    tally = Tally.zeros(len(w.edges) + 1)
    full = [np.concatenate([s.prompt, s.response]).astype(np.int32) for s in w.requests]
    npr = [int(s.prompt.size) for s in w.requests]
    rid = [f"1/{s.problem_id}/{s.sample_index}/{i}" for i, s in enumerate(w.requests)]
    pos = [0] * len(w.requests)
    last = [0] * len(w.requests)
    running = list(range(len(w.requests)))
    while running:
        batch = [StepRequest(rid[i], full[i][: npr[i] + pos[i]], npr[i], w.requests[i].problem_id, None, last[i])
                 for i in running]
        drafts = spec.step(batch, num_running=len(running), padded_k=0)
        still = []
        for i, d in zip(running, drafts):
            resp = w.requests[i].response
            acc, emit = verify(d, resp, pos[i])
            tally.add(bisect.bisect_right(w.edges, pos[i]), len(d), acc, emit)
            pos[i] += emit
            last[i] = emit
            if pos[i] < resp.size:
                still.append(i)
            else:
                spec.finish(rid[i], keep_as_sibling=True)
        running = still
        tally.engine_steps += 1
    tally.wall_s = time.perf_counter() - t0
    return tally


# ---------------------------------------------------------------------------- device drafter
def device_settings(cfg: DASConfig, k: int, vocab_size: int, history_capacity: int, live_capacity: int):
    from openrlhf_das.device import DeviceDrafterSettings

    dc = cfg.device_drafter
    return DeviceDrafterSettings(
        k=k, vocab_size=vocab_size, max_pattern_len=cfg.pattern_tokens or cfg.max_depth,
        max_occurrences=dc.max_occurrences, num_backoff=dc.num_backoff, min_token_prob=cfg.min_token_prob,
        max_spec_offset=cfg.max_spec_offset, history_capacity=history_capacity, live_capacity=live_capacity,
        use_own=cfg.use_request_tree, use_problem=cfg.use_problem_tree, use_global=cfg.use_global_tree)


class LiveFeeder:
    """``DASDeviceProposer._append_live`` on the replay's buffer: every ``interval`` drafted
    steps, each running row's text from its last appended end (less ``overlap``) to its length
    less ``hold`` goes to the problem index, once at least ``chunk`` new tokens are there."""

    def __init__(self, cfg: DASConfig, k: int) -> None:
        p = cfg.pattern_tokens or cfg.max_depth
        self.on = cfg.use_siblings and cfg.use_problem_tree
        self.hold = p + k + 1
        self.overlap = p
        self.interval = cfg.device_drafter.live_interval
        self.chunk = cfg.device_drafter.live_chunk
        self.since = 0
        self.done: dict[int, int] = {}
        self.appends = 0

    def step(self, drafter, buf, rows: np.ndarray, prompt: np.ndarray, length: np.ndarray, slot: np.ndarray) -> None:
        self.since += 1
        if self.since < self.interval:
            return
        self.since = 0
        if not self.on:
            return
        done = np.fromiter((self.done.get(int(r), -1) for r in rows), np.int64, len(rows))
        start = np.where(done < 0, prompt, done)
        end = length - self.hold
        ready = (slot >= 0) & (end - start >= self.chunk)
        if not ready.any():
            return
        j = np.nonzero(ready)[0]
        starts = np.where(done[j] < 0, start[j], np.maximum(start[j] - self.overlap, prompt[j]))
        drafter.append_live(buf, rows[j], starts, end[j], slot[j])
        for r, e in zip(rows[j], end[j]):
            self.done[int(r)] = int(e)
        self.appends += 1


def run_device(cfg: DASConfig, w: Workload, k: int, vocab_size: int = QWEN_VOCAB,
               history_capacity: int | None = None, live_capacity: int = 1 << 14,
               settings_overrides: dict[str, Any] | None = None) -> tuple[Tally, dict[str, Any]]:
    """Lockstep replay with ``DeviceDrafter.propose`` (torch path on CPU) on the running rows."""
    import dataclasses

    import torch

    from openrlhf_das.device import DeviceDrafter

    t0 = time.perf_counter()
    hist_tokens = sum(int(s.response.size) + 1 for s in w.history)
    if history_capacity is None:
        history_capacity = 1 << max(10, int(np.ceil(np.log2(hist_tokens + 1))))
    s = device_settings(cfg, k, vocab_size, history_capacity, live_capacity)
    if settings_overrides:
        s = dataclasses.replace(s, **settings_overrides)
    dd = DeviceDrafter(s, "cpu")
    load = dd.load_history([x.response for x in w.history], [x.problem_id for x in w.history],
                           [0] * len(w.history))
    n = len(w.requests)
    prompt = np.array([x.prompt.size for x in w.requests], np.int64)
    resp_len = np.array([x.response.size for x in w.requests], np.int64)
    width = int((prompt + resp_len).max())
    buf = torch.zeros(n, width, dtype=torch.int32)
    for i, x in enumerate(w.requests):
        buf[i, : x.prompt.size] = torch.from_numpy(x.prompt.astype(np.int32))
    # as the proposer: a problem without history gets a slot of its own (its siblings' live text)
    slot = np.array([dd.slot_of(x.problem_id, assign=True) for x in w.requests], np.int64)
    slot_t = torch.from_numpy(slot)
    factor = cfg.flat_budget.factor
    pos = np.zeros(n, np.int64)
    feeder = LiveFeeder(cfg, k)
    tally = Tally.zeros(len(w.edges) + 1)
    running = np.arange(n)
    while running.size:
        b = running.size
        idx = torch.from_numpy(running)
        length = prompt[running] + pos[running]
        draft, valid = dd.propose(
            torch.from_numpy(length.astype(np.int32)), buf.index_select(0, idx), torch.ones(b, dtype=torch.bool),
            slot_t.index_select(0, idx), torch.full((b,), k, dtype=torch.int64),
            torch.full((b,), factor, dtype=torch.float32))
        # the proposer appends live sibling text right after the drafting step
        feeder.step(dd, buf, running, prompt[running], length, slot[running])
        draft, valid = draft.numpy(), valid.numpy()
        still = []
        for j, i in enumerate(running):
            d = draft[j, : int(valid[j])]
            resp = w.requests[i].response
            acc, emit = verify(d, resp, int(pos[i]))
            tally.add(bisect.bisect_right(w.edges, int(pos[i])), len(d), acc, emit)
            p0 = int(prompt[i] + pos[i])
            buf[i, p0 : p0 + emit] = torch.from_numpy(resp[pos[i] : pos[i] + emit].astype(np.int32))
            pos[i] += emit
            if pos[i] < resp.size:
                still.append(i)
        running = np.asarray(still, np.int64)
        tally.engine_steps += 1
    tally.wall_s = time.perf_counter() - t0
    info = {"settings": dataclasses.asdict(s), "history_load": load, "live_appends": feeder.appends,
            "stats": dd.stats()}
    return tally, info


# ---------------------------------------------------------------------------- report
def compare(cpu: dict[str, Any], dev: dict[str, Any], min_steps: int) -> dict[str, Any]:
    """Device / host ratio of tokens per verify step, overall and per bucket with at least
    ``min_steps`` verify steps in both runs."""
    def ratio(a, b):
        return b["tokens_per_verify_step"] / a["tokens_per_verify_step"] if a["tokens_per_verify_step"] else None

    out = {"overall": ratio(cpu, dev), "by_bucket": {}}
    for lab, c in cpu["by_bucket"].items():
        d = dev["by_bucket"][lab]
        ok = min(c["verify_steps"], d["verify_steps"]) >= min_steps
        out["by_bucket"][lab] = ratio(c, d) if ok else None
    vals = [out["overall"], *[v for v in out["by_bucket"].values() if v is not None]]
    out["worst"] = min(vals) if vals else None
    out["within_5pct"] = all(v >= 0.95 for v in vals if v is not None)
    return out


def plot(rep: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ks = list(rep["runs"])
    fig, axes = plt.subplots(1, len(ks), figsize=(6 * len(ks), 4.5), squeeze=False)
    for ax, kk in zip(axes[0], ks):
        run = rep["runs"][kk]
        names = [n for n in ("cpu", "cpu_fallback", "device") if n in run]
        labels = list(run["cpu"]["by_bucket"]) + ["all"]
        x = np.arange(len(labels))
        wdt = 0.8 / len(names)
        for j, name in enumerate(names):
            vals = [run[name]["by_bucket"][lab]["tokens_per_verify_step"] or 0 for lab in labels[:-1]]
            vals.append(run[name]["tokens_per_verify_step"])
            ax.bar(x + j * wdt, vals, wdt, label=name)
        r = run["ratio_device_vs_cpu"]
        for i, lab in enumerate(labels):
            v = r["overall"] if lab == "all" else r["by_bucket"].get(lab)
            if v is not None:
                ax.text(i + wdt * (len(names) - 1) / 2, 0.05, f"{v:.3f}", ha="center", fontsize=8, color="white")
        ax.set_xticks(x + wdt * (len(names) - 1) / 2, labels)
        ax.set_xlabel("generated length before the step (tokens)")
        ax.set_ylabel("tokens per verify step")
        ax.set_title(f"{kk}: device/cpu {r['overall']:.3f} (worst bucket {r['worst']:.3f})")
        ax.legend(fontsize=8)
    fig.suptitle(f"device drafter (torch, CPU) vs host suffix trees, {rep['requests']} requests of "
                 f"{Path(rep['trace']).name}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--trace", default=str(TRACE))
    ap.add_argument("--requests", type=int, default=64, help="longest requests of --step (0: all)")
    ap.add_argument("--all", action="store_true", help="every response of --step (= --requests 0)")
    ap.add_argument("--history-step", type=int, default=0)
    ap.add_argument("--step", type=int, default=1)
    ap.add_argument("--k", type=int, nargs="+", default=[4, 8])
    ap.add_argument("--edges", default="512,1024,1536", help="bucket upper edges (generated tokens)")
    ap.add_argument("--config", help="DAS YAML config (default: DASConfig defaults)")
    ap.add_argument("--das", action="append", default=[], metavar="KEY=VALUE", help="DAS config override")
    ap.add_argument("--dev", action="append", default=[], metavar="KEY=VALUE",
                    help="DeviceDrafterSettings override (int/float/bool)")
    ap.add_argument("--vocab-size", type=int, default=QWEN_VOCAB)
    ap.add_argument("--live-capacity", type=int, default=1 << 14)
    ap.add_argument("--history-capacity", type=int, default=None, help="default: next power of 2 of the history")
    ap.add_argument("--no-fallback-ref", action="store_true", help="skip the cpu_fallback reference run")
    ap.add_argument("--min-steps", type=int, default=200, help="verify steps a bucket needs to be compared")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (more than 1 on a shared machine can be 100x slower)")
    ap.add_argument("--out", default=str(OUT))
    args = ap.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    base = DASConfig.from_yaml(args.config) if args.config else DASConfig()
    if args.das:
        base = base.with_overrides(overrides_from_items(args.das))
    dev_over = {}
    for item in args.dev:
        key, val = item.split("=", 1)
        dev_over[key] = json.loads(val.lower()) if val.lower() in ("true", "false") else (
            float(val) if "." in val else int(val))
    edges = [int(x) for x in args.edges.split(",")]
    w = load_workload(args.trace, 0 if args.all else args.requests, args.history_step, args.step, edges)
    labels = bucket_labels(edges)
    rep: dict[str, Any] = {
        "trace": str(args.trace), "history_step": args.history_step, "step": args.step,
        "requests": len(w.requests), "request_tokens": int(sum(s.response.size for s in w.requests)),
        "history_responses": len(w.history), "history_tokens": int(sum(s.response.size for s in w.history)),
        "edges": edges, "min_steps": args.min_steps,
        "machine": {"cores": os.cpu_count(), "torch_threads": args.threads, "python": platform.python_version()},
        "runs": {},
    }
    t_all = time.perf_counter()
    for k in args.k:
        cfg = replay_config(base, k, fallback=False)
        run: dict[str, Any] = {"config": {x: cfg.to_dict()[x] for x in (
            "max_depth", "pattern_tokens", "min_token_prob", "max_spec_offset", "flat_budget", "use_request_tree",
            "use_problem_tree", "use_global_tree", "use_siblings", "device_drafter")}}
        run["cpu"] = run_cpu(cfg, w).summary(labels)
        if not args.no_fallback_ref:
            run["cpu_fallback"] = run_cpu(replay_config(base, k, fallback=True), w).summary(labels)
        dev, info = run_device(cfg, w, k, args.vocab_size, args.history_capacity, args.live_capacity, dev_over)
        run["device"] = dev.summary(labels)
        run["device_info"] = info
        run["ratio_device_vs_cpu"] = compare(run["cpu"], run["device"], args.min_steps)
        if "cpu_fallback" in run:
            run["ratio_device_vs_cpu_fallback"] = compare(run["cpu_fallback"], run["device"], args.min_steps)
        rep["runs"][f"k={k}"] = run
        line = " ".join(f"{lab}: {run['cpu']['by_bucket'][lab]['tokens_per_verify_step'] or 0:.3f}/"
                        f"{run['device']['by_bucket'][lab]['tokens_per_verify_step'] or 0:.3f}" for lab in labels)
        print(f"k={k} cpu/device tokens per verify step: all {run['cpu']['tokens_per_verify_step']:.3f}/"
              f"{run['device']['tokens_per_verify_step']:.3f} (ratio {run['ratio_device_vs_cpu']['overall']:.3f}, "
              f"worst {run['ratio_device_vs_cpu']['worst']:.3f})  {line}  "
              f"[cpu {run['cpu']['wall_s']:.0f}s, device {run['device']['wall_s']:.0f}s]", flush=True)
    rep["wall_s"] = time.perf_counter() - t_all
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(rep, indent=1))
    plot(rep, out.with_suffix(".png"))
    print(f"wrote {out} and {out.with_suffix('.png')}")


if __name__ == "__main__":
    main()
