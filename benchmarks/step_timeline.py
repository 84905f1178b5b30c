"""Engine step timeline: how long each engine step took, by kind and batch size, for every mode.

The long-tail benchmark's per-step figures were estimates (docs/gpu.md, ``pool_runs.py``): a DAS
mode's bulk seconds over its gated steps against no speculation's bulk seconds over a step count
guessed from response lengths. This recorder measures them in the engine process for any mode,
speculating or not: it wraps the worker's ``model_runner.execute_model`` (one call per engine
step; under async scheduling the engine loop calls it once per step, so the interval between two
calls is the step's time in steady state) and records per call

* ``t``: ``time.perf_counter()`` at the call, seconds;
* ``n``: requests scheduled in the step;
* ``tokens``: tokens scheduled (``total_num_scheduled_tokens``: one per decoding request, plus
  draft slots, plus prefill chunks);
* ``spec``: draft slots scheduled (sum over ``scheduled_spec_decode_tokens``; before the runner
  trims the slots a drafter left empty).

Kinds (:func:`kind`): ``prefill`` (some prompt tokens in the step), ``drafted`` (draft slots, no
prompt tokens), ``plain`` (one token per request: a no-speculation step, or a DAS step its batch
gate closed). :func:`summarize` reduces one epoch to milliseconds per step by kind and by batch-size
bucket (``BATCH_EDGES``); a step's time is the interval to the next call, so each epoch's last step
is not timed. Overhead per step: a few list appends and a sum over the drafting requests.

Runs inside the engine process through ``LLM.collective_rpc`` with a callable (``start``,
``take``): the caller sets ``VLLM_ALLOW_INSECURE_SERIALIZATION=1`` and registers this module for
pickling by value (:func:`register`, as ``host_sampler.py``). Benchmark scaffolding; not part of
the package.
"""

from __future__ import annotations

import sys
import time
from typing import Any, Sequence

import numpy as np

ATTR = "_step_timeline"
FIELDS = ("t", "n", "tokens", "spec")
KINDS = ("plain", "drafted", "prefill")
BATCH_EDGES = (8, 16, 32, 64, 128, 256, 512)
"""Upper edges of the batch-size buckets (requests per step): 1-8, 9-16, ..., 257-512, > 512.
64 is the default batch gate's ``max_running``: buckets up to it are the tail, above it the bulk."""


def start(worker: Any) -> bool:
    """``collective_rpc`` body: record every ``execute_model`` call of the worker's runner from
    now on (idempotent: a second call keeps the first recorder)."""
    if getattr(worker, ATTR, None) is not None:
        return True
    runner = worker.model_runner
    rec: dict[str, list] = {f: [] for f in FIELDS}
    orig = runner.execute_model
    t, n, tokens, spec = (rec[f].append for f in FIELDS)

    def execute_model(scheduler_output: Any, *args: Any, **kwargs: Any) -> Any:
        t(time.perf_counter())
        n(len(scheduler_output.num_scheduled_tokens))
        tokens(int(scheduler_output.total_num_scheduled_tokens))
        spec(sum(map(len, scheduler_output.scheduled_spec_decode_tokens.values())))
        return orig(scheduler_output, *args, **kwargs)

    runner.execute_model = execute_model
    setattr(worker, ATTR, (rec, orig))
    return True


def take(worker: Any) -> dict[str, list]:
    """``collective_rpc`` body: the calls recorded since the last ``take`` (or ``start``); clears them."""
    rec, _ = getattr(worker, ATTR)
    out = {f: list(rec[f]) for f in FIELDS}
    for f in FIELDS:
        rec[f].clear()
    return out


def stop(worker: Any) -> bool:
    """``collective_rpc`` body: restore the runner's ``execute_model``."""
    rec_orig = getattr(worker, ATTR, None)
    if rec_orig is not None:
        worker.model_runner.execute_model = rec_orig[1]
        setattr(worker, ATTR, None)
    return True


def register() -> None:
    """Let ``collective_rpc`` ship this module's functions by value. Call before the LLM is built
    (vLLM reads the setting from the environment when it serializes)."""
    import os

    import cloudpickle

    os.environ["VLLM_ALLOW_INSECURE_SERIALIZATION"] = "1"
    cloudpickle.register_pickle_by_value(sys.modules[__name__])


def kind(n: int, tokens: int, spec: int) -> str:
    """``prefill`` if the step holds prompt tokens (more tokens than one per request plus its
    draft slots), else ``drafted`` if it has draft slots, else ``plain``."""
    if tokens > n + spec:
        return "prefill"
    return "drafted" if spec > 0 else "plain"


def _bucket(n: int) -> str:
    lo = 1
    for hi in BATCH_EDGES:
        if n <= hi:
            return f"{lo}-{hi}"
        lo = hi + 1
    return f">{BATCH_EDGES[-1]}"


BUCKETS = tuple(_bucket(e) for e in BATCH_EDGES) + (_bucket(BATCH_EDGES[-1] + 1),)
"""Bucket names in order (``"1-8"`` ... ``">512"``)."""


