"""Repeated-epoch RL rollouts through one vLLM engine: DAS vs the baselines a user would pick.

E epochs over N problems × G samples (all requests of an epoch submitted together, the epoch
ends when the last finishes — a synchronous RL step; no weight updates between epochs, so
history match is overstated: epoch 0 is reported separately). Each mode runs in a fresh
engine in its own subprocess, on the same prompts:

    nospec       no speculation, async scheduling, the call's graph and compile
                 settings (the GPU scripts: V1 runner, ``mode: 0``, FULL_DECODE_ONLY)   (a)
    nospec_defaults  no speculation with vLLM's own engine defaults, as a user's
                 stock engine runs: the runner vLLM picks (V2 for dense models on
                 vLLM 0.26), ``VLLM_COMPILE`` + FULL_AND_PIECEWISE graphs; the
                 call's ``--compile-mode`` / ``--cudagraph-mode`` do not apply   (a0)
    nospec_sync  no speculation, V1 runner + synchronous scheduling,
                 i.e. the settings speculative decoding forces               (a')
    ngram        vLLM ``ngram`` (k tokens)                                   (b)
    suffix       stock vLLM ``suffix`` (global tree + per-request tree)      (c)
    das_flat     DAS drafter, every request budget k (no length policy)      (d)
    das          full DAS (length classes, promotion, batch gate)            (e)
    das_async    full DAS keeping vLLM's async scheduling (``async_scheduling``:
                 method ``ngram_gpu`` with the DAS async proposer)            (e')
    das_gpu      full DAS drafted on the GPU (``device_drafter.enabled``: the
                 device drafter, async scheduling, no host sync)              (f)
    ngram_gpu    stock vLLM ``ngram_gpu`` (device n-gram, async kept; its kernel
                 is torch-compiled: give the call ``--compile-mode 3``)       (g)

Output: JSON with per-epoch rollout seconds, tokens/s, acceptance per length bucket (DAS),
drafter CPU share, and ratios vs (a)/(a') from the same run; per epoch the engine's step timeline
(``step_timeline``: milliseconds per step by kind — plain, drafted, prefill — and batch size,
measured in the engine process; ``--no-step-timeline`` leaves it out); a PNG; optionally the
rollouts of ``nospec`` as a zstd JSONL trace for ``benchmarks/replay.py``.

CPU: ``--device cpu`` (eager). GPU: CUDA graphs via ``--cudagraph-mode`` (see docs/gpu.md).

``--engines N``: data-parallel rollouts as OpenRLHF runs them with N engines and sticky routing:
each mode starts N engines at once (child processes; on GPU one per device via
``CUDA_VISIBLE_DEVICES``), engine i serves the problems with ``engine_for_problem(id, N) == i`` and
drafts from their history only; an epoch lasts as long as its slowest engine. The per-engine
results are kept under ``engines``; the merged epoch has the max seconds, summed tokens and
requests, and the engines' DAS stats summed (``merge_engine_stats``, as the history actor does).

``--tensor-parallel T``: each engine spans T devices (``tensor_parallel_size``; engine i gets GPUs
i·T … i·T+T-1). ``--gpus G`` with fewer devices than N·T puts several engines on one device
(device index taken modulo G; each engine then needs ``--gpu-memory-utilization`` ≤ 0.9 divided
by the engines sharing it, checked before any engine starts). Every rank runs its own drafter on the same history; each DAS epoch records
whether all ranks' DAS stats agree (``ranks_agree``; a warning is printed when they do not). On
CPU the T worker processes are bound to one core each (``VLLM_CPU_OMP_THREADS_BIND``, unless set).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MODES = ("nospec", "nospec_defaults", "nospec_sync", "ngram", "suffix", "das_flat", "das", "das_async", "das_gpu", "ngram_gpu")
DAS_MODES = ("das_flat", "das", "das_async", "das_gpu")
ASYNC_MODES = ("das_async", "das_gpu", "ngram_gpu")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="smollm2-135m-instruct", help="registry name or HF folder")
    p.add_argument("--dataset", default="math500")
    p.add_argument("--prompts-file", default=None,
                   help="pre-tokenized prompts (JSON from benchmarks/gpu/make_prompts.py) instead of --dataset")
    p.add_argument("--problems", type=int, default=16)
    p.add_argument("--samples", type=int, default=4)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--max-tokens", type=int, default=256)
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--k", type=int, default=4, help="draft tokens per step for ngram/suffix/das_flat")
    p.add_argument("--modes", default="nospec,nospec_sync,ngram,suffix,das_flat,das")
    p.add_argument("--das", action="append", default=[], metavar="KEY=VALUE", help="DAS config override (YAML value)")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--cudagraph-mode", default="FULL_DECODE_ONLY",
                   help="GPU only: FULL_DECODE_ONLY, FULL, NONE (eager). FULL with mode 0 gave garbage on vLLM 0.26 (docs/gpu.md)")
    p.add_argument("--compile-mode", type=int, default=0,
                   help="GPU only: vLLM compilation mode (0 = no torch.compile; 3 = inductor, needed for PIECEWISE graphs)")
    p.add_argument("--max-cudagraph-capture-size", type=int, default=None)
    p.add_argument("--max-num-seqs", type=int, default=1024)
    p.add_argument("--max-model-len", type=int, default=4096)
    p.add_argument("--gpu-memory-utilization", type=float, default=0.85)
    p.add_argument("--out", default="benchmarks/results/local/engine_rollouts.json")
    p.add_argument("--png", default=None, help="default: --out with .png")
    p.add_argument("--trace", default=None, help="write the rollouts of the first mode as a .jsonl.zst trace")
    p.add_argument("--engines", type=int, default=1, help="data-parallel engines (sticky problem shards)")
    p.add_argument("--tensor-parallel", type=int, default=1, help="devices per engine (tensor_parallel_size)")
    p.add_argument("--gpus", type=int, default=None,
                   help="devices to spread the engines over (default engines x tensor-parallel); fewer = shared")
    p.add_argument("--merge", nargs="+", default=None, metavar="JSON",
                   help="merge the modes of earlier runs of one workload (e.g. one device call per mode) into --out")
    p.add_argument("--no-step-timeline", dest="step_timeline", action="store_false",
                   help="do not record the engine step timeline (step_timeline.py: ms per step by kind and batch size)")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    p.add_argument("--shard", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--sync-dir", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.engines < 1 or args.tensor_parallel < 1:
        p.error("--engines and --tensor-parallel must be >= 1")
    gpus = args.gpus or args.engines * args.tensor_parallel
    if gpus < args.tensor_parallel:
        p.error(f"--gpus {gpus} < --tensor-parallel {args.tensor_parallel}")
    sharing = -(-args.engines * args.tensor_parallel // gpus)  # engines on the busiest device
    if args.device == "cuda" and sharing * args.gpu_memory_utilization > 0.9:
        p.error(f"{sharing} engines share a device: --gpu-memory-utilization must be <= {0.9 / sharing:.2f}")
    if args.engines > 1 and args.trace:
        p.error("--trace records one engine's rollouts: use it with --engines 1")
    bad = set(args.modes.split(",")) - set(MODES)
    if bad:
        p.error(f"unknown modes {sorted(bad)}; choose from {MODES}")
    if args.device == "cpu" and set(ASYNC_MODES) & set(args.modes.split(",")):
        p.error(f"{'/'.join(ASYNC_MODES)} need a GPU: vllm-cpu keeps scheduling synchronous and cannot start an "
                "ngram_gpu engine (its runner allocates pinned memory); the CPU tests patch both")
    return args


# ---------------------------------------------------------------------- child: one mode
def _das_config(args, mode: str):
    """The DAS config of a DAS mode: ``--das`` overrides, then what the mode fixes."""
    from openrlhf_das.config import DASConfig, overrides_from_items

    over = overrides_from_items(args.das)
    if mode in ("das_async", "das_gpu"):
        over["async_scheduling"] = True
    if mode == "das_gpu":
        over["device_drafter.enabled"] = True
    if mode == "das_flat":
        over.update({"length_policy": False, "flat_budget.tokens": args.k, "gate.mode": "off"})
    return DASConfig().with_overrides(over)


def _engine_kwargs(args, mode: str, tensor_parallel: int = 1, concurrency: int = 0) -> dict:
    """vLLM ``LLM`` keyword arguments for ``mode``;
    ``tensor_parallel``: devices per engine. On GPU without ``--max-cudagraph-capture-size``,
    the graphs cover the widest decode step the mode runs with ``concurrency`` requests
    (:func:`_widest_decode_step`: all of them at the mode's query length, 1 + k with speculation,
    except where a batch gate keeps wide steps draft-free): vLLM 0.26's default stops at 512
    tokens, so a padded DAS step of more than 100 requests (k = 4) ran eager while
    no-speculation steps of up to 512 replayed graphs. The size passed is
    :func:`~openrlhf_das.engines.vllm.draft_free_graphs.covering_capture_size` of that step: vLLM
    rounds the capture sizes of a speculating engine to multiples of 1 + k and drops those above
    the maximum, so a maximum of 1024 left 1-token steps of 1011-1024 requests eager (the 1024-request
    runs of 2026-12-08: 21 ms per eager bulk step against 14 ms for (a), 1.17-1.21x); 1040 covers them."""
    from openrlhf_das.engines.vllm import engine_kwargs
    from openrlhf_das.engines.vllm.draft_free_graphs import covering_capture_size

    kw: dict = dict(seed=args.seed, max_model_len=args.max_model_len, max_num_seqs=args.max_num_seqs)
    if tensor_parallel > 1:
        kw.update(tensor_parallel_size=tensor_parallel, distributed_executor_backend="mp")
    if args.device == "cpu":
        kw["enforce_eager"] = True
    elif mode == "nospec_defaults":  # vLLM's own compilation and graph defaults
        if args.max_cudagraph_capture_size:
            kw["compilation_config"] = {"max_cudagraph_capture_size": args.max_cudagraph_capture_size}
        kw["gpu_memory_utilization"] = args.gpu_memory_utilization
    else:
        cc: dict = {"mode": args.compile_mode, "cudagraph_mode": args.cudagraph_mode}
        if args.max_cudagraph_capture_size:
            cc["max_cudagraph_capture_size"] = args.max_cudagraph_capture_size
        elif concurrency:
            widest = _widest_decode_step(args, mode, concurrency)
            if widest > VLLM_DEFAULT_MAX_CAPTURE:  # vLLM rounds it down to a multiple of 1 + k
                cc["max_cudagraph_capture_size"] = covering_capture_size(widest, _query_len(args, mode))
        kw.update(gpu_memory_utilization=args.gpu_memory_utilization, compilation_config=cc,
                  enforce_eager=args.cudagraph_mode == "NONE")
    if mode == "nospec_sync":
        kw["async_scheduling"] = False
    elif mode == "ngram":
        kw["speculative_config"] = {"method": "ngram", "num_speculative_tokens": args.k,
                                    "prompt_lookup_max": 4, "prompt_lookup_min": 2}
    elif mode == "suffix":
        kw["speculative_config"] = {"method": "suffix", "num_speculative_tokens": args.k}
    elif mode == "ngram_gpu":
        kw["speculative_config"] = {"method": "ngram_gpu", "num_speculative_tokens": args.k,
                                    "prompt_lookup_max": 4, "prompt_lookup_min": 2}
    elif mode in DAS_MODES:
        kw.update(engine_kwargs(_das_config(args, mode)))
    return kw


VLLM_DEFAULT_MAX_CAPTURE = 512
"""vLLM 0.26's default ceiling of ``max_cudagraph_capture_size`` (tokens)."""


