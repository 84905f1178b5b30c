"""vLLM smoke test + quick throughput sanity check on the GPU machine.

For each config (comma-separated --configs), one engine is started (timed), a few chat
prompts are answered greedily (printed), then --bench-prompts prompts x --bench-tokens
tokens are generated greedily (timed; spec-decode acceptance from vLLM's metrics).

Configs: fdo | full | eager, each optionally "+suffix" (speculative_config method
"suffix", k=--k) or "+ngram".
  fdo   compilation_config {"mode": 0, "cudagraph_mode": "FULL_DECODE_ONLY"}
  full  compilation_config {"mode": 0, "cudagraph_mode": "FULL",
                            "max_cudagraph_capture_size": --full-capture}
  eager enforce_eager=True
Run with benchmarks/gpu/env.sh sourced (VLLM_USE_V2_MODEL_RUNNER=0, ...).
"""

import argparse
import gc
import json
import os
import sys
import time

CHAT = [
    "What is the capital of France? Answer in one word.",
    "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips "
    "in May. How many clips did Natalia sell altogether in April and May? "
    "Reason step by step and put the final answer in \\boxed{}.",
    "Write a Python function that returns the n-th Fibonacci number.",
    "List the three primary colors, comma-separated.",
]


def bench_prompts(n):
    out = []
    for i in range(n):
        a, b, c = 12 + 7 * i, 3 + (5 * i) % 17, 2 + i % 9
        out.append(
            f"A shop sells {a} apples on Monday and {b} more apples on Tuesday than on Monday. "
            f"Each apple costs {c} dollars. How much money does the shop make on the two days? "
            "Reason step by step and put the final answer in \\boxed{}."
        )
    return out


def engine_kwargs(cfg, a):
    base, _, spec = cfg.partition("+")
    kw = dict(
        model=a.model,
        dtype="bfloat16",
        max_model_len=a.max_model_len,
        gpu_memory_utilization=a.gpu_mem,
        seed=0,
        disable_log_stats=False,
    )
    if base == "eager":
        kw["enforce_eager"] = True
    elif base == "fdo":
        kw["compilation_config"] = {"mode": 0, "cudagraph_mode": "FULL_DECODE_ONLY"}
    elif base == "full":
        kw["compilation_config"] = {"mode": 0, "cudagraph_mode": "FULL",
                                    "max_cudagraph_capture_size": a.full_capture}
    else:
        raise SystemExit(f"unknown config {cfg}")
    if spec == "suffix":
        kw["speculative_config"] = {"method": "suffix", "num_speculative_tokens": a.k}
    elif spec == "ngram":
        kw["speculative_config"] = {"method": "ngram", "num_speculative_tokens": a.k,
                                    "prompt_lookup_max": 4, "prompt_lookup_min": 2}
    elif spec:
        raise SystemExit(f"unknown speculative method {spec}")
    return kw


def spec_counters(llm):
    vals = {}
    try:
        for m in llm.get_metrics():
            if m.name in ("vllm:spec_decode_num_drafts", "vllm:spec_decode_num_draft_tokens",
                          "vllm:spec_decode_num_accepted_tokens"):
                vals[m.name.split(":")[1]] = vals.get(m.name.split(":")[1], 0) + m.value
    except Exception as e:  # metrics are a nice-to-have
        vals["error"] = repr(e)
    return vals


