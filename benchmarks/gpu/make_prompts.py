"""Pre-tokenize shipped problems with a model's chat template for machines without the data
packages (the GPU machine): ``python benchmarks/gpu/make_prompts.py --model qwen2.5-coder-0.5b-instruct
--dataset math500 --problems 128 --out benchmarks/gpu/prompts/math500-qwen2.5-coder-0.5b.json``."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from engine_rollouts import load_problems  # noqa: E402

from openrlhf_das.models.registry import materialize  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--model", default="qwen2.5-coder-0.5b-instruct")
    p.add_argument("--dataset", default="math500")
    p.add_argument("--problems", type=int, default=128)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True)
    args = p.parse_args()
    args.prompts_file = None
    model = str(materialize(args.model))
    problems = load_problems(args, model)
    out = {"model": args.model, "dataset": args.dataset, "seed": args.seed,
           "problems": [{"problem_id": q.problem_id, "prompt_token_ids": q.prompt_token_ids} for q in problems]}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out))
    print(f"{len(problems)} problems -> {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
