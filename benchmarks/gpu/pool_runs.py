"""Pool ``benchmarks/engine_rollouts.py`` results of one workload from separate device calls.

    pool_runs.py CALL1.json CALL2.json ... [--baseline nospec] [--tail-running 64]
                 --out X.json                                   (also writes X.png)

Each input file is one device call (one seed, its modes in that call's order, e.g. alternating
``nospec,das_gpu`` / ``das_gpu,nospec`` between calls) holding at least two modes, one of them
``--baseline``. Files whose workload differs (``WORKLOAD_ARGS`` of ``engine_rollouts.py``
except ``seed``; modes, their order and output paths may differ) or that ran on another GPU
(``machine.gpu``) are refused. Ratios are always within a call or of sums over the same calls,
never across machines.

Per call and pooled (pooled = sum of seconds over the calls, for the modes present in every
call; also the mean of the per-call ratios), against the baseline:

- ``all``: all epochs; ``e0``: epoch 0; ``e1+``: epochs 1.. (``epochs1plus``, 0-based);
- ``bulk_split``: the bulk ratio of epoch 0 (no history yet) and of epochs 1.. apart;
- ``bulk`` / ``tail`` (as docs/gpu.md, runs 5 and 6): per epoch, bulk seconds = the finish time
  at which the number of still-running requests first drops to <= ``--tail-running`` (64, the
  DAS gate's ``max_running``): requests - #(finish_seconds <= t) <= 64; tail = epoch seconds -
  bulk. An epoch of <= 64 requests is all tail.

Per mode, from the DAS stats when present (``results[mode].epochs[i].das``; the engine resets
them every epoch, except the cumulative ``steps``/``gated_steps``, read as ``epoch_steps`` /
``epoch_gated_steps``, and the graph counters ``drafting_*``/``append_*``, read at the last
epoch): acceptance total and per length bucket with tokens per verify step
(accepted / verify_steps + 1), drafted vs gated steps, host µs per drafted step
(``host_seconds / device_drafted_steps`` for ``das_gpu``; for the host drafter
``propose_seconds`` over the drafted steps, which includes the cheap gated-step calls), CUDA graph
replays/failures/eager calls, and the history's memory (``device_history.memory_bytes`` on the
GPU drafter, ``history.estimated_bytes`` on the host drafter; the largest epoch's).

ms per engine step (estimates, ``step_ms`` in the JSON, each with how it was derived):

- DAS modes: epoch seconds / DAS steps (every engine step passes the proposer); bulk seconds /
  gated steps and tail seconds / drafted steps — the gate closes above ``max_running`` running
  requests, so with ``--tail-running`` equal to it, gated steps are the bulk's and drafted steps
  the tail's;
- modes without speculation (``nospec``, ``nospec_sync``): a step gives every running request
  one token, so an epoch has ~max(response length) steps and its bulk ~the (R - 64)-th shortest
  response's length; tail ms per step = tail seconds / (longest - that length);
- other modes (``ngram_gpu``, ...): not derivable from the results (no step count).

ms per engine step, measured (``step_timeline`` in the JSON; files of ``engine_rollouts.py`` that
record the engine's step timeline, ``benchmarks/step_timeline.py``): each mode's steps of every
epoch of every call merged, by kind (plain, drafted, prefill) and batch-size bucket, and each
mode's plain and drafted steps over the baseline's plain steps in the same bucket
(``step_ratio``): the gated bulk step and "a drafted step vs a no-spec step at the same batch
size" without estimates. Absent when a call's files lack the timeline.

Runaway samples (responses of ``max_tokens`` tokens) are counted per mode, call and epoch, and
the ratio over the (call, epoch) pairs where neither the mode nor the baseline had one is
reported beside the plain ratio (``no_runaway``), so HumanEval runaways can be told apart.

Stdout: a markdown table (mode, calls, pooled total s, ratio vs baseline all / e0 / e1+ / bulk /
tail) to paste into docs, the mean of per-call ratios, a per-call table, and DAS/step tables.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROLLOUTS = HERE.parent / "engine_rollouts.py"
sys.path.insert(0, str(HERE.parent))

import step_timeline  # noqa: E402  benchmarks/step_timeline.py

_WORKLOAD_ARGS_COPY = ("model", "dataset", "prompts_file", "problems", "samples", "epochs", "max_tokens",
                       "temperature", "seed", "k", "das", "device", "cudagraph_mode", "compile_mode",
                       "max_cudagraph_capture_size", "max_num_seqs", "max_model_len", "engines", "tensor_parallel")
IGNORED_ARGS = ("seed", "modes", "out", "png", "trace", "merge", "child", "shard", "sync_dir")
"""Arguments that may differ between pooled calls (not reported); every other differing argument
outside the workload is printed as a note."""

NOSPEC_MODES = ("nospec", "nospec_defaults", "nospec_sync")


def workload_args() -> tuple[str, ...]:
    """``engine_rollouts.WORKLOAD_ARGS`` without ``seed`` (the copy above if the module cannot be
    loaded)."""
    try:
        spec = importlib.util.spec_from_file_location("_engine_rollouts_for_pool", ROLLOUTS)
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        keys = tuple(mod.WORKLOAD_ARGS)
    except Exception:  # noqa: BLE001 - a module mid-edit must not stop pooling
        keys = _WORKLOAD_ARGS_COPY
    return tuple(k for k in keys if k != "seed")


# ---------------------------------------------------------------------- per epoch
def bulk_seconds(finish_seconds: list[float], requests: int, tail_running: int = 64) -> float | None:
    """Finish time at which the still-running requests first number <= ``tail_running``
    (0.0 when the epoch starts with no more than that; None when the timeline is too short).
    A timeline with more entries than requests (an old recorder also counted vLLM's
    "Adding requests" bar, early in the epoch) keeps its last ``requests`` entries."""
    if requests <= tail_running:
        return 0.0
    times = sorted(finish_seconds or [])
    if len(times) > requests:
        times = times[-requests:]
    need = requests - tail_running
    if len(times) < need:
        return None
    return float(times[need - 1])


def epoch_row(ep: dict, tail_running: int, max_tokens: int | None) -> dict:
    s = float(ep["seconds"])
    bulk = bulk_seconds(ep.get("finish_seconds") or [], int(ep["requests"]), tail_running)
    lengths = ep.get("response_lengths") or []
    return {"epoch": ep.get("epoch"), "seconds": s, "bulk_s": bulk, "tail_s": None if bulk is None else s - bulk,
            "requests": ep["requests"], "output_tokens": ep.get("output_tokens"),
            "max_response_length": ep.get("max_response_length"),
            "runaways": sum(n >= max_tokens for n in lengths) if max_tokens else 0}


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def _sum(xs) -> float | None:
    xs = list(xs)
    return None if not xs or any(x is None for x in xs) else float(sum(xs))


def mode_times(rows: list[dict]) -> dict:
    """Seconds of one mode in one call (or pooled rows): all, e0, e1+, bulk, tail."""
    return {"all_s": _sum(r["seconds"] for r in rows),
            "e0_s": _sum(r["seconds"] for r in rows if r["epoch"] == 0),
            "e1plus_s": _sum(r["seconds"] for r in rows if r["epoch"] != 0),
            "bulk_s": _sum(r["bulk_s"] for r in rows), "tail_s": _sum(r["tail_s"] for r in rows),
            "bulk_e0_s": _sum(r["bulk_s"] for r in rows if r["epoch"] == 0),
            "bulk_e1plus_s": _sum(r["bulk_s"] for r in rows if r["epoch"] != 0)}


RATIO_KEYS = (("all", "all_s"), ("e0", "e0_s"), ("e1plus", "e1plus_s"), ("bulk", "bulk_s"), ("tail", "tail_s"))


BULK_SPLIT_KEYS = (("bulk_e0", "bulk_e0_s"), ("bulk_e1plus", "bulk_e1plus_s"))
"""The bulk ratio split into epoch 0 (no history yet) and epochs 1.. (``bulk_split``)."""


def ratios(mode: dict, base: dict, keys: tuple = RATIO_KEYS) -> dict:
    return {k: _ratio(mode[s], base[s]) for k, s in keys}


# ---------------------------------------------------------------------- DAS stats
def _add_counts(acc: dict, c: dict) -> None:
    for key in ("drafted", "accepted", "verify_steps", "decode_steps"):
        acc[key] = acc.get(key, 0) + int(c.get(key, 0) or 0)


def _finish_counts(c: dict) -> dict:
    out = dict(c)
    out["acceptance_rate"] = c["accepted"] / c["drafted"] if c.get("drafted") else None
    out["tokens_per_verify_step"] = c["accepted"] / c["verify_steps"] + 1 if c.get("verify_steps") else None
    return out


def epoch_steps(das: dict) -> tuple[int | None, int | None, int | None, str]:
    """(steps, drafted, gated) of one epoch from its DAS stats, and where they came from."""
    steps = das.get("epoch_steps", das.get("steps"))
    gated = das.get("epoch_gated_steps", das.get("gated_steps"))
    if "device_drafted_steps" in das:
        return ((das["device_drafted_steps"] + das.get("device_gated_steps", 0)), das["device_drafted_steps"],
                das.get("device_gated_steps", 0), "device_drafted_steps / device_gated_steps")
    if steps is None:
        return None, None, None, "none"
    return steps, steps - (gated or 0), gated or 0, "epoch_steps - epoch_gated_steps / epoch_gated_steps"


def das_summary(epochs: list[list[dict]]) -> dict | None:
    """DAS stats of one mode pooled over calls: ``epochs`` = per call, its epochs (raw dicts)."""
    if not any(e.get("das") for call in epochs for e in call):
        return None
    buckets: dict[str, dict] = {}
    buckets_e1: dict[str, dict] = {}
    total: dict = {}
    total_e1: dict = {}
    drafted = gated = steps = 0
    host_s = propose_s = 0.0
    host_seen = False
    graphs: dict[str, int] = {}
    mem_bytes, mem_src = 0, None
    faults = 0
    for call in epochs:
        last = {}
        for e in call:
            d = e.get("das") or {}
            if not d:
                continue
            last = d
            acc = d.get("acceptance") or {}
            _add_counts(total, acc.get("total") or {})
            for b, c in (acc.get("by_bucket") or {}).items():
                _add_counts(buckets.setdefault(b, {}), c)
            if e.get("epoch") != 0:
                _add_counts(total_e1, acc.get("total") or {})
                for b, c in (acc.get("by_bucket") or {}).items():
                    _add_counts(buckets_e1.setdefault(b, {}), c)
            n, dr, ga, _ = epoch_steps(d)
            steps += n or 0
            drafted += dr or 0
            gated += ga or 0
            if "host_seconds" in d:
                host_seen = True
                host_s += float(d["host_seconds"])
            propose_s += float(d.get("propose_seconds", 0.0) or 0.0)
            faults += int(d.get("engine_faults", 0) or 0) + int(d.get("faults", 0) or 0)
            dh = d.get("device_history")
            if isinstance(dh, dict) and "memory_bytes" in dh:
                if dh["memory_bytes"] >= mem_bytes:
                    mem_bytes, mem_src = int(dh["memory_bytes"]), "device_history.memory_bytes"
            elif isinstance(d.get("history"), dict) and "estimated_bytes" in d["history"]:
                if d["history"]["estimated_bytes"] >= mem_bytes:
                    mem_bytes, mem_src = int(d["history"]["estimated_bytes"]), "history.estimated_bytes (host)"
        for k, v in last.items():  # cumulative graph counters: the call's last epoch
            if (k.startswith("drafting_") or k.startswith("append_")) and isinstance(v, (int, float)):
                graphs[k] = graphs.get(k, 0) + v
    if host_seen:
        host_us, host_src = (host_s / drafted * 1e6 if drafted else None), "host_seconds / device_drafted_steps"
    else:
        host_us, host_src = (propose_s / drafted * 1e6 if drafted else None), \
            "propose_seconds / drafted steps (host drafter; includes gated-step calls)"
    return {"acceptance": {"total": _finish_counts(total) if total else None,
                           "by_bucket": {b: _finish_counts(c) for b, c in buckets.items() if c.get("drafted")},
                           "epochs1plus_total": _finish_counts(total_e1) if total_e1 else None,
                           "epochs1plus_by_bucket": {b: _finish_counts(c) for b, c in buckets_e1.items()
                                                     if c.get("drafted")}},
            "steps": steps, "drafted_steps": drafted, "gated_steps": gated,
            "host_us_per_drafted_step": host_us, "host_us_source": host_src,
            "graphs": graphs or None,
            "history_memory_bytes": mem_bytes if mem_src else None, "history_memory_source": mem_src,
            "faults": faults}


def step_ms(mode: str, raw: list[list[dict]], rows: list[list[dict]], tail_running: int) -> dict | None:
    """ms per engine step of one mode pooled over calls (estimates; see the module docstring)."""
    if any(e.get("das") for call in raw for e in call):
        n = dr = ga = 0
        secs = bulk = tail = 0.0
        for call_raw, call_rows in zip(raw, rows):
            for e, r in zip(call_raw, call_rows):
                s, d, g, src = epoch_steps(e.get("das") or {})
                if s is None or r["bulk_s"] is None:
                    continue
                n, dr, ga = n + s, dr + d, ga + g
                secs, bulk, tail = secs + r["seconds"], bulk + r["bulk_s"], tail + r["tail_s"]
        if not n:
            return None
        return {"all_ms": secs / n * 1e3, "bulk_ms_per_gated_step": bulk / ga * 1e3 if ga else None,
                "tail_ms_per_drafted_step": tail / dr * 1e3 if dr else None, "steps": n,
                "how": f"DAS steps ({src}); bulk / gated, tail / drafted: the gate closes above its max_running, "
                       f"taken = --tail-running {tail_running}"}
    if mode in NOSPEC_MODES:
        n = nb = 0
        secs = bulk = tail = 0.0
        for call_raw, call_rows in zip(raw, rows):
            for e, r in zip(call_raw, call_rows):
                lengths = sorted(e.get("response_lengths") or [])
                if not lengths or r["bulk_s"] is None:
                    continue
                req = len(lengths)
                lb = lengths[req - tail_running - 1] if req > tail_running else 0
                n, nb = n + lengths[-1], nb + lb
                secs, bulk, tail = secs + r["seconds"], bulk + r["bulk_s"], tail + r["tail_s"]
        if not n:
            return None
        return {"all_ms": secs / n * 1e3, "bulk_ms_per_step": bulk / nb * 1e3 if nb else None,
                "tail_ms_per_step": tail / (n - nb) * 1e3 if n > nb else None, "steps": n,
                "how": "no speculation: one token per running request per step, so steps ~ longest response, "
                       f"bulk steps ~ the (R-{tail_running})-th shortest response (estimate)"}
    return None


# ---------------------------------------------------------------------- pooling
def load(paths: list[str]) -> list[dict]:
    return [json.loads(Path(p).read_text()) for p in paths]


def check(reports: list[dict], names: list[str], baseline: str) -> list[str]:
    """Raise ``ValueError`` when the files cannot be pooled; return notes (warnings)."""
    keys = workload_args()
    first, notes = reports[0], []
    for name, rep in zip(names, reports):
        diff = [k for k in keys if rep["args"].get(k) != first["args"].get(k)]
        if diff:
            raise ValueError(f"{name}: workload differs from {names[0]} in "
                             + ", ".join(f"{k} ({rep['args'].get(k)!r} vs {first['args'].get(k)!r})" for k in diff))
        gpu, gpu0 = rep.get("machine", {}).get("gpu"), first.get("machine", {}).get("gpu")
        if gpu != gpu0:
            raise ValueError(f"{name}: ran on {gpu}, {names[0]} on {gpu0}")
        ok = [m for m, r in rep["results"].items() if "epochs" in r]
        if baseline not in ok:
            raise ValueError(f"{name}: no baseline {baseline!r} results (modes: {', '.join(rep['results'])})")
        if len(ok) < 2:
            raise ValueError(f"{name}: only {baseline!r}; a call must hold the baseline and another mode")
        for m, r in rep["results"].items():
            if "epochs" not in r:
                notes.append(f"{name}: mode {m} failed ({r.get('error')}); left out of this call")
        other = sorted(k for k in set(rep["args"]) | set(first["args"])
                       if k not in keys and k not in IGNORED_ARGS and rep["args"].get(k) != first["args"].get(k))
        if other:
            notes.append(f"{name}: also differs from {names[0]} in {', '.join(other)} (allowed)")
        if rep.get("merged_from") or rep["args"].get("merge"):
            notes.append(f"{name}: made by --merge of {len(rep.get('merged_from') or rep['args']['merge'])} "
                         "files: its modes did not all run in one call")
    seeds = [r["args"].get("seed") for r in reports]
    if len(set(seeds)) < len(seeds):
        notes.append(f"seeds repeat across calls ({seeds}): the protocol is one seed per call")
    return notes


def pool(reports: list[dict], names: list[str], baseline: str = "nospec", tail_running: int = 64) -> dict:
    notes = check(reports, names, baseline)
    max_tokens = reports[0]["args"].get("max_tokens")
    calls = []
    for name, rep in zip(names, reports):
        order = [m for m, r in rep["results"].items() if "epochs" in r]
        modes = {}
        for m in order:
            rows = [epoch_row(e, tail_running, max_tokens) for e in rep["results"][m]["epochs"]]
            if any(r["bulk_s"] is None for r in rows):
                notes.append(f"{name}: {m}: finish_seconds too short for a bulk/tail split in some epoch")
            modes[m] = {"epochs": rows, **mode_times(rows), "runaways": sum(r["runaways"] for r in rows),
                        "engine_start_s": rep["results"][m].get("engine_start_seconds")}
        base = modes[baseline]
        for m in order:
            modes[m]["ratio"] = ratios(modes[m], base)
            modes[m]["bulk_split"] = ratios(modes[m], base, BULK_SPLIT_KEYS)
            modes[m]["ratio_no_runaway"] = _no_runaway_ratio([modes[m]["epochs"]], [base["epochs"]])
        calls.append({"file": name, "seed": rep["args"].get("seed"), "order": order,
                      "baseline_first": order[0] == baseline, "modes": modes})
    everywhere = [baseline]  # the baseline first, then the first call's order
    for c in calls:
        everywhere += [m for m in c["order"] if m not in everywhere and all(m in cc["modes"] for cc in calls)]
    partial = sorted({m for c in calls for m in c["modes"]} - set(everywhere))
    if partial:
        notes.append(f"not in every call, so not pooled: {', '.join(partial)}")
    pooled: dict = {}
    base_rows = [r for c in calls for r in c["modes"][baseline]["epochs"]]
    base_t = mode_times(base_rows)
    for m in everywhere:
        rows = [r for c in calls for r in c["modes"][m]["epochs"]]
        t = mode_times(rows)
        per_call = [c["modes"][m]["ratio"] for c in calls]
        raw = [_raw_epochs(rep, m) for rep in reports]
        per_rows = [c["modes"][m]["epochs"] for c in calls]
        pooled[m] = {
            "calls": len(calls), **t, "ratio": ratios(t, base_t), "bulk_split": ratios(t, base_t, BULK_SPLIT_KEYS),
            "mean_call_ratio": {k: _mean([r[k] for r in per_call]) for k, _ in RATIO_KEYS},
            "per_call_ratio": {k: [r[k] for r in per_call] for k, _ in RATIO_KEYS},
            "ratio_no_runaway": _no_runaway_ratio(per_rows, [c["modes"][baseline]["epochs"] for c in calls]),
            "runaways": sum(r["runaways"] for r in rows),
            "runaways_per_call_epoch": [[r["runaways"] for r in rr] for rr in per_rows],
            "das": das_summary(raw),
            "step_ms": step_ms(m, raw, per_rows, tail_running),
            "step_timeline": measured_steps(raw),
        }
    for m in everywhere:
        tl, base_tl = pooled[m]["step_timeline"], pooled[baseline]["step_timeline"]
        pooled[m]["step_ratio"] = step_timeline.ratios(tl, base_tl) if tl and base_tl else None
    gpu = reports[0].get("machine", {}).get("gpu") or reports[0].get("machine", {}).get("device")
    keys = workload_args()
    return {"gpu": gpu, "baseline": baseline, "tail_running": tail_running,
            "workload": {k: reports[0]["args"].get(k) for k in keys},
            "files": [{"file": c["file"], "seed": c["seed"], "order": c["order"]} for c in calls],
            "modes": everywhere, "calls": calls, "pooled": pooled, "notes": notes}


def measured_steps(raw: list[list[dict]]) -> dict | None:
    """The mode's step timelines (every epoch of every call) merged; None unless every epoch has one."""
    epochs = [e for call in raw for e in call]
    if not epochs or any(not e.get("step_timeline") for e in epochs):
        return None
    return step_timeline.merge([e["step_timeline"] for e in epochs])