def _stats(ms: np.ndarray) -> dict[str, Any]:
    return {"steps": int(ms.size), "ms_mean": round(float(ms.mean()), 4), "ms_median": round(float(np.median(ms)), 4),
            "seconds": round(float(ms.sum()) / 1e3, 4)}


def summarize(rec: dict[str, Sequence[float]]) -> dict[str, Any]:
    """One epoch's calls (``take``'s dict) → ``steps`` (calls), ``timed_steps`` (all but the
    last), ``by_kind`` {kind: steps, ms_mean, ms_median, seconds}, ``by_batch`` [{bucket, kind,
    steps, ms_mean, ms_median, seconds, mean_requests, draft_slots_per_request}] (buckets in
    order, kinds present), ``spec_slots`` (draft slots scheduled). Empty steps (no request) are
    not engine steps and are dropped."""
    t = np.asarray(rec["t"], dtype=np.float64)
    n = np.asarray(rec["n"], dtype=np.int64)
    tokens = np.asarray(rec["tokens"], dtype=np.int64)
    spec = np.asarray(rec["spec"], dtype=np.int64)
    keep = n > 0
    t, n, tokens, spec = t[keep], n[keep], tokens[keep], spec[keep]
    out: dict[str, Any] = {"steps": int(t.size), "timed_steps": max(0, int(t.size) - 1),
                           "spec_slots": int(spec.sum()), "by_kind": {}, "by_batch": []}
    if t.size < 2:
        return out
    ms = np.diff(t) * 1e3
    n, tokens, spec = n[:-1], tokens[:-1], spec[:-1]
    kinds = np.array([kind(a, b, c) for a, b, c in zip(n.tolist(), tokens.tolist(), spec.tolist())])
    for k in KINDS:
        sel = kinds == k
        if sel.any():
            out["by_kind"][k] = _stats(ms[sel])
    buckets = np.array([_bucket(x) for x in n.tolist()])
    for b in BUCKETS:
        for k in KINDS:
            sel = (buckets == b) & (kinds == k)
            if sel.any():
                out["by_batch"].append({"bucket": b, "kind": k, **_stats(ms[sel]),
                                        "mean_requests": round(float(n[sel].mean()), 2),
                                        "draft_slots_per_request": round(float(spec[sel].sum() / n[sel].sum()), 3)})
    return out


def merge(summaries: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Several epochs' (or calls') summaries → one, weighting each by its steps (means from
    seconds / steps; medians are not poolable and are left out)."""
    out: dict[str, Any] = {"steps": sum(s.get("steps", 0) for s in summaries),
                           "timed_steps": sum(s.get("timed_steps", 0) for s in summaries),
                           "spec_slots": sum(s.get("spec_slots", 0) for s in summaries), "by_kind": {}, "by_batch": []}
    for k in KINDS:
        rows = [s["by_kind"][k] for s in summaries if k in s.get("by_kind", {})]
        if rows:
            steps, secs = sum(r["steps"] for r in rows), sum(r["seconds"] for r in rows)
            out["by_kind"][k] = {"steps": steps, "ms_mean": round(secs / steps * 1e3, 4), "seconds": round(secs, 4)}
    keys: list[tuple[str, str]] = []
    for s in summaries:
        keys += [(r["bucket"], r["kind"]) for r in s.get("by_batch", []) if (r["bucket"], r["kind"]) not in keys]
    for b, k in sorted(keys, key=lambda x: (BUCKETS.index(x[0]), KINDS.index(x[1]))):
        rows = [r for s in summaries for r in s.get("by_batch", []) if (r["bucket"], r["kind"]) == (b, k)]
        steps, secs = sum(r["steps"] for r in rows), sum(r["seconds"] for r in rows)
        out["by_batch"].append({"bucket": b, "kind": k, "steps": steps, "ms_mean": round(secs / steps * 1e3, 4),
                                "seconds": round(secs, 4),
                                "mean_requests": round(sum(r["mean_requests"] * r["steps"] for r in rows) / steps, 2)})
    return out


def ratios(mode: dict[str, Any], base: dict[str, Any]) -> list[dict[str, Any]]:
    """Per batch bucket: ``mode``'s mean ms per step of each kind over ``base``'s plain steps in
    the same bucket (issue 20's "drafted step vs a no-spec step at the same batch size", and the
    gated bulk step's cost), from two :func:`merge` / :func:`summarize` results."""
    plain = {r["bucket"]: r for r in base.get("by_batch", []) if r["kind"] == "plain"}
    out = []
    for r in mode.get("by_batch", []):
        b = plain.get(r["bucket"])
        if r["kind"] != "prefill" and b:
            out.append({"bucket": r["bucket"], "kind": r["kind"], "ms": r["ms_mean"], "base_ms": b["ms_mean"],
                        "ratio": round(r["ms_mean"] / b["ms_mean"], 4), "steps": r["steps"], "base_steps": b["steps"]})
    return out
