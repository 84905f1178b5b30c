"""History memory: stream SYNTHETIC rollouts through a capped HistoryIndex and watch RSS.

Streams ``--tokens`` response tokens (default 10⁷) of ``synthetic_trace.py`` rollouts, step by
step, into one :class:`HistoryIndex` (window W, global tree on, token cap ``--cap``), sampling
the process RSS (``/proc/self/status`` VmRSS) and the index stats as it goes. Each step draws
``--problems-per-step`` of ``--problems`` problems so that windows roll and the cap evicts.

Calibration of ``history_index.BYTES_PER_TOKEN`` (bytes per indexed token per tree):

* ``estimate_memory``: ``SuffixTree.estimate_memory()`` summed over every tree of the final
  index, divided by the tokens those trees hold (history tokens count twice: problem + global);
* ``sample_tree``: one tree over ``--sample-tokens`` tokens, built first in the fresh process:
  its ``estimate_memory()`` and the RSS growth while building it, both per token;
* ``final_index_rss``: RSS growth of the streaming run over the tokens its trees hold at the end
  (includes allocator fragmentation left by evictions).
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from drafter_speed import machine_info  # noqa: E402
from synthetic_trace import SyntheticRollouts, TraceParams  # noqa: E402

from openrlhf_das.drafter import HistoryIndex  # noqa: E402
from openrlhf_das.drafter.history_index import BYTES_PER_TOKEN  # noqa: E402
from openrlhf_das.drafter.suffix_tree import new_tree  # noqa: E402


def rss_bytes() -> int:
    """Resident set size of this process (bytes), from /proc/self/status."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("VmRSS not found in /proc/self/status")


def stream(args: argparse.Namespace) -> tuple[HistoryIndex, list[dict[str, Any]], int, float]:
    """Insert rollouts until ``args.tokens`` tokens streamed.

    Returns (index, RSS/stats samples, tokens streamed, seconds spent in ``add_rollout``).
    """
    params = TraceParams(
        problems=args.problems, samples=args.samples, steps=10**6, problems_per_step=args.problems_per_step, median_len=args.median_len
    )
    gen = SyntheticRollouts(params, args.seed)
    index = HistoryIndex(max_depth=64, window=args.window, max_tokens=args.cap, global_tree=True)
    samples: list[dict[str, Any]] = []
    streamed, next_sample, step = 0, 0, 0
    t_insert = 0.0
    while streamed < args.tokens:
        for rec in gen.step(step):
            toks = np.asarray(rec["response_token_ids"], np.int32)
            t0 = time.perf_counter()
            index.add_rollout(rec["problem_id"], step, toks)
            t_insert += time.perf_counter() - t0
            streamed += toks.size
            if streamed >= next_sample:
                st = index.stats()
                samples.append(
                    {"streamed_tokens": streamed, "step": step, "rss_mb": rss_bytes() / 2**20, **st.as_dict()}
                )
                next_sample += args.sample_every
            if streamed >= args.tokens:
                break
        step += 1
    return index, samples, streamed, t_insert


def estimate_per_token(index: HistoryIndex) -> dict[str, float]:
    """Native-estimated bytes per indexed token per tree over the whole index."""
    problem_bytes = sum(index.problem_tree(p).estimate_memory() for p in index.problem_ids())
    global_bytes = index.global_tree.estimate_memory() if index.global_tree is not None else 0
    trees_tokens = 2 * index.tokens  # every (non-live) history token is in two trees
    return {
        "problem_trees_bytes": problem_bytes,
        "global_tree_bytes": global_bytes,
        "bytes_per_token_per_tree": (problem_bytes + global_bytes) / max(trees_tokens, 1),
        "problem_trees_bytes_per_token": problem_bytes / max(index.tokens, 1),
        "global_tree_bytes_per_token": global_bytes / max(index.tokens, 1),
    }


def sample_tree(args: argparse.Namespace) -> dict[str, float]:
    """One tree over ``sample_tokens`` tokens: ``estimate_memory()`` vs RSS growth per token.

    Run first, in a fresh process, so that the RSS growth is not hidden by freed memory the
    allocator kept from earlier trees.
    """
    params = TraceParams(problems=64, samples=args.samples, steps=10**6, median_len=args.median_len)
    gen = SyntheticRollouts(params, args.seed + 1)
    seqs: list[np.ndarray] = []
    n, step = 0, 0
    while n < args.sample_tokens:
        for rec in gen.step(step):
            seqs.append(np.asarray(rec["response_token_ids"], np.int32))
            n += seqs[-1].size
            if n >= args.sample_tokens:
                break
        step += 1
    gc.collect()
    before = rss_bytes()
    tree = new_tree(64)
    for i, s in enumerate(seqs):
        tree.extend_ndarray(i, s)
    grown = rss_bytes() - before
    est = tree.estimate_memory()
    del tree
    gc.collect()
    return {
        "tokens": n,
        "estimate_bytes_per_token": est / n,
        "rss_growth_bytes_per_token": grown / n,
        "rss_after_free_minus_before_mb": (rss_bytes() - before) / 2**20,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tokens", type=int, default=10_000_000, help="tokens to stream")
    ap.add_argument("--cap", type=int, default=2_000_000, help="HistoryIndex max_tokens")
    ap.add_argument("--window", type=int, default=5)
    ap.add_argument("--problems", type=int, default=256)
    ap.add_argument("--problems-per-step", type=int, default=64)
    ap.add_argument("--samples", type=int, default=16)
    ap.add_argument("--median-len", type=float, default=400.0)
    ap.add_argument("--sample-every", type=int, default=250_000, help="RSS sampling period (tokens)")
    ap.add_argument("--sample-tokens", type=int, default=1_000_000, help="tokens of the calibration tree")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="history_memory.json")
    args = ap.parse_args()

    calib = sample_tree(args)
    rss0 = rss_bytes()
    t0 = time.perf_counter()
    index, samples, streamed, t_insert = stream(args)
    wall = time.perf_counter() - t0
    final = index.stats().as_dict()
    per_token = estimate_per_token(index)
    rss_final = rss_bytes()
    del index
    gc.collect()
    rss_freed = rss_bytes()
    out = {
        "machine": machine_info(),
        "synthetic_data": True,
        "params": vars(args),
        "stream": {
            "wall_s": wall,
            "insert_s": t_insert,
            "streamed_tokens": streamed,
            "insert_tok_s": streamed / t_insert if t_insert else None,
            "rss_start_mb": rss0 / 2**20,
            "rss_final_mb": rss_final / 2**20,
            "rss_peak_mb": max(s["rss_mb"] for s in samples),
            "rss_after_free_mb": rss_freed / 2**20,
            "final_stats": final,
            "samples": samples,
        },
        "calibration": {
            "BYTES_PER_TOKEN_in_code": BYTES_PER_TOKEN,
            "final_index_estimate": per_token,
            "final_index_rss_bytes_per_token_per_tree": (rss_final - rss0) / max(2 * final["tokens"], 1),
            "sample_tree": calib,
        },
    }
    Path(args.out).write_text(json.dumps(out, indent=1))
    summary = {k: v for k, v in out["stream"].items() if k != "samples"}
    print(json.dumps({"stream": summary, "calibration": out["calibration"]}, indent=1))


if __name__ == "__main__":
    main()
