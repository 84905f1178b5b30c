"""Profile the verify-step cost table ``T(batch, tokens)`` for DAS's cost-model gate.

One DAS engine (k = the largest draft length profiled) runs greedy requests whose responses
are already in its history, so nearly every step verifies a full draft. For each draft length
d (set between runs with the ``das_update_config`` RPC, gate off, flat budget d) and each batch
size B, the mean engine-step time is ``wall / engine_steps`` with ``tokens ≈ B × (1 + mean
draft length)``. Output: the JSON table ``gate.cost_table`` expects::

    {"format": "openrlhf-das/verify-cost", "version": 1, "device": ..., "model": ...,
     "points": [{"batch": B, "tokens": N, "seconds": T}, ...]}

Run it on the GPU (and settings) the rollouts will use; a CPU table only describes the CPU.
On GPU the engine runs FULL_DECODE_ONLY graphs with padded drafts and draft-free graphs (the
settings of docs/gpu.md): a step then verifies either 1 or 1 + k tokens per request, so only
d = 0 and d = k are profiled there, and a drafted step's tokens are B × (1 + k) whatever was
drafted; the cost-model gate decides per step on such an engine (``CostModelGate.keep``).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="smollm2-135m-instruct", help="registry name or HF folder")
    p.add_argument("--batches", default="1,4,16,64")
    p.add_argument("--drafts", default="0,2,4", help="draft lengths d to profile (0 = no draft)")
    p.add_argument("--tokens", type=int, default=64, help="new tokens per request")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--out", default="benchmarks/results/local/verify_cost.json")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    batches = [int(x) for x in args.batches.split(",")]
    drafts = sorted(int(x) for x in args.drafts.split(","))
    if args.device == "cpu":
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")
    import numpy as np
    from vllm import LLM, SamplingParams

    from openrlhf_das.config import DASConfig
    from openrlhf_das.drafter import HistorySnapshot, Rollout
    from openrlhf_das.engines.vllm import engine_kwargs, with_das_metadata
    from openrlhf_das.models.registry import materialize

    model = args.model if Path(args.model).is_dir() else str(materialize(args.model))
    k = max(max(drafts), 1)
    padded = args.device == "cuda"
    if padded:
        drafts = sorted({0, k})
    cfg = DASConfig.from_dict({"length_policy": False, "flat_budget": {"tokens": k, "factor": 8.0}, "gate": {"mode": "off"},
                               "use_siblings": False, "pad_drafts": padded})
    kw = ({"enforce_eager": True} if args.device == "cpu"
          else {"compilation_config": {"mode": 0, "cudagraph_mode": "FULL_DECODE_ONLY"}, "async_scheduling": False})
    llm = LLM(model=model, max_model_len=1024, max_num_seqs=max(batches), **kw, **engine_kwargs(cfg))
    rng = np.random.default_rng(0)
    nb = max(batches)
    prompts = [{"prompt_token_ids": rng.integers(100, 5000, size=32).tolist()} for _ in range(nb)]
    greedy = SamplingParams(temperature=0.0, max_tokens=args.tokens, ignore_eos=True)
    params = [with_das_metadata(greedy, f"p{i}") for i in range(nb)]
    outs = llm.generate(prompts, params, use_tqdm=False)  # also warms the engine up
    snap = HistorySnapshot.from_rollouts(
        [Rollout(f"p{i}", 0, np.asarray(o.outputs[0].token_ids, np.int32)) for i, o in enumerate(outs)], next_step=1)
    points = []
    for d in drafts:
        llm.collective_rpc("das_update_config", args=({"flat_budget.tokens": d},))
        for b in batches:
            llm.collective_rpc("das_load_snapshot", args=(snap.to_npz_bytes(),))
            llm.collective_rpc("das_get_stats", kwargs={"reset": True})
            before = llm.collective_rpc("das_get_stats")[0]["steps"]
            t0 = time.perf_counter()
            llm.generate(prompts[:b], params[:b], use_tqdm=False)
            wall = time.perf_counter() - t0
            st = llm.collective_rpc("das_get_stats")[0]
            steps = max(st["steps"] - before, 1)
            drafted_per_step = st["acceptance"]["total"]["drafted"] / steps
            tokens = b * (1 + k) if padded and d > 0 else int(round(b + drafted_per_step))
            points.append({"batch": b, "tokens": tokens, "seconds": wall / steps, "draft_len": d,
                           "engine_steps": steps, "padded": padded, "plain_steps": st.get("plain_steps")})
            print(json.dumps(points[-1]), flush=True)
    device = "cpu"
    if args.device == "cuda":
        import torch

        device = torch.cuda.get_device_name(0)
    out = {"format": "openrlhf-das/verify-cost", "version": 1, "device": device, "model": model, "points": points}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