def _raw_epochs(rep: dict, mode: str) -> list[dict]:
    return rep["results"][mode]["epochs"]


def _mean(xs: list[float | None]) -> float | None:
    return None if not xs or any(x is None for x in xs) else sum(xs) / len(xs)


def _no_runaway_ratio(mode_calls: list[list[dict]], base_calls: list[list[dict]]) -> dict:
    """Ratio of summed seconds over the (call, epoch) pairs where neither mode nor baseline had a
    response of max_tokens tokens."""
    ms = bs = 0.0
    kept = total = 0
    for mr, br in zip(mode_calls, base_calls):
        for a, b in zip(mr, br):
            total += 1
            if a["runaways"] == 0 and b["runaways"] == 0:
                ms, bs, kept = ms + a["seconds"], bs + b["seconds"], kept + 1
    return {"ratio": ms / bs if bs else None, "epochs_kept": kept, "epochs": total}


# ---------------------------------------------------------------------- output
def _x(r: float | None) -> str:
    return "–" if r is None else f"{r:.2f}×"


def _s(v: float | None, nd: int = 1) -> str:
    return "–" if v is None else f"{v:.{nd}f}"


def markdown(res: dict) -> str:
    b = res["baseline"]
    w = res["workload"]
    lines = [f"GPU: {res['gpu']}; {len(res['calls'])} calls (seeds {', '.join(str(c['seed']) for c in res['calls'])}); "
             f"baseline {b}; bulk = until <= {res['tail_running']} requests run; "
             f"{w.get('problems')}×{w.get('samples')} requests, ≤ {w.get('max_tokens')} tokens, {w.get('epochs')} epochs",
             "",
             f"| mode | calls | pooled total s | vs {b}: all | e0 | e1+ | bulk | tail |",
             "|---|---|---|---|---|---|---|---|"]
    for m in res["modes"]:
        p = res["pooled"][m]
        r = p["ratio"]
        lines.append(f"| {m} | {p['calls']} | {_s(p['all_s'])} | {_x(r['all'])} | {_x(r['e0'])} | {_x(r['e1plus'])} "
                     f"| {_x(r['bulk'])} | {_x(r['tail'])} |")
    lines += ["", f"Mean of per-call ratios vs {b}:", "",
              "| mode | all | e0 | e1+ | bulk | tail | runaways | all, epochs without runaways |",
              "|---|---|---|---|---|---|---|---|"]
    for m in res["modes"]:
        p = res["pooled"][m]
        r = p["mean_call_ratio"]
        nr = p["ratio_no_runaway"]
        lines.append(f"| {m} | {_x(r['all'])} | {_x(r['e0'])} | {_x(r['e1plus'])} | {_x(r['bulk'])} | "
                     f"{_x(r['tail'])} | {p['runaways']} | {_x(nr['ratio'])} ({nr['epochs_kept']}/{nr['epochs']}) |")
    lines += ["", "Per call:", "",
              "| call | seed | order | mode | s per epoch | total s | bulk s | tail s | vs base: all / e0 / e1+ / bulk / tail | runaways |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    for i, c in enumerate(res["calls"]):
        for m in c["order"]:
            d = c["modes"][m]
            r = d["ratio"]
            lines.append(f"| {i} {Path(c['file']).name} | {c['seed']} | {','.join(c['order'])} | {m} | "
                         f"{' / '.join(_s(e['seconds'], 2) for e in d['epochs'])} | {_s(d['all_s'])} | "
                         f"{_s(d['bulk_s'])} | {_s(d['tail_s'])} | "
                         f"{' / '.join(_x(r[k]) for k, _ in RATIO_KEYS)} | {d['runaways']} |")
    lines += ["", f"Bulk seconds by epoch (epoch 0 has no history), vs {b} in the same call:", "",
              "| call | mode | bulk s, e0 | bulk s, e1+ | vs base: bulk e0 / e1+ |", "|---|---|---|---|---|"]
    for i, c in enumerate(res["calls"]):
        for m in c["order"]:
            if m == b:
                continue
            d, base = c["modes"][m], c["modes"][b]
            r = d["bulk_split"]
            lines.append(f"| {i} {Path(c['file']).name} | {m} | {_s(d['bulk_e0_s'], 2)} vs {_s(base['bulk_e0_s'], 2)} | "
                         f"{_s(d['bulk_e1plus_s'], 2)} vs {_s(base['bulk_e1plus_s'], 2)} | "
                         f"{_x(r['bulk_e0'])} / {_x(r['bulk_e1plus'])} |")
    for m in res["modes"]:
        if m != b:
            r = res["pooled"][m]["bulk_split"]
            lines.append(f"| pooled | {m} | {_s(res['pooled'][m]['bulk_e0_s'], 2)} | {_s(res['pooled'][m]['bulk_e1plus_s'], 2)} | "
                         f"{_x(r['bulk_e0'])} / {_x(r['bulk_e1plus'])} |")
    das_modes = [m for m in res["modes"] if res["pooled"][m]["das"]]
    if das_modes:
        buckets = list(dict.fromkeys(b for m in das_modes for b in res["pooled"][m]["das"]["acceptance"]["by_bucket"]))
        lines += ["", "DAS (pooled over calls, all epochs; tokens per verify step = accepted / verify steps + 1):", "",
                  "| mode | acceptance | tok/verify all (e1+) | " + " | ".join(f"tok/verify {b}" for b in buckets)
                  + " | drafted / gated steps | host µs per drafted step | graph replays / failures | history MB |",
                  "|---|---|---|" + "---|" * len(buckets) + "---|---|---|---|"]
        for m in das_modes:
            d = res["pooled"][m]["das"]
            a = d["acceptance"]
            tot, e1 = a["total"] or {}, a["epochs1plus_total"] or {}
            g = d["graphs"] or {}
            rate = tot.get("acceptance_rate")
            lines.append(
                f"| {m} | {'–' if rate is None else f'{rate * 100:.1f} %'} | {_s(tot.get('tokens_per_verify_step'), 2)}"
                f" ({_s(e1.get('tokens_per_verify_step'), 2)}) | "
                + " | ".join(_s(a["by_bucket"].get(bk, {}).get("tokens_per_verify_step"), 2) for bk in buckets)
                + f" | {d['drafted_steps']} / {d['gated_steps']} | {_s(d['host_us_per_drafted_step'], 0)} | "
                + (f"{g.get('drafting_graph_replays', '–')} / {g.get('drafting_graph_failures', '–')} | " if g else "– | ")
                + f"{_s(d['history_memory_bytes'] / 1e6 if d['history_memory_bytes'] is not None else None)} |")
        lines.append("")
        lines += [f"- {m}: host µs = {res['pooled'][m]['das']['host_us_source']}; history = "
                  f"{res['pooled'][m]['das']['history_memory_source']} (largest epoch of any call)" for m in das_modes]
    step_modes = [m for m in res["modes"] if res["pooled"][m]["step_ms"]]
    if step_modes:
        lines += ["", "ms per engine step (pooled; estimates, see `how`):", "",
                  "| mode | all | bulk | tail | how |", "|---|---|---|---|---|"]
        for m in step_modes:
            s = res["pooled"][m]["step_ms"]
            bulk = s.get("bulk_ms_per_gated_step", s.get("bulk_ms_per_step"))
            tail = s.get("tail_ms_per_drafted_step", s.get("tail_ms_per_step"))
            lines.append(f"| {m} | {_s(s['all_ms'], 2)} | {_s(bulk, 2)} | {_s(tail, 2)} | {s['how']} |")
    timed = [m for m in res["modes"] if res["pooled"][m].get("step_ratio")]
    if timed:
        lines += ["", f"ms per engine step, measured (step timeline, pooled over calls and epochs; vs {b}'s plain "
                  "steps of the same batch size):", "",
                  "| mode | requests per step | kind | steps | ms per step | ms, baseline | ratio |",
                  "|---|---|---|---|---|---|---|"]
        for m in timed:
            for r in res["pooled"][m]["step_ratio"]:
                lines.append(f"| {m} | {r['bucket']} | {r['kind']} | {r['steps']} | {_s(r['ms'], 2)} | "
                             f"{_s(r['base_ms'], 2)} | {_x(r['ratio'])} |")
    if res["notes"]:
        lines += ["", "Notes:"] + [f"- {n}" for n in res["notes"]]
    return "\n".join(lines)


def plot(res: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    modes = sorted({m for c in res["calls"] for m in c["modes"]}, key=lambda m: (m not in res["modes"], m))
    fig, axes = plt.subplots(1, 2, figsize=(16, 5))
    ax = axes[0]
    n_ep = max(len(d["epochs"]) for c in res["calls"] for d in c["modes"].values())
    for mi, m in enumerate(modes):
        for ci, c in enumerate(res["calls"]):
            if m not in c["modes"]:
                continue
            xs = [ci * (n_ep + 1) + e for e in range(len(c["modes"][m]["epochs"]))]
            ax.plot(xs, [e["seconds"] for e in c["modes"][m]["epochs"]], marker="o", color=f"C{mi}",
                    label=m if ci == 0 or all(m not in cc["modes"] for cc in res["calls"][:ci]) else None)
    ax.set_xticks([ci * (n_ep + 1) + e for ci in range(len(res["calls"])) for e in range(n_ep)])
    ax.set_xticklabels([f"c{ci}\ne{e}" if e == 0 else f"e{e}" for ci in range(len(res["calls"])) for e in range(n_ep)],
                       fontsize=7)
    ax.set(title=f"seconds per epoch, per call (seeds {[c['seed'] for c in res['calls']]})", ylabel="seconds")
    ax = axes[1]
    groups = [(f"c{ci}", c["modes"]) for ci, c in enumerate(res["calls"])] + [("pooled", res["pooled"])]
    width = 0.8 / max(len(res["modes"]), 1)
    for mi, m in enumerate(res["modes"]):
        xs, bulk, tail = [], [], []
        for gi, (_, src) in enumerate(groups):
            if m in src and src[m]["bulk_s"] is not None:
                xs.append(gi + mi * width)
                bulk.append(src[m]["bulk_s"])
                tail.append(src[m]["tail_s"])
        ax.bar(xs, bulk, width, color=f"C{modes.index(m)}", alpha=0.5, label=f"{m} bulk")
        ax.bar(xs, tail, width, bottom=bulk, color=f"C{modes.index(m)}", label=f"{m} tail")
    ax.set_xticks([gi + width * (len(res["modes"]) - 1) / 2 for gi in range(len(groups))])
    ax.set_xticklabels([g for g, _ in groups])
    ax.set(title=f"bulk (light, > {res['tail_running']} running) and tail seconds, all epochs", ylabel="seconds")
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"{res['gpu']}: pooled vs {res['baseline']}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("files", nargs="+", help="engine_rollouts.py result JSONs, one per device call")
    p.add_argument("--baseline", default="nospec")
    p.add_argument("--tail-running", type=int, default=64,
                   help="bulk ends when no more than this many requests are still running (the gate's max_running)")
    p.add_argument("--out", required=True, help="pooled JSON; the PNG goes beside it (.png)")
    p.add_argument("--png", default=None, help="default: --out with .png")
    args = p.parse_args(argv)
    try:
        res = pool(load(args.files), args.files, args.baseline, args.tail_running)
    except (OSError, ValueError, KeyError) as exc:
        print(f"pool_runs: refused: {exc}", file=sys.stderr)
        return 2
    res["markdown"] = markdown(res)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(res, indent=2))
    plot(res, args.png or str(Path(args.out).with_suffix(".png")))
    print(res["markdown"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
