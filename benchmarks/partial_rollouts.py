"""Per-step rollout makespan with and without partial rollouts, with and without DAS.

An RL run needs ``B`` prompt groups of ``G`` samples per training step. Each mode runs ``S``
steps over ``P`` problems (cycled, so problems come back as in repeated epochs) in a fresh
engine, in its own subprocess, through :class:`~openrlhf_das.engines.vllm.partial.PartialRolloutManager`:

    sync          each step submits B new groups and waits for all of them (OpenRLHF's
                  synchronous step; the longest sample sets the makespan)
    sync_das      the same with DAS (history loaded between steps)
    partial       B groups' worth of samples per step (``StepBudget("samples", B*G)``) out of
                  ~2B groups in flight: the step ends at the budget, unfinished samples are cut
                  and resumed in the next step (weight version bumped every step; the weights
                  themselves do not change here)
    partial_das   the same with DAS

Reported per mode: seconds per step (makespan), samples and tokens finished per step, samples/s
and the ratio of mean step time vs ``sync`` from the same run, plus how many samples were cut and
how stale finished samples are (weight versions spanned). Steps before ``--warmup`` are left out
of the means. Partial steps hand training samples whose groups may be incomplete (this measures
engine time, not GRPO grouping; the OpenRLHF integration carries whole groups).

CPU: ``--device cpu`` (eager; indicative only). GPU: ``--device cuda`` (CUDA graphs, see
docs/gpu.md) with ``--model /tmp/models/... --prompts-file ...``.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import engine_rollouts as er  # same folder: engine settings and prompt loading

MODES = ("sync", "sync_das", "partial", "partial_das")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="smollm2-135m-instruct")
    p.add_argument("--dataset", default="math500")
    p.add_argument("--prompts-file", default=None)
    p.add_argument("--problems", type=int, default=8, help="P distinct problems, cycled")
    p.add_argument("--groups", type=int, default=4, help="B groups per training step")
    p.add_argument("--samples", type=int, default=4, help="G samples per group")
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--warmup", type=int, default=1, help="steps left out of the means")
    p.add_argument("--max-tokens", type=int, default=128)
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--k", type=int, default=4)
    p.add_argument("--modes", default=",".join(MODES))
    p.add_argument("--das", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--cudagraph-mode", default="FULL_DECODE_ONLY")
    p.add_argument("--compile-mode", type=int, default=0)
    p.add_argument("--max-cudagraph-capture-size", type=int, default=None)
    p.add_argument("--max-num-seqs", type=int, default=1024)
    p.add_argument("--max-model-len", type=int, default=4096)
    p.add_argument("--gpu-memory-utilization", type=float, default=0.85)
    p.add_argument("--out", default="benchmarks/results/local/partial_rollouts.json")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    bad = set(args.modes.split(",")) - set(MODES)
    if bad:
        p.error(f"unknown modes {sorted(bad)}; choose from {MODES}")
    if args.warmup >= args.steps:
        p.error("--warmup must be < --steps")
    return args


def run_child(args) -> None:
    import os

    mode = args.child
    das = mode.endswith("_das")
    if args.device == "cpu":
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")
    os.environ["VLLM_USE_V2_MODEL_RUNNER"] = "0"  # the manager drives LLMEngine steps (V1 runner)
    from vllm import LLM, SamplingParams

    from openrlhf_das.engines.vllm.partial import PartialRolloutManager, StepBudget

    if Path(args.model).is_dir():
        model = args.model
    else:
        from openrlhf_das.models.registry import materialize

        model = str(materialize(args.model))
    problems = er.load_problems(args, model)[: args.problems]
    # sync scheduling in both: same runner; graphs for every group of a step in flight, plus carried ones
    kw = er._engine_kwargs(args, "das" if das else "nospec_sync", concurrency=2 * args.groups * args.samples)
    llm = LLM(model=model, **kw)
    sp = SamplingParams(temperature=args.temperature, top_p=1.0, max_tokens=args.max_tokens, seed=None)
    mgr = PartialRolloutManager(llm, sp, das=das)
    partial = mode.startswith("partial")
    B, G = args.groups, args.samples
    cursor = 0

    def add(n_groups: int) -> None:
        nonlocal cursor
        batch = [problems[(cursor + i) % len(problems)] for i in range(n_groups)]
        cursor += n_groups
        mgr.add_problems([(p.problem_id, p.prompt_token_ids) for p in batch], samples_per_problem=G)

    steps = []
    add(2 * B if partial else B)
    for s in range(args.steps):
        t0 = time.perf_counter()
        res = mgr.run_step(StepBudget("samples", B * G) if partial else StepBudget())
        dt = time.perf_counter() - t0
        versions = [len({v for v, _, _ in f.segments}) for f in res.finished]
        steps.append({"step": s, "seconds": dt, "finished": len(res.finished), "carried": res.carried,
                      "resumed": res.resumed, "generated_tokens": res.generated_tokens,
                      "finished_tokens": sum(len(f.response_token_ids) for f in res.finished),
                      "off_policy_samples": sum(v > 1 for v in versions),
                      "max_versions_spanned": max(versions, default=0)})
        if das:
            mgr.load_history()
        mgr.bump_weight_version()
        add(B)
    out = {"mode": mode, "steps": steps}
    if das:
        stats = llm.collective_rpc("das_get_stats")[0]
        out["das"] = {"acceptance": stats["acceptance"]["total"], "propose_seconds": stats["propose_seconds"]}
    print("CHILD_RESULT " + json.dumps(out), flush=True)


def summarize(args, results: dict) -> dict:
    out = {}
    for mode, r in results.items():
        if "error" in r:
            continue
        st = r["steps"][args.warmup:]
        secs = sum(s["seconds"] for s in st)
        out[mode] = {
            "mean_step_seconds": statistics.mean(s["seconds"] for s in st),
            "samples_per_second": sum(s["finished"] for s in st) / secs,
            "finished_tokens_per_second": sum(s["finished_tokens"] for s in st) / secs,
            "off_policy_fraction": sum(s["off_policy_samples"] for s in st) / max(1, sum(s["finished"] for s in st)),
        }
    base = out.get("sync", {}).get("mean_step_seconds")
    if base:
        for v in out.values():
            v["step_time_vs_sync"] = v["mean_step_seconds"] / base
    return out


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    if args.child:
        run_child(args)
        return 0
    report = {"benchmark": "partial_rollouts", "args": vars(args), "machine": platform.node(),
              "python": platform.python_version(), "results": {}}
    for mode in args.modes.split(","):
        t0 = time.perf_counter()
        report["results"][mode] = er.run_mode(argv, mode, None, script=__file__)
        report["results"][mode]["wall_seconds"] = time.perf_counter() - t0
        report["summary"] = summarize(args, report["results"])
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(report, indent=2))
        print(mode, json.dumps(report["summary"].get(mode)), flush=True)
    return 0 if all("error" not in r for r in report["results"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
