"""Replay a rollout trace under each drafting policy with a simulated batch engine.

For every RL step of the trace, all its requests start together and run in one simulated
engine. Each engine step, every running request gets a draft from the real
:class:`~openrlhf_das.speculator.DASSpeculator` (or none), and verification is greedy: the
longest prefix of the draft equal to the recorded continuation is accepted, plus one bonus
token (the token the target model samples after the last accepted one) — exactly what
greedy-verified speculative decoding emits. The step time is a cost model::

    t_engine_step = base + per_token * (running requests + draft tokens) [+ draft_step if any request drafts]

(defaults 10 ms + 0.005 ms/token, draft_step 0: a memory-bound decode where extra query tokens
are cheap; ``--draft-step-ms`` adds a fixed cost to every step that drafts, as GPU engines pay),
so a step's makespan is the sum of engine-step times until its last request finishes. Prefill
is not modelled (equal for every policy).

History is fed like an engine gets it: after step ``s`` the trainer snapshots, for each problem
of step ``s + 1``, its responses from its last ``W`` appearances, ships the snapshot as npz
bytes, and the engine builds and swaps in the index and the length classes of the next batch.
Drafts therefore come only from earlier steps, plus live siblings for ``das+siblings``.

Policies (``DASConfig`` flags; non-DAS policies use a flat budget and no gate, like vLLM's
``suffix`` method; the DAS ones use the config's length policy and gate):

=================  =======  =======  ======  ========  ======================
policy             request  problem  global  siblings  budgets
=================  =======  =======  ======  ========  ======================
``none``           -        -        -       -         no drafting
``request``        x                                   flat (SuffixDecoding-like)
``request+global`` x                 x                 flat (vLLM ``suffix``-like)
``problem``                 x                          flat
``problem+global``          x        x                 flat (best score wins)
``das``            x        x                          length classes + gate
``das+siblings``   x        x                x         length classes + gate
``das+all``        x        x        x       x         length classes + gate (engine default)
``flat+all``       x        x        x       x         flat (``das+all`` without the policy)
``flat+all+gate``  x        x        x       x         flat + gate (``das+all`` without classes)
=================  =======  =======  ======  ========  ======================

``DASConfig.shared_own_text`` of the base config applies to every policy (it changes what the
problem and global trees hold). ``replay(extra=...)`` adds speculators built elsewhere (e.g.
``arctic_baseline.ArcticSpeculator``) under their own names.

``--padded`` models a GPU engine on full CUDA graphs (``pad_drafts`` with draft-free graphs):
a step in which any request has a draft verifies 1 + k tokens for *every* running request
(k = the policy's largest budget), a step without drafts one token per request; DAS policies
then draft with ``fill_padded_drafts`` as configured (every request gets the largest budget).

Output: a JSON report (``--out``) and a PNG (``--plot``); numbers are simulated, and the
report carries the trace header (which says whether the trace is synthetic).
"""

from __future__ import annotations

import argparse
import bisect
import json
import os
import platform
import sys
import time
from collections import defaultdict, deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from synthetic_trace import open_text  # noqa: E402

from openrlhf_das.config import DASConfig, overrides_from_items  # noqa: E402
from openrlhf_das.drafter import HistorySnapshot, Rollout  # noqa: E402
from openrlhf_das.policy import assign_length_classes, bucket_labels  # noqa: E402
from openrlhf_das.speculator import DASSpeculator, StepRequest  # noqa: E402

_SOURCES = ("use_request_tree", "use_problem_tree", "use_global_tree", "use_siblings")
_FLAGS: dict[str, tuple[tuple[bool, bool, bool, bool], bool] | None] = {
    # policy: ((request, problem, global, siblings), length policy)
    "none": None,
    "request": ((True, False, False, False), False),
    "request+global": ((True, False, True, False), False),
    "problem": ((False, True, False, False), False),
    "problem+global": ((False, True, True, False), False),
    "das": ((True, True, False, False), True),
    "das+siblings": ((True, True, False, True), True),
    "das+all": ((True, True, True, True), True),  # the engine's default sources
    "flat+all": ((True, True, True, True), False),  # the same sources with a flat budget
    "flat+all+gate": ((True, True, True, True), False),  # flat+all behind the config's batch gate
}
POLICIES = tuple(_FLAGS)