def _widest_decode_step(args, mode: str, concurrency: int) -> int:
    """Query tokens of the widest uniform decode step ``mode`` runs with ``concurrency`` requests:
    (1 + k) per request with speculation; but a DAS mode behind a ``max_running`` gate with
    draft-free graphs pads drafts only in steps of at most ``max_running`` requests, and its wider
    steps carry one token per request (``draft_free_graphs``), so graphs past that would be
    captured (engine start, device time) and never replayed."""
    n = min(concurrency, args.max_num_seqs)
    if mode in DAS_MODES:
        c = _das_config(args, mode)
        if c.gate.mode == "max_running" and c.draft_free_graphs:
            return max(_query_len(args, mode) * min(n, c.gate.max_running), n)
    return _query_len(args, mode) * n


def _query_len(args, mode: str) -> int:
    """Tokens per request of a (padded) decode step in ``mode``: 1 + k with speculation."""
    if mode in DAS_MODES:
        return 1 + _das_config(args, mode).max_budget
    return 1 + args.k if mode in ("ngram", "suffix", "ngram_gpu") else 1


def run_child(args) -> None:
    mode = args.child
    parent = os.getppid()
    if args.device == "cpu":
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")  # GiB
    if mode == "nospec_defaults":
        os.environ.pop("VLLM_USE_V2_MODEL_RUNNER", None)  # vLLM picks (benchmarks/gpu/env.sh sets 0)
    elif mode != "nospec":
        os.environ["VLLM_USE_V2_MODEL_RUNNER"] = "0"  # spec decoding forces the V1 runner anyway
    from vllm import LLM, SamplingParams

    from openrlhf_das.engines.vllm.factory import cpu_threads_bind

    bind = cpu_threads_bind(args.tensor_parallel) if args.device == "cpu" and args.tensor_parallel > 1 else None
    if bind:  # read when the engine starts its workers, after this
        os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", bind)

    from epochs import run_epochs  # benchmarks/epochs.py (this folder)

    import step_timeline  # benchmarks/step_timeline.py (this folder)

    if args.step_timeline:
        step_timeline.register()  # before the engine starts: it reads the serialization setting then

    if Path(args.model).is_dir():
        model = args.model
    else:
        from openrlhf_das.models.registry import materialize

        model = str(materialize(args.model))
    problems = load_problems(args, model)[: args.problems]
    if args.engines > 1:
        from openrlhf_das.ray.sharding import engine_for_problem

        problems = [p for p in problems if engine_for_problem(p.problem_id, args.engines) == args.shard]
    started_at = time.time()
    t0 = time.perf_counter()
    kw = _engine_kwargs(args, mode, args.tensor_parallel, concurrency=len(problems) * args.samples)
    llm = LLM(model=model, **kw)
    start_s = time.perf_counter() - t0
    ready_at = time.time()
    if args.sync_dir:  # several engines: say ready, start the epochs together
        Path(args.sync_dir, f"ready-{args.shard}").touch()
        while not Path(args.sync_dir, "go").exists():
            if os.getppid() != parent:
                raise SystemExit("engine_rollouts: the parent process exited before the start")
            time.sleep(0.05)
    sp = SamplingParams(temperature=args.temperature, top_p=1.0, max_tokens=args.max_tokens)
    das = mode in DAS_MODES
    cfg = _das_config(args, mode) if das else None
    timelines: dict[int, dict] = {}

    def on_epoch(epoch: int, phase: str) -> None:  # the engine's steps of each epoch, nothing between
        calls = llm.collective_rpc(step_timeline.take)[0]
        if phase == "end":
            timelines[epoch] = step_timeline.summarize(calls)

    if args.step_timeline:
        llm.collective_rpc(step_timeline.start)
    results = run_epochs(llm, problems, args.samples, sp, args.epochs, das=das,
                         window=cfg.window if cfg else 5, keep_outputs=bool(args.trace), timeline=True,
                         on_epoch=on_epoch if args.step_timeline else None)
    epochs = [r.summary() for r in results]
    for e in epochs:
        if e["epoch"] in timelines:
            e["step_timeline"] = timelines[e["epoch"]]
    out = {"mode": mode, "engine_start_seconds": start_s, "engine_started_at": started_at, "engine_ready_at": ready_at,
           "max_cudagraph_capture_size": kw.get("compilation_config", {}).get("max_cudagraph_capture_size"),
           "problem_ids": [p.problem_id for p in problems],
           "epochs": epochs}
    if args.trace:
        _write_trace(args.trace, problems, args.samples, results)
    print("CHILD_RESULT " + json.dumps(out), flush=True)


