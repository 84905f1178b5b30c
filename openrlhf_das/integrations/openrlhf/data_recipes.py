"""Write the shipped datasets (``openrlhf_das.data``) as OpenRLHF prompt JSONL files.

Each line: ``{"problem_id", "datasource", "prompt", "label"}`` — use them with::

    --data.prompt_dataset <train.jsonl> --data.input_key prompt --data.label_key label
    --data.apply_chat_template [--eval.dataset <eval.jsonl>]

``prompt`` is the user-message text (OpenRLHF applies the model's chat template with
``--data.apply_chat_template``); ``label`` is what the matching reward function in
``reward_funcs/`` takes (math: the gold answer; code: JSON with the HumanEval stub, entry point
and tests); ``problem_id`` is the dataset's stable id (DAS keys its history by it: see
``problem_ids``); ``datasource`` groups OpenRLHF's eval metrics.

Recipes (:data:`RECIPES`): ``math`` (train: MATH-500 subset of MMATH, 311; eval: AIME 2024+2025,
45), ``gsm`` (train: 1024 generated GSM-symbolic problems; eval: MATH-500, first 100),
``code`` (train: HumanEval, 164; no eval set). Usage::

    python -m openrlhf_das.integrations.openrlhf.data_recipes math --out-dir data/
    python -m openrlhf_das.integrations.openrlhf.data_recipes --dataset aime --out data/aime.jsonl
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Iterable

RECIPES: dict[str, dict[str, tuple[str, int | None]]] = {
    "math": {"train": ("math500", None), "eval": ("aime", None)},
    "gsm": {"train": ("gsm_symbolic", 1024), "eval": ("math500", 100)},
    "code": {"train": ("humaneval", None)},
}


def openrlhf_rows(name: str, limit: int | None = None, seed: int | None = None) -> list[dict[str, Any]]:
    """Rows of shipped dataset ``name`` in OpenRLHF's prompt format."""
    from ...data import load_dataset_by_name

    ds = load_dataset_by_name(name, limit, seed)
    return [
        {"problem_id": r["problem_id"], "datasource": r["source"], "prompt": r["prompt"], "label": r["label"]}
        for r in ds
    ]


def write_jsonl(rows: Iterable[dict[str, Any]], path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    with tmp.open("w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    tmp.replace(path)
    return path


def write_recipe(recipe: str, out_dir: str | Path, seed: int | None = None) -> dict[str, Path]:
    """Write ``<out_dir>/<recipe>_<split>.jsonl`` for every split of ``recipe``."""
    if recipe not in RECIPES:
        raise ValueError(f"unknown recipe {recipe!r}; valid: {', '.join(RECIPES)}")
    return {
        split: write_jsonl(openrlhf_rows(name, limit, seed), Path(out_dir) / f"{recipe}_{split}.jsonl")
        for split, (name, limit) in RECIPES[recipe].items()
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m openrlhf_das.integrations.openrlhf.data_recipes", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("recipe", nargs="?", choices=sorted(RECIPES), help="write every split of a recipe")
    p.add_argument("--out-dir", default="data", help="recipe output folder (default: data)")
    p.add_argument("--dataset", help="write one shipped dataset instead (math500, aime, mmath, gsm_symbolic, humaneval)")
    p.add_argument("--out", help="output file for --dataset")
    p.add_argument("--limit", type=int, default=None)
    p.add_argument("--seed", type=int, default=None)
    a = p.parse_args(argv)
    if (a.recipe is None) == (a.dataset is None):
        p.error("give a recipe or --dataset")
    try:
        if a.recipe:
            for split, path in write_recipe(a.recipe, a.out_dir, a.seed).items():
                print(f"{split}: {path}")
        else:
            if not a.out:
                p.error("--dataset needs --out")
            print(write_jsonl(openrlhf_rows(a.dataset, a.limit, a.seed), a.out))
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