def policy_config(policy: str, base: DASConfig, flat_tokens: int, flat_factor: float) -> DASConfig | None:
    """The DASConfig of ``policy`` derived from ``base`` (None for ``none``)."""
    spec = _FLAGS[policy]
    if spec is None:
        return None
    sources, length_policy = spec
    overrides: dict[str, Any] = dict(zip(_SOURCES, sources))
    overrides["length_policy"] = length_policy
    if not length_policy:  # stock-like: flat budget, no gate, the best-scoring tree wins
        overrides["flat_budget"] = {"tokens": flat_tokens, "factor": flat_factor}
        if not policy.endswith("+gate"):
            overrides["gate.mode"] = "off"
        overrides["global_fallback"] = False
    return base.with_overrides(overrides)


# ---------------------------------------------------------------------------- trace
@dataclass
class Sample:
    """One recorded response of the trace."""

    problem_id: str
    sample_index: int
    prompt: np.ndarray  # int32
    response: np.ndarray  # int32


def read_trace(path: str | Path) -> tuple[dict[str, Any], dict[int, list[Sample]]]:
    """(header, samples by step). The header is ``{}`` when the file has none."""
    head: dict[str, Any] = {}
    steps: dict[int, list[Sample]] = defaultdict(list)
    with open_text(path, "r") as f:
        for line in f:
            if not line.strip():
                continue
            rec = json.loads(line)
            if "response_token_ids" not in rec:
                head = rec
                continue
            steps[int(rec["step"])].append(
                Sample(
                    str(rec["problem_id"]),
                    int(rec.get("sample_index", 0)),
                    np.asarray(rec["prompt_token_ids"], np.int32),
                    np.asarray(rec["response_token_ids"], np.int32),
                )
            )
    return head, dict(sorted(steps.items()))


# ---------------------------------------------------------------------------- verification
def verify(draft: Sequence[int], response: Sequence[int], pos: int) -> tuple[int, int]:
    """Greedy verification of ``draft`` at ``response[pos:]``: (accepted, emitted tokens).

    Accepted = longest prefix of the draft equal to the recorded continuation; emitted =
    accepted + 1 bonus token, except that nothing is emitted past the end of the response.
    """
    remaining = len(response) - pos
    n = min(len(draft), remaining)
    a = 0
    while a < n and draft[a] == response[pos + a]:
        a += 1
    return a, min(a + 1, remaining)


@dataclass(frozen=True)
class CostModel:
    """Simulated engine-step time: ``base_s + per_token_s * query_tokens`` (seconds), plus
    ``draft_step_s`` for a step in which any request has a draft (a fixed per-step drafting
    overhead: drafter and verification set-up, as measured on a GPU; 0 by default)."""

    base_s: float = 0.010
    per_token_s: float = 0.005e-3
    draft_step_s: float = 0.0

    def step_seconds(self, query_tokens: int, drafted: bool = False) -> float:
        return self.base_s + self.per_token_s * query_tokens + (self.draft_step_s if drafted else 0.0)

    def as_dict(self) -> dict[str, float]:
        return {"base_s": self.base_s, "per_token_s": self.per_token_s, "draft_step_s": self.draft_step_s}

    @classmethod
    def parse_ms(cls, text: str) -> "CostModel":
        """``"BASE:PER_TOKEN[:DRAFT_STEP]"`` in milliseconds, e.g. ``"2.63:0.0145:2.4"``."""
        parts = [float(x) for x in text.split(":")]
        if len(parts) not in (2, 3):
            raise ValueError(f"cost model must be BASE:PER_TOKEN[:DRAFT_STEP] (ms), got {text!r}")
        return cls(*(x * 1e-3 for x in parts))


@dataclass
class _Running:
    rid: str
    problem_id: str
    full: np.ndarray  # prompt + response, int32
    num_prompt: int
    response: list[int]
    pos: int = 0  # generated tokens so far
    last: int = 0  # tokens emitted by the previous engine step
    engine_steps: int = 0


@dataclass
class _Counts:
    """Per-bucket counters: decode steps, draft tokens, accepted draft tokens; and the
    request-steps handed to the drafter (steps the gate let through, all buckets)."""

    decode_steps: list[int]
    drafted: list[int]
    accepted: list[int]
    drafter_request_steps: int = 0

    @classmethod
    def zeros(cls, n: int) -> "_Counts":
        return cls([0] * n, [0] * n, [0] * n)