def load_problems(args, model: str) -> list:
    """Chat-formatted, tokenized problems from ``--prompts-file`` or the shipped ``--dataset``."""
    from epochs import Problem  # benchmarks/epochs.py (this folder)

    if args.prompts_file:
        data = json.loads(Path(args.prompts_file).read_text())
        return [Problem(p["problem_id"], p["prompt_token_ids"]) for p in data["problems"]]
    from transformers import AutoTokenizer

    from openrlhf_das.data import load_dataset_by_name, to_chat_messages

    tok = AutoTokenizer.from_pretrained(model)
    ds = load_dataset_by_name(args.dataset, limit=args.problems, seed=args.seed)
    return [
        Problem(r["problem_id"], tok(tok.apply_chat_template(to_chat_messages(r["prompt"]), tokenize=False,
                                                             add_generation_prompt=True), add_special_tokens=False).input_ids)
        for r in ds
    ]


def _write_trace(path: str, problems, samples: int, results) -> None:

    lines = [json.dumps({"synthetic": False, "format": "openrlhf-das/trace", "version": 1})]
    for r in results:
        for i, toks in enumerate(r.outputs):
            p = problems[i // samples]
            lines.append(json.dumps({"step": r.epoch, "problem_id": p.problem_id, "sample_index": i % samples,
                                     "prompt_token_ids": p.prompt_token_ids, "response_token_ids": toks}))
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    data = ("\n".join(lines) + "\n").encode()
    if path.endswith(".zst"):
        import zstandard

        data = zstandard.ZstdCompressor(level=10).compress(data)
    Path(path).write_bytes(data)


# ---------------------------------------------------------------------- parent
def _without(argv: list[str], flag: str) -> list[str]:
    """``argv`` without ``flag`` and its value (either ``--flag v`` or ``--flag=v``)."""
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a == flag:
            skip = True
        elif not a.startswith(flag + "="):
            out.append(a)
    return out


def engine_devices(i: int, tp: int, gpus: int) -> list[int]:
    """CUDA device indices of engine ``i`` (``tp`` ranks each) when engines are laid out in order
    over ``gpus`` devices, wrapping around (so engines share devices when ``gpus`` < engines·tp)."""
    return [(i * tp + r) % gpus for r in range(tp)]


def run_mode(argv: list[str], mode: str, trace: str | None, script: str = __file__, engines: int = 1,
             device: str = "cpu", tp: int = 1, gpus: int | None = None) -> dict:
    """Run ``script --child mode`` (a fresh engine in its own process; with ``engines`` > 1 that
    many at once, one per problem shard and, on ``cuda``, on the devices of
    :func:`engine_devices`) and return its result."""
    base = [sys.executable, script, *_without(_without(argv, "--trace"), "--engines"), "--child", mode]
    if trace:
        base += ["--trace", trace]
    if engines == 1:
        return _child_result(subprocess.run(base, capture_output=True, text=True), mode)
    procs: list[subprocess.Popen] = []
    devices = [engine_devices(i, tp, gpus or engines * tp) for i in range(engines)]
    with tempfile.TemporaryDirectory() as sync_dir:
        logs = [(Path(sync_dir, f"out-{i}"), Path(sync_dir, f"err-{i}")) for i in range(engines)]
        try:
            for i in range(engines):
                # vLLM sizes its KV cache from the device's free memory: an engine starts only once
                # the engines before it on the same device have finished starting
                for j in range(i):
                    if set(devices[j]) & set(devices[i]):
                        _wait_ready(procs[j], Path(sync_dir, f"ready-{j}"))
                env = dict(os.environ)
                if device == "cuda":
                    env["CUDA_VISIBLE_DEVICES"] = ",".join(map(str, devices[i]))
                with open(logs[i][0], "w") as out, open(logs[i][1], "w") as err:  # files: no pipe to fill
                    procs.append(subprocess.Popen([*base, "--engines", str(engines), "--shard", str(i),
                                                   "--sync-dir", sync_dir], env=env, stdout=out, stderr=err,
                                                  text=True))
            for j, proc in enumerate(procs):
                _wait_ready(proc, Path(sync_dir, f"ready-{j}"))
        finally:
            Path(sync_dir, "go").touch()  # also when one failed: the others run, its error is reported
            for proc in procs:
                proc.wait()
        results = [_child_result(subprocess.CompletedProcess(proc.args, proc.returncode, out.read_text(),
                                                             err.read_text()), mode)
                   for proc, (out, err) in zip(procs, logs)]
    return merge_engines(results)


def _wait_ready(proc: subprocess.Popen, ready: Path) -> None:
    """Block until the engine process has built its engine (``ready`` exists) or has exited."""
    while not ready.exists() and proc.poll() is None:
        time.sleep(0.05)


ENGINE_LOG_KEYS = ("DAS", "openrlhf-das", "Graph capturing finished", "Asynchronous scheduling is")
"""Engine log lines kept in a mode's result (``engine_log``): DAS messages (graphs, padding,
faults), graph capture time and memory, the scheduling mode. The rest of a child's log is dropped."""


def _child_result(proc: subprocess.CompletedProcess, mode: str) -> dict:
    for line in proc.stdout.splitlines():
        if line.startswith("CHILD_RESULT "):
            out = json.loads(line[len("CHILD_RESULT "):])
            logged = [x.strip() for x in (proc.stdout + proc.stderr).splitlines()
                      if any(k in x for k in ENGINE_LOG_KEYS) and not x.startswith("CHILD_RESULT ")]
            out["engine_log"] = list(dict.fromkeys(logged))[:40]
            return out
    sys.stderr.write(proc.stdout[-4000:] + proc.stderr[-8000:])
    return {"mode": mode, "error": f"exit code {proc.returncode}"}


def _all_agree(flags: list[bool | None]) -> bool | None:
    """Engines' ``ranks_agree``: None when none has several ranks, else whether none disagrees."""
    known = [f for f in flags if f is not None]
    return all(known) if known else None


def merge_engines(results: list[dict]) -> dict:
    """Data-parallel engines → one result: per epoch the slowest engine's seconds, summed tokens,
    requests and DAS stats; finish times merged. Per-engine results kept under ``engines``."""
    from openrlhf_das.ray.aggregate import merge_engine_stats

    bad = [r for r in results if "error" in r]
    if bad:
        return {"mode": results[0]["mode"], "error": "; ".join(r["error"] for r in bad), "engines": results}
    epochs = []
    for per in zip(*(r["epochs"] for r in results)):
        tokens, requests = sum(e["output_tokens"] for e in per), sum(e["requests"] for e in per)
        seconds = max(e["seconds"] for e in per)
        das = [e["das"] for e in per if e.get("das")]
        epochs.append({
            "epoch": per[0]["epoch"],
            "seconds": seconds,
            "output_tokens": tokens,
            "requests": requests,
            "tokens_per_second": tokens / seconds if seconds > 0 else 0.0,
            "max_response_length": max(e["max_response_length"] for e in per),
            "mean_response_length": sum(e["mean_response_length"] * e["requests"] for e in per) / max(requests, 1),
            "ranks_agree": _all_agree([e.get("ranks_agree") for e in per]),
            "das": merge_engine_stats(das) if das else None,
            "finish_seconds": sorted(t for e in per for t in e.get("finish_seconds", [])),
            "response_lengths": [n for e in per for n in e.get("response_lengths", [])],
        })
    return {"mode": results[0]["mode"], "engine_start_seconds": max(r["engine_start_seconds"] for r in results),
            "epochs": epochs, "engines": results}


def summarize(results: dict, greedy: bool = False) -> dict:
    """Per mode: seconds (all epochs, epoch 0, epochs 1+) and ratios against the baselines present.
    ``greedy`` (temperature 0): also the share of requests whose outputs equal the first mode's
    (``identical_outputs_vs_<mode>``, from the per-request output digests of every epoch)."""

    def secs(mode, lo=0):
        ep = results.get(mode, {}).get("epochs")
        return sum(e["seconds"] for e in ep[lo:]) if ep else None

    table = {}
    for mode in results:
        row = {"all_epochs_s": secs(mode), "epoch0_s": secs(mode) and results[mode]["epochs"][0]["seconds"],
               "epochs1plus_s": secs(mode, 1)}
        for base in ("nospec", "nospec_defaults", "nospec_sync", "ngram", "suffix"):
            if base in results and secs(base) and secs(mode) and "epochs" in results[base]:
                b0 = results[base]["epochs"][0]["seconds"]
                row[f"ratio_vs_{base}"] = secs(mode) / secs(base)
                row[f"ratio_vs_{base}_epoch0"] = results[mode]["epochs"][0]["seconds"] / b0
                if secs(base, 1):
                    row[f"ratio_vs_{base}_epochs1plus"] = secs(mode, 1) / secs(base, 1)
        ref = next(iter(results))
        if greedy and mode != ref and "epochs" in results[ref] and "epochs" in results[mode]:
            pairs = [(a, b) for ea, eb in zip(results[ref]["epochs"], results[mode]["epochs"])
                     for a, b in zip(ea.get("output_digests", []), eb.get("output_digests", []))]
            if pairs:
                row[f"identical_outputs_vs_{ref}"] = sum(a == b for a, b in pairs) / len(pairs)
        table[mode] = row
    return table


def plot(results: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(18, 4.5))
    for mode, res in results.items():
        if "epochs" not in res:
            continue
        axes[0].plot([e["epoch"] for e in res["epochs"]], [e["seconds"] for e in res["epochs"]], marker="o", label=mode)
        agg: dict[str, list[float]] = {}
        for e in res["epochs"][1:]:
            for b, c in ((e.get("das") or {}).get("acceptance", {}).get("by_bucket", {})).items():
                acc = agg.setdefault(b, [0, 0])
                acc[0] += c["accepted"]
                acc[1] += c["verify_steps"]
        labels = [b for b, (a, s) in agg.items() if s]
        if labels:
            axes[1].plot(labels, [agg[b][0] / agg[b][1] + 1 for b in labels], marker="o", label=mode)
        last = res["epochs"][-1]
        done = sorted(last.get("finish_seconds") or [])
        if done:  # running requests vs time in the last epoch: the long tail
            axes[2].step([0.0, *done], [last["requests"] - i for i in range(len(done) + 1)], where="post", label=mode)
    axes[0].set(title="rollout time per epoch", xlabel="epoch", ylabel="seconds")
    axes[1].set(title="tokens per verify step by response length (epochs >= 1)", xlabel="bucket", ylabel="accepted + 1")
    axes[2].set(title="running requests vs time (last epoch)", xlabel="seconds", ylabel="requests", yscale="log")
    for ax in axes:
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


WORKLOAD_ARGS = ("model", "dataset", "prompts_file", "problems", "samples", "epochs", "max_tokens", "temperature",
                 "seed", "k", "das", "device", "cudagraph_mode", "compile_mode", "max_cudagraph_capture_size",
                 "max_num_seqs", "max_model_len", "engines", "tensor_parallel")
"""Arguments that define the workload and engine settings: runs merged by ``--merge`` must agree on
them (``gpu_memory_utilization``, ``gpus`` and output paths may differ)."""


def merge_reports(reports: list[dict], names: list[str]) -> dict:
    """One report from runs of the same workload on the same kind of machine, each contributing
    its modes (in order; a mode may appear once). Raises ``ValueError`` naming what differs."""
    first = reports[0]
    results: dict = {}
    for name, rep in zip(names, reports):
        diff = [k for k in WORKLOAD_ARGS if rep["args"].get(k) != first["args"].get(k)]
        if diff:
            raise ValueError(f"{name}: workload differs from {names[0]} in {', '.join(diff)}")
        if rep["machine"].get("gpu") != first["machine"].get("gpu"):
            raise ValueError(f"{name}: ran on {rep['machine'].get('gpu')}, {names[0]} on {first['machine'].get('gpu')}")
        again = set(rep["results"]) & set(results)
        if again:
            raise ValueError(f"{name}: modes {sorted(again)} are already in an earlier file")
        results.update(rep["results"])
    args = {**first["args"], "modes": ",".join(results), "merge": list(names)}
    return {"args": args, "machine": first["machine"], "weight_updates": False, "results": results,
            "summary": summarize(results, greedy=first["args"].get("temperature") == 0),
            "merged_from": [{"file": n, "modes": list(r["results"]), "machine": r["machine"]}
                            for n, r in zip(names, reports)]}


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    if args.child:
        run_child(args)
        return 0
    if args.merge:
        try:
            report = merge_reports([json.loads(Path(f).read_text()) for f in args.merge], args.merge)
        except (OSError, ValueError, KeyError) as exc:
            print(f"engine_rollouts --merge: {exc}", file=sys.stderr)
            return 2
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(report, indent=2))
        plot(report["results"], args.png or str(Path(args.out).with_suffix(".png")))
        print(json.dumps(report["summary"], indent=2))
        return 0
    results: dict = {}
    machine = {"platform": platform.platform(), "python": platform.python_version(), "cpus": os.cpu_count(),
               "device": args.device}
    if args.device == "cuda":
        import torch

        machine["gpu"] = torch.cuda.get_device_name(0)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    for i, mode in enumerate(args.modes.split(",")):
        print(f"[engine_rollouts] {mode} ...", flush=True)
        results[mode] = run_mode(argv, mode, args.trace if i == 0 else None, engines=args.engines, device=args.device,
                                 tp=args.tensor_parallel, gpus=args.gpus)
        if any(e.get("ranks_agree") is False for e in results[mode].get("epochs", [])):
            print(f"WARNING: {mode}: the tensor-parallel ranks' DAS stats differ (see ranks_agree)", flush=True)
        print(json.dumps({mode: [round(e["seconds"], 2) for e in results[mode].get("epochs", [])]}), flush=True)
        report = {"args": vars(args), "machine": machine, "weight_updates": False, "results": results,
                  "summary": summarize(results, greedy=args.temperature == 0)}
        Path(args.out).write_text(json.dumps(report, indent=2))  # after every mode: partial runs keep data
    plot(results, args.png or str(Path(args.out).with_suffix(".png")))
    print(json.dumps(report["summary"], indent=2))
    return 0 if all("epochs" in r for r in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