def run_config(cfg, a, ref):
    from vllm import LLM, SamplingParams

    res = {"config": cfg}
    t0 = time.time()
    llm = LLM(**engine_kwargs(cfg, a))
    res["start_s"] = round(time.time() - t0, 1)
    print(f"\n=== {cfg}: engine up in {res['start_s']} s", flush=True)

    greedy = SamplingParams(temperature=0.0, max_tokens=a.chat_tokens)
    t = time.time()
    outs = llm.chat([[{"role": "user", "content": p}] for p in CHAT], greedy, use_tqdm=False)
    res["chat_s"] = round(time.time() - t, 2)
    res["chat"] = [o.outputs[0].text for o in outs]
    for p, o in zip(CHAT, res["chat"]):
        print(f"--- Q: {p[:70]}\n    A: {o.strip()[:300]!r}", flush=True)

    if a.bench_prompts:
        prompts = bench_prompts(a.bench_prompts)
        sp = SamplingParams(temperature=0.0, max_tokens=a.bench_tokens)
        before = spec_counters(llm)
        msgs = [[{"role": "user", "content": p}] for p in prompts]
        llm.chat(msgs[:4], SamplingParams(temperature=0.0, max_tokens=8), use_tqdm=False)  # warm-up
        t = time.time()
        outs = llm.chat(msgs, sp, use_tqdm=False)
        dt = time.time() - t
        after = spec_counters(llm)
        ntok = sum(len(o.outputs[0].token_ids) for o in outs)
        res.update(bench_s=round(dt, 2), bench_tokens=ntok, tok_per_s=round(ntok / dt, 1))
        res["bench_texts"] = [o.outputs[0].text for o in outs]
        d = {k: after.get(k, 0) - before.get(k, 0) for k in after if k != "error"}
        if d.get("spec_decode_num_draft_tokens"):
            res["acceptance"] = round(d["spec_decode_num_accepted_tokens"] / d["spec_decode_num_draft_tokens"], 3)
            res["accepted_per_draft"] = round(d["spec_decode_num_accepted_tokens"] / max(1, d["spec_decode_num_drafts"]), 2)
        print(f"    bench: {len(prompts)} prompts, {ntok} tokens in {dt:.2f} s = {ntok / dt:.0f} tok/s"
              + (f", acceptance {res.get('acceptance')}, {res.get('accepted_per_draft')} accepted/draft"
                 if "acceptance" in res else ""), flush=True)
    if ref is not None:
        res["chat_same_as_first"] = sum(x == y for x, y in zip(ref["chat"], res["chat"]))
        if "bench_texts" in ref and "bench_texts" in res:
            res["bench_same_as_first"] = sum(x == y for x, y in zip(ref["bench_texts"], res["bench_texts"]))
    t = time.time()
    try:
        llm.llm_engine.engine_core.shutdown()
    except Exception as e:
        print(f"    (shutdown: {e!r})")
    del llm
    gc.collect()
    try:
        import torch

        torch.cuda.empty_cache()
    except Exception:
        pass
    res["shutdown_s"] = round(time.time() - t, 1)
    return res


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--configs", default="fdo,fdo+suffix")
    ap.add_argument("--k", type=int, default=4)
    ap.add_argument("--chat-tokens", type=int, default=96)
    ap.add_argument("--bench-prompts", type=int, default=int(os.environ.get("BENCH_PROMPTS", "64")))
    ap.add_argument("--bench-tokens", type=int, default=int(os.environ.get("BENCH_TOKENS", "256")))
    ap.add_argument("--max-model-len", type=int, default=2048)
    ap.add_argument("--gpu-mem", type=float, default=0.3)
    ap.add_argument("--full-capture", type=int, default=1024)
    ap.add_argument("--json", default=None)
    a = ap.parse_args()

    t0 = time.time()
    import vllm

    print(f"[smoke] vllm {vllm.__version__} imported in {time.time() - t0:.1f} s; model {a.model}", flush=True)
    results, ref = [], None
    for cfg in [c for c in a.configs.split(",") if c]:
        try:
            r = run_config(cfg, a, ref)
        except Exception as e:
            import traceback

            traceback.print_exc()
            r = {"config": cfg, "error": repr(e)[:500]}
        results.append(r)
        if ref is None and "error" not in r:
            ref = r
    print("\n[smoke] summary (greedy; 'same' = outputs identical to the first config's):")
    print(f"  {'config':<14} {'start s':>8} {'bench s':>8} {'tok/s':>8} {'accept':>7} {'same chat':>9} {'same bench':>10}")
    for r in results:
        if "error" in r:
            print(f"  {r['config']:<14} ERROR {r['error'][:200]}")
            continue
        print(f"  {r['config']:<14} {r['start_s']:>8} {r.get('bench_s', '-'):>8} {r.get('tok_per_s', '-'):>8} "
              f"{r.get('acceptance', '-'):>7} {r.get('chat_same_as_first', '-'):>9} {r.get('bench_same_as_first', '-'):>10}")
    if a.json:
        os.makedirs(os.path.dirname(os.path.abspath(a.json)), exist_ok=True)
        with open(a.json, "w") as fh:
            json.dump([{k: v for k, v in r.items() if k != "bench_texts"} for r in results], fh, indent=1)
    print(f"[smoke] total {time.time() - t0:.1f} s", flush=True)
    return 0 if all("error" not in r for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