@dataclass
class PolicyResult:
    """Everything one policy produced: per-step summaries, bucket counters, speculator stats."""

    policy: str
    config: dict[str, Any] | None
    counts: _Counts
    steps: list[dict[str, Any]] = field(default_factory=list)
    wall_s: float = 0.0  # host seconds spent simulating (not simulated time)
    speculator: dict[str, Any] | None = None


def parse_k_schedule(text: str) -> tuple[tuple[int, int], ...]:
    """``"8:16,32:8,64:4"`` -> ((8, 16), (32, 8), (64, 4)): (most running requests, draft tokens
    per request) ranges, ascending; steps with more running requests than the last range draft
    nothing."""
    try:
        pairs = tuple((int(a), int(b)) for a, b in (x.split(":") for x in text.split(",")))
    except ValueError as e:
        raise ValueError(f"bad k schedule {text!r}: want MAX_RUNNING:K[,MAX_RUNNING:K...]") from e
    if not pairs or any(n < 1 or k < 1 for n, k in pairs) or [n for n, _ in pairs] != sorted({n for n, _ in pairs}):
        raise ValueError(f"bad k schedule {text!r}: ranges must be >= 1 and strictly ascending, k >= 1")
    return pairs


def schedule_k(schedule: Sequence[tuple[int, int]], running: int) -> int:
    """Draft tokens per request in a step of ``running`` requests (0: the step drafts nothing)."""
    return next((k for n, k in schedule if running <= n), 0)


def simulate_step(
    spec: DASSpeculator | None, step: int, samples: list[Sample], cost: CostModel, edges: Sequence[int], counts: _Counts,
    padded: bool = False, extra_costs: Sequence[CostModel] = (), k_schedule: Sequence[tuple[int, int]] = (),
) -> dict[str, Any]:
    """Run every sample of ``step`` to completion; returns the step's summary (seconds, tokens).
    ``padded``: a drafted engine step costs 1 + k query tokens per running request (see module doc).
    ``extra_costs``: more cost models priced on the same simulation (drafting decisions do not
    depend on the cost model), their makespans in ``makespan_s_extra``. ``k_schedule``
    (:func:`parse_k_schedule`): the step's k follows the running requests (an engine whose
    scheduler reserves that many draft slots per request: vLLM's ``dynamic_sd_lookup``): drafts
    are cut to it, a padded step pads to it, and a step past the last range drafts nothing (on
    top of the policy's own gate); at most the policy's largest budget."""
    pad_k = spec.config.max_budget if padded and spec is not None else 0
    if spec is not None and k_schedule and max(k for _, k in k_schedule) > spec.config.max_budget:
        raise ValueError(f"k schedule {k_schedule} exceeds the policy's largest budget {spec.config.max_budget}")
    running = [
        _Running(
            f"{step}/{s.problem_id}/{s.sample_index}",
            s.problem_id,
            np.concatenate([s.prompt, s.response]),
            int(s.prompt.size),
            s.response.tolist(),
        )
        for s in samples
        if s.response.size
    ]
    n_requests = len(running)
    makespan = 0.0
    extra = [0.0] * len(extra_costs)
    engine_steps = accepted_total = drafted_total = 0
    verify_steps: list[int] = []
    while running:
        n = len(running)
        drafts: list[list[int]] | None = None
        step_k = schedule_k(k_schedule, n) if k_schedule else pad_k
        step_pad = step_k if pad_k else 0  # a padded step pads to the step's k
        if spec is not None:
            if spec.gate_allows(n) and (step_k > 0 or not k_schedule):
                batch = [
                    StepRequest(r.rid, r.full[: r.num_prompt + r.pos], r.num_prompt, r.problem_id, None, r.last)
                    for r in running
                ]
                drafts = spec.step(batch, num_running=n, padded_k=step_pad)
                if k_schedule:
                    drafts = [d[:step_k] for d in drafts]
                counts.drafter_request_steps += n
            else:
                spec.observe_gated([r.rid for r in running], [range(r.last) for r in running])
        query = n
        still: list[_Running] = []
        for i, r in enumerate(running):
            b = bisect.bisect_right(edges, r.pos)
            counts.decode_steps[b] += 1
            d = drafts[i] if drafts is not None else None
            if d:
                acc, emit = verify(d, r.response, r.pos)
                query += len(d)
                counts.drafted[b] += len(d)
                counts.accepted[b] += acc
                drafted_total += len(d)
                accepted_total += acc
            else:
                emit = 1
            r.pos += emit
            r.last = emit
            r.engine_steps += 1
            if r.pos < len(r.response):
                still.append(r)
            else:
                verify_steps.append(r.engine_steps)
                if spec is not None:
                    spec.finish(r.rid, keep_as_sibling=True)
        drafted_step = drafts is not None and any(drafts)
        if step_pad and drafted_step:
            query = n * (1 + step_pad)
        makespan += cost.step_seconds(query, drafted_step)
        for j, c in enumerate(extra_costs):
            extra[j] += c.step_seconds(query, drafted_step)
        engine_steps += 1
        running = still
    return {
        "step": step,
        "requests": n_requests,
        "tokens": int(sum(s.response.size for s in samples)),
        "makespan_s": makespan,
        **({"makespan_s_extra": extra} if extra_costs else {}),
        "engine_steps": engine_steps,
        "drafted": drafted_total,
        "accepted": accepted_total,
        "verify_steps_per_request": float(np.mean(verify_steps)) if verify_steps else 0.0,
    }


