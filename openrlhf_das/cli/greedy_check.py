"""Greedy identity check: the same prompts decoded greedily with DAS off and on give the same tokens.

``python -m openrlhf_das.cli.greedy_check --model M --prompts prompts.jsonl --out check.json``
(``make demo`` runs it on a few of its prompts, in a process of its own).

1. A stock vLLM engine (no speculation) decodes each prompt greedily (T = 0, chat template).
2. A DAS engine (``engine_kwargs``: speculative method ``suffix`` + the DAS proposer) gets those
   responses as its history (``das_load_snapshot``, keyed by problem id: the situation of a
   later epoch, where the same prompts come back) and decodes the same prompts greedily, each
   tagged with its problem id, so DAS drafts and vLLM's rejection sampler verifies the drafts.
3. Tokens are compared per prompt; DAS acceptance comes from ``das_get_stats``.

Both engines run in float32 on the CPU (enforce_eager): the check is about the algorithm, and
float32 keeps the (1 + k)-token verify steps numerically as close to 1-token steps as a CPU
allows. Output JSON: ``{"prompts", "identical", "first_difference": [...], "drafted",
"accepted", "acceptance_rate", "tokens", "dtype"}``.
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
from pathlib import Path
from typing import Any


def _shutdown(llm: Any) -> None:
    try:
        llm.llm_engine.engine_core.shutdown()
    finally:
        del llm
        gc.collect()


def _first_difference(a: list[int], b: list[int]) -> int | None:
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return i
    return None if len(a) == len(b) else min(len(a), len(b))


def run(model: str, rows: list[dict[str, Any]], max_tokens: int, das_config: Any, max_model_len: int) -> dict[str, Any]:
    """The check on ``rows`` (``problem_id``, ``prompt``: user-message text); see the module docstring."""
    import numpy as np
    from transformers import AutoTokenizer
    from vllm import LLM, SamplingParams

    from ..data.prompts import to_chat_messages
    from ..drafter import HistorySnapshot, Rollout
    from ..engines.vllm import engine_kwargs, with_das_metadata

    tok = AutoTokenizer.from_pretrained(model)
    prompts = []
    for r in rows:
        ids = tok.apply_chat_template(to_chat_messages(r["prompt"]), add_generation_prompt=True, tokenize=True)
        prompts.append({"prompt_token_ids": list(ids["input_ids"] if hasattr(ids, "keys") else ids)})
    greedy = SamplingParams(temperature=0.0, max_tokens=max_tokens)
    common = dict(model=model, dtype="float32", enforce_eager=True, max_model_len=max_model_len, seed=0)

    stock = LLM(**common)
    try:
        off = [list(o.outputs[0].token_ids) for o in stock.generate(prompts, greedy, use_tqdm=False)]
    finally:
        _shutdown(stock)

    das = LLM(**common, **engine_kwargs(das_config))
    try:
        snap = HistorySnapshot.from_rollouts(
            [Rollout(r["problem_id"], 0, np.asarray(t, np.int32)) for r, t in zip(rows, off)], next_step=1)
        das.collective_rpc("das_load_snapshot", args=(snap.to_npz_bytes(),))
        params = [with_das_metadata(greedy, r["problem_id"]) for r in rows]
        on = [list(o.outputs[0].token_ids) for o in das.generate(prompts, params, use_tqdm=False)]
        total = das.collective_rpc("das_get_stats")[0]["acceptance"]["total"]
    finally:
        _shutdown(das)
    diffs = [_first_difference(a, b) for a, b in zip(off, on)]
    return {
        "prompts": len(rows),
        "identical": sum(d is None for d in diffs),
        "first_difference": diffs,
        "tokens": sum(len(t) for t in off),
        "drafted": int(total["drafted"]),
        "accepted": int(total["accepted"]),
        "acceptance_rate": float(total["acceptance_rate"]),
        "dtype": "float32",
    }


def summary_line(result: dict[str, Any]) -> str:
    """One line for the demo's output."""
    same = result["identical"] == result["prompts"]
    return (f"greedy check ({result['prompts']} prompts, {result['tokens']} tokens, T=0, {result['dtype']}): "
            f"DAS on and off gave {'IDENTICAL' if same else 'DIFFERENT'} tokens on {result['identical']}/"
            f"{result['prompts']} prompts; DAS drafted {result['drafted']} tokens, accepted {result['accepted']} "
            f"({result['acceptance_rate']:.0%}; history = the stock engine's greedy responses)")


def main(argv: list[str] | None = None) -> int:
    from ..config import DASConfig

    p = argparse.ArgumentParser(prog="python -m openrlhf_das.cli.greedy_check", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="HF model folder")
    p.add_argument("--prompts", required=True, help="JSONL rows with problem_id and prompt (user message)")
    p.add_argument("--num", type=int, default=4, help="first N rows")
    p.add_argument("--max-tokens", type=int, default=128)
    p.add_argument("--max-model-len", type=int, default=1024)
    p.add_argument("--das-config", default=None, help="DAS config JSON (default: built-in defaults)")
    p.add_argument("--out", required=True)
    a = p.parse_args(argv)
    rows = [json.loads(line) for line in Path(a.prompts).read_text().splitlines() if line.strip()][: a.num]
    config = DASConfig.from_dict(json.loads(a.das_config)) if a.das_config else DASConfig()
    result = run(a.model, rows, a.max_tokens, config, a.max_model_len)
    Path(a.out).write_text(json.dumps(result, indent=2))
    print(summary_line(result), flush=True)
    return 0 if result["identical"] == result["prompts"] else 1


if __name__ == "__main__":
    sys.exit(main())
