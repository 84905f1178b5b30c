"""Cost of one device drafting step (``openrlhf_das.device.DeviceDrafter.propose``) per batch size.

A real trace supplies the history (step 0: every response, keyed by problem, also the global
index) and the requests (step 1: the longest responses, cut at ``--position`` tokens, in a
``[B, max_len]`` int32 token buffer like vLLM's ``token_ids_gpu_tensor``). For each batch size
the step runs eager and, on CUDA, replayed from a CUDA graph (``BucketGraphs``); reported per
step: GPU milliseconds (CUDA events around ``--iters`` replays), host microseconds per replay
call (the time the engine thread spends; nothing is synchronized inside the loop), and eager
host milliseconds. Issue 20's budget: <= 0.6 ms of GPU time and <= 50 us of host time at <= 64
running requests.

    python benchmarks/device_drafter_speed.py --device cuda --out $OUT/device-drafter-speed.json
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from replay import read_trace  # noqa: E402

from openrlhf_das.device import BucketGraphs, DeviceDrafter, DeviceDrafterSettings  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--trace", default=str(ROOT / "benchmarks/traces/h100-qwen0.5b-math500-T1.jsonl.zst"))
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--batch-sizes", default="1,8,16,32,64,128,256")
    p.add_argument("--k", type=int, default=4)
    p.add_argument("--max-len", type=int, default=5120, help="token buffer width (vLLM's max_model_len)")
    p.add_argument("--position", type=int, default=2048, help="tokens of each response already decoded")
    p.add_argument("--iters", type=int, default=200)
    p.add_argument("--vocab-size", type=int, default=151936)
    p.add_argument("--sources", default="own,problem,global")
    p.add_argument("--max-occurrences", type=int, default=64)
    p.add_argument("--num-backoff", type=int, default=4)
    p.add_argument("--live-capacity", type=int, default=1 << 16, help="device_drafter.live_capacity (its delta is scanned whole)")
    p.add_argument("--out", default=None)
    args = p.parse_args()
    dev = torch.device(args.device)
    _, steps = read_trace(args.trace)
    hist = steps[min(steps)]
    reqs = sorted(steps[sorted(steps)[1]], key=lambda s: -len(s.response))
    src = set(args.sources.split(","))
    settings = DeviceDrafterSettings(k=args.k, vocab_size=args.vocab_size, use_own="own" in src,
                                     use_problem="problem" in src, use_global="global" in src,
                                     history_capacity=1 << 21, max_occurrences=args.max_occurrences,
                                     num_backoff=args.num_backoff, live_capacity=args.live_capacity)
    drafter = DeviceDrafter(settings, dev)
    t0 = time.perf_counter()
    loaded = drafter.load_history([s.response for s in hist], [s.problem_id for s in hist], [0] * len(hist))
    load_s = time.perf_counter() - t0
    m = max(int(b) for b in args.batch_sizes.split(","))
    tok = torch.zeros(m, args.max_len, dtype=torch.int32, device=dev)
    lens = np.zeros(m, np.int64)
    slots = np.full(m, -1, np.int64)
    for i in range(m):
        s = reqs[i % len(reqs)]
        ctx = np.concatenate([s.prompt, s.response[: args.position]])[: args.max_len - args.k - 1]
        tok[i, : len(ctx)] = torch.from_numpy(ctx.astype(np.int32)).to(dev)
        lens[i] = len(ctx)
        slots[i] = drafter.slot_of(s.problem_id)
    n_tok = torch.from_numpy(lens.astype(np.int32)).to(dev)
    mask = torch.ones(m, dtype=torch.bool, device=dev)
    slot_t = torch.from_numpy(slots).to(dev)
    budget = torch.full((m,), args.k, dtype=torch.int64, device=dev)
    factor = torch.full((m,), 2.0, dtype=torch.float32, device=dev)
    out_draft = torch.zeros(m, args.k, dtype=torch.int32, device=dev)
    out_valid = torch.zeros(m, dtype=torch.int32, device=dev)

    def step(b: int) -> None:
        d, v = drafter.propose(n_tok[:b], tok[:b], mask[:b], slot_t[:b], budget[:b], factor[:b])
        out_draft[:b] = d
        out_valid[:b] = v

    rows = []
    for b in (int(x) for x in args.batch_sizes.split(",")):
        step(b)  # warm-up (kernel compilation)
        if dev.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        eager_iters = max(3, args.iters // 20)
        for _ in range(eager_iters):
            step(b)
        if dev.type == "cuda":
            torch.cuda.synchronize()
        eager_ms = (time.perf_counter() - t0) / eager_iters * 1e3
        row = {"batch": b, "eager_ms": eager_ms, "drafted_rows": int((out_valid[:b] > 0).sum()),
               "mean_draft_tokens": float(out_valid[:b].float().mean())}
        if dev.type == "cuda":
            graphs = BucketGraphs("bench", step, [b], dev)
            graphs.capture_all()
            if graphs.graphs:
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                torch.cuda.synchronize()
                host = 0.0
                start.record()
                for _ in range(args.iters):
                    h0 = time.perf_counter()
                    graphs.run(b)
                    host += time.perf_counter() - h0
                end.record()
                torch.cuda.synchronize()
                row.update(graph_gpu_ms=start.elapsed_time(end) / args.iters, graph_host_us=host / args.iters * 1e6)
            else:
                row["graph_failures"] = graphs.failures
        rows.append(row)
        print(json.dumps(row), flush=True)
    result = {
        "script": "benchmarks/device_drafter_speed.py", "args": vars(args), "history": loaded,
        "history_load_seconds": load_s, "memory": drafter.stats(),
        "device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else platform.processor() or "cpu",
        "torch": torch.__version__, "rows": rows,
    }
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1))
    print(json.dumps({k: v for k, v in result.items() if k != "rows"}))


if __name__ == "__main__":
    main()