# ---------------------------------------------------------------------------- history feed
class HistoryFeed:
    """What the trainer keeps: each problem's responses of its last ``window`` appearances.

    ``scope``: ``"batch"`` ships the next batch's problems only; ``"all"`` every problem held,
    as the history actor does for unpinned engines (differs only when problems do not recur)."""

    def __init__(self, window: int, scope: str = "batch") -> None:
        if scope not in ("batch", "all"):
            raise ValueError(f"snapshot scope must be 'batch' or 'all', got {scope!r}")
        self.window = window
        self.scope = scope
        self._by_problem: dict[str, deque[list[Rollout]]] = defaultdict(lambda: deque(maxlen=window))

    def record(self, step: int, samples: list[Sample]) -> None:
        grouped: dict[str, list[Rollout]] = defaultdict(list)
        for s in samples:
            grouped[s.problem_id].append(Rollout(s.problem_id, step, s.response))
        for pid, rollouts in grouped.items():
            self._by_problem[pid].append(rollouts)

    def snapshot_bytes(self, problem_ids: Sequence[str], next_step: int) -> bytes:
        """The serialized snapshot an engine receives for a batch of ``problem_ids``."""
        if self.scope == "all":
            problem_ids = list(self._by_problem)
        rollouts = [r for pid in dict.fromkeys(problem_ids) for step in self._by_problem.get(pid, ()) for r in step]
        return HistorySnapshot.from_rollouts(rollouts, next_step).to_npz_bytes()

    def lengths(self, problem_ids: Sequence[str]) -> dict[str, list[int]]:
        return {pid: [int(r.tokens.size) for step in self._by_problem.get(pid, ()) for r in step] for pid in problem_ids}


# ---------------------------------------------------------------------------- replay
def _needs_history(c: DASConfig) -> bool:
    """Whether an engine with config ``c`` needs the snapshot (trees, siblings or classes)."""
    return c.use_problem_tree or c.use_global_tree or c.use_siblings or c.length_policy


def replay(
    steps: dict[int, list[Sample]],
    policies: Sequence[str],
    base: DASConfig,
    cost: CostModel,
    flat_tokens: int = 4,
    flat_factor: float = 1.0,
    padded: bool = False,
    snapshot_scope: str = "batch",
    extra: dict[str, Any] | None = None,
    extra_costs: Sequence[CostModel] = (),
    k_schedule: Sequence[tuple[int, int]] = (),
) -> dict[str, PolicyResult]:
    """Simulate every step under every policy; results keyed by policy (``padded``,
    ``extra_costs``, ``k_schedule``: see :func:`simulate_step`; ``snapshot_scope``: see :class:`HistoryFeed`;
    ``extra``: more speculator-like objects by name, run after ``policies``)."""
    edges = list(base.length_buckets)
    results: dict[str, PolicyResult] = {}
    specs: dict[str, DASSpeculator | None] = {}
    for p in policies:
        cfg = policy_config(p, base, flat_tokens, flat_factor)
        specs[p] = DASSpeculator(cfg) if cfg is not None else None
        results[p] = PolicyResult(p, cfg.to_dict() if cfg else None, _Counts.zeros(len(edges) + 1))
    for p, spec in (extra or {}).items():
        specs[p] = spec
        results[p] = PolicyResult(p, spec.config.to_dict(), _Counts.zeros(len(edges) + 1))
    feed = HistoryFeed(base.window, snapshot_scope)
    for step, samples in steps.items():
        pids = [s.problem_id for s in samples]
        if step != next(iter(steps)):
            data = feed.snapshot_bytes(pids, step)
            snapshot = HistorySnapshot.from_npz_bytes(data)
            classes = assign_length_classes(pids, feed.lengths(pids), base.long_ratio, base.medium_ratio, base.unknown_class)
            for spec in specs.values():
                if spec is not None and _needs_history(spec.config):
                    spec.load_snapshot(snapshot, classes)
        for p, spec in specs.items():
            res = results[p]
            t0 = time.perf_counter()
            res.steps.append(simulate_step(spec, step, samples, cost, edges, res.counts, padded, extra_costs, k_schedule))
            res.wall_s += time.perf_counter() - t0
        feed.record(step, samples)
    for p, spec in specs.items():
        if spec is not None:
            results[p].speculator = {k: v for k, v in spec.stats().items() if k != "acceptance"}
            if hasattr(spec, "tuner"):
                results[p].speculator["tuning_log"] = list(spec.tuner.changes)
    return results


def report(results: dict[str, PolicyResult], edges: Sequence[int], head: dict[str, Any], cost: CostModel) -> dict[str, Any]:
    labels = bucket_labels(edges)
    base_makespan = sum(s["makespan_s"] for s in results["none"].steps) if "none" in results else None
    out: dict[str, Any] = {
        "trace_header": head,
        "synthetic": bool(head.get("synthetic", False)),
        "cost_model": cost.as_dict(),
        "machine": {"cpu": _cpu_model(), "cores": os.cpu_count(), "python": platform.python_version()},
        "policies": {},
    }
    for p, r in results.items():
        c = r.counts
        makespan = sum(s["makespan_s"] for s in r.steps)
        decode, drafted, accepted = sum(c.decode_steps), sum(c.drafted), sum(c.accepted)
        reqs = sum(s["requests"] for s in r.steps)
        out["policies"][p] = {
            "makespan_s": makespan,
            "makespan_ratio_vs_none": makespan / base_makespan if base_makespan else None,
            "step_makespan_ratio_vs_none": [
                s["makespan_s"] / b["makespan_s"] for s, b in zip(r.steps, results["none"].steps)
            ]
            if "none" in results
            else None,
            "verify_steps_per_request": decode / reqs if reqs else 0.0,
            "accepted_per_step": accepted / decode if decode else 0.0,
            "acceptance_rate": accepted / drafted if drafted else 0.0,
            "drafted": drafted,
            "accepted": accepted,
            "decode_steps": decode,
            "by_bucket": {
                labels[i]: {
                    "decode_steps": c.decode_steps[i],
                    "drafted": c.drafted[i],
                    "accepted": c.accepted[i],
                    "accepted_per_step": c.accepted[i] / c.decode_steps[i] if c.decode_steps[i] else 0.0,
                    "acceptance_rate": c.accepted[i] / c.drafted[i] if c.drafted[i] else 0.0,
                }
                for i in range(len(labels))
            },
            "steps": r.steps,
            "speculator": r.speculator,
            "config": r.config,
            "simulation_wall_s": r.wall_s,
        }
    return out


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def plot(rep: dict[str, Any], path: str | Path) -> None:
    """Accepted tokens per decode step by length bucket, and makespan vs ``none`` per policy."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pols = rep["policies"]
    names = list(pols)
    labels = list(next(iter(pols.values()))["by_bucket"])
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(13, 4.5))
    width = 0.8 / max(len(names), 1)
    x = np.arange(len(labels))
    for k, name in enumerate(names):
        vals = [pols[name]["by_bucket"][lab]["accepted_per_step"] for lab in labels]
        ax1.bar(x + k * width, vals, width, label=name)
    ax1.set_xticks(x + width * (len(names) - 1) / 2, labels)
    ax1.set_xlabel("generated length so far (tokens)")
    ax1.set_ylabel("accepted draft tokens per decode step")
    ax1.legend(fontsize=8)
    ratios = [pols[n]["makespan_ratio_vs_none"] or 1.0 for n in names]
    ax2.bar(names, ratios, color="tab:gray")
    for i, v in enumerate(ratios):
        ax2.text(i, v, f"{v:.2f}", ha="center", va="bottom", fontsize=8)
    ax2.set_ylabel("simulated makespan / none")
    ax2.tick_params(axis="x", rotation=30)
    tag = "SYNTHETIC trace" if rep["synthetic"] else "trace"
    cm = rep["cost_model"]
    draft = f" + {cm['draft_step_s'] * 1e3:g} ms per drafting step" if cm.get("draft_step_s") else ""
    fig.suptitle(f"DAS replay on a {tag} (cost model: {cm['base_s'] * 1e3:g} ms + "
                 f"{cm['per_token_s'] * 1e3:g} ms/token per engine step{draft})")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def format_table(rep: dict[str, Any]) -> str:
    """Plain-text summary table of a report."""
    pols = rep["policies"]
    labels = list(next(iter(pols.values()))["by_bucket"])
    head = f"{'policy':16s} {'makespan/none':>13s} {'steps/req':>9s} {'acc/step':>8s} {'acc.rate':>8s}  " + " ".join(
        f"{lab:>7s}" for lab in labels
    )
    lines = [("SYNTHETIC trace — " if rep["synthetic"] else "") + "accepted draft tokens per decode step by bucket:", head]
    for name, p in pols.items():
        ratio = p["makespan_ratio_vs_none"]
        lines.append(
            f"{name:16s} {ratio if ratio is not None else float('nan'):13.3f} {p['verify_steps_per_request']:9.1f} "
            f"{p['accepted_per_step']:8.3f} {p['acceptance_rate']:8.3f}  "
            + " ".join(f"{p['by_bucket'][lab]['accepted_per_step']:7.3f}" for lab in labels)
        )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("trace", help="trace JSONL (.jsonl or .jsonl.zst), e.g. from synthetic_trace.py")
    ap.add_argument("--policies", nargs="+", default=list(POLICIES), choices=POLICIES)
    ap.add_argument("--config", help="DAS YAML config (default: DASConfig defaults)")
    ap.add_argument("--window", type=int, help="override W")
    ap.add_argument("--flat-tokens", type=int, default=4, help="draft budget of non-DAS policies")
    ap.add_argument("--flat-factor", type=float, default=1.0, help="match-length factor of non-DAS policies")
    ap.add_argument("--base-ms", type=float, default=10.0, help="engine-step base cost (ms)")
    ap.add_argument("--per-token-ms", type=float, default=0.005, help="engine-step cost per query token (ms)")
    ap.add_argument("--draft-step-ms", type=float, default=0.0,
                    help="extra cost of an engine step in which any request drafts (ms; default 0)")
    ap.add_argument("--out", default="replay_results.json")
    ap.add_argument("--plot", default=None, help="PNG path (default: --out with .png)")
    ap.add_argument("--padded", action="store_true",
                    help="model a padded engine on CUDA graphs: a drafted step verifies 1 + k tokens per request")
    ap.add_argument("--k-schedule", type=parse_k_schedule, default=(), metavar="MAX_RUNNING:K[,...]",
                    help="draft tokens per request by running requests, e.g. 8:16,32:8,64:4 (none past the last)")
    ap.add_argument("--das", action="append", default=[], metavar="KEY=VALUE", help="DAS config override (YAML value)")
    args = ap.parse_args()

    base = DASConfig.from_yaml(args.config) if args.config else DASConfig()
    if args.window is not None:
        base = base.with_overrides({"window": args.window})
    if args.das:
        base = base.with_overrides(overrides_from_items(args.das))
    policies = list(dict.fromkeys(["none", *args.policies]))  # ratios need the baseline
    cost = CostModel(args.base_ms * 1e-3, args.per_token_ms * 1e-3, args.draft_step_ms * 1e-3)
    head, steps = read_trace(args.trace)
    t0 = time.perf_counter()
    results = replay(steps, policies, base, cost, args.flat_tokens, args.flat_factor, args.padded,
                     k_schedule=args.k_schedule)
    rep = report(results, base.length_buckets, head, cost)
    rep["padded"] = args.padded
    rep["k_schedule"] = [list(x) for x in args.k_schedule] or None
    rep["command"] = " ".join(["python", *sys.argv])
    rep["wall_s"] = time.perf_counter() - t0
    Path(args.out).write_text(json.dumps(rep, indent=1))
    plot(rep, args.plot or str(Path(args.out).with_suffix(".png")))
    print(format_table(rep))


if __name__ == "__main__":
    main()
