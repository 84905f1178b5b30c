"""Shipped dataset loaders: counts, columns, prompts, stable ids, and their errors."""

from __future__ import annotations

import collections
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from openrlhf_das.data import (
    CODE_INSTRUCTION,
    DATASETS,
    GSM_SYMBOLIC_DEFAULT_SIZE,
    MATH_INSTRUCTION,
    load_code,
    load_dataset_by_name,
    load_math,
    stable_id,
    to_chat_messages,
)
from openrlhf_das.data.records import to_dataset

ROOT = Path(__file__).resolve().parents[1]
MATH_COLUMNS = {"problem_id", "source", "question", "prompt", "answer", "label"}
CODE_COLUMNS = {"problem_id", "source", "question", "prompt", "entry_point", "test", "canonical_solution", "label"}
GSM_LIMIT = 40


def test_mmath_counts_sources_and_columns() -> None:
    ds = load_math("mmath")
    assert len(ds) == 374
    assert set(ds.column_names) == MATH_COLUMNS
    assert collections.Counter(ds["source"]) == {"MATH500": 311, "AIME2024": 30, "AIME2025": 15, "CNMO": 18}
    assert len(set(ds["problem_id"])) == 374
    first = ds[0]
    assert first["problem_id"] == "mmath/AIME2024/0" and first["answer"] == "204" == first["label"]
    assert first["prompt"] == f"{first['question']}\n{MATH_INSTRUCTION}"
    assert not any(answer.startswith("$") or answer.endswith("$") for answer in ds["answer"])


def test_math_subsets() -> None:
    assert set(load_math("math500")["source"]) == {"MATH500"} and len(load_math("math500")) == 311
    aime = load_math("aime")
    assert len(aime) == 45 and set(aime["source"]) == {"AIME2024", "AIME2025"}
    assert all(answer.isdigit() for answer in aime["answer"])  # AIME answers are integers


def test_limit_and_seed() -> None:
    assert load_math("math500", limit=5)["problem_id"] == load_math("math500")["problem_id"][:5]
    shuffled = load_math("mmath", limit=20, seed=7)["problem_id"]
    assert shuffled == load_math("mmath", limit=20, seed=7)["problem_id"]
    assert shuffled != load_math("mmath", limit=20, seed=8)["problem_id"]
    assert shuffled != load_math("mmath", limit=20)["problem_id"]


def test_gsm_symbolic_is_generated_deterministically() -> None:
    ds = load_math("gsm_symbolic", limit=GSM_LIMIT)
    assert len(ds) == GSM_LIMIT and set(ds.column_names) == MATH_COLUMNS
    assert set(ds["source"]) == {"gsm_symbolic"} and len(set(ds["problem_id"])) == GSM_LIMIT
    row = ds[0]
    assert row["problem_id"] == stable_id("gsm_symbolic", row["question"]) and len(row["problem_id"]) == 16
    assert all(answer.lstrip("-").replace(".", "", 1).isdigit() for answer in ds["answer"])
    # Prefix-stable: a longer request starts with the same problems; another seed differs.
    assert load_math("gsm_symbolic", limit=GSM_LIMIT + 10)["problem_id"][:GSM_LIMIT] == ds["problem_id"]
    assert load_math("gsm_symbolic", limit=GSM_LIMIT, seed=1)["problem_id"] != ds["problem_id"]
    assert len(load_math("gsm_symbolic")) == GSM_SYMBOLIC_DEFAULT_SIZE


def test_arithmetic_is_generated_deterministically() -> None:
    """``make demo``'s set: distinct sums of two numbers 0..10 with integer answers, stable per seed."""
    ds = load_math("arithmetic", limit=16)
    assert len(ds) == 16 and set(ds.column_names) == MATH_COLUMNS and set(ds["source"]) == {"arithmetic"}
    for row in ds:
        a, b = row["question"].removeprefix("What is ").rstrip("?").split(" + ")
        assert int(a) + int(b) == int(row["answer"]) and 0 <= int(a) <= 10 and 0 <= int(b) <= 10
        assert row["problem_id"] == stable_id("arithmetic", row["question"])
    assert load_math("arithmetic", limit=16)["problem_id"] == ds["problem_id"]
    assert load_math("arithmetic", limit=16, seed=1)["problem_id"] != ds["problem_id"]


def test_humaneval() -> None:
    ds = load_code()
    assert len(ds) == 164 and set(ds.column_names) == CODE_COLUMNS
    assert ds["problem_id"] == [f"HumanEval/{i}" for i in range(164)]
    row = ds[0]
    assert row["source"] == "humaneval" and row["entry_point"] == "has_close_elements"
    assert row["prompt"].startswith(CODE_INSTRUCTION) and row["question"].strip() in row["prompt"]
    assert json.loads(row["label"]) == {k: row[k] for k in ("question", "entry_point", "test")}
    assert load_code(limit=3, seed=0)["problem_id"] == load_code(limit=3, seed=0)["problem_id"]


def test_registry_names_and_errors() -> None:
    assert set(DATASETS) == {"mmath", "math500", "aime", "gsm_symbolic", "arithmetic", "humaneval"}
    assert len(load_dataset_by_name("aime", limit=4)) == 4
    assert load_dataset_by_name("humaneval", limit=2)["problem_id"] == ["HumanEval/0", "HumanEval/1"]
    with pytest.raises(ValueError, match=r"unknown dataset 'gsm8k'; valid names: aime, arithmetic, gsm_symbolic, humaneval"):
        load_dataset_by_name("gsm8k")
    with pytest.raises(ValueError, match="unknown math source 'humaneval'"):
        load_math("humaneval")  # type: ignore[arg-type]


@pytest.mark.parametrize("limit", [0, -3, 2.5, True])
def test_bad_limits_are_rejected(limit: object) -> None:
    with pytest.raises(ValueError, match="limit must be a positive int"):
        load_dataset_by_name("math500", limit=limit)  # type: ignore[arg-type]


def test_empty_and_duplicate_rows_are_rejected() -> None:
    with pytest.raises(ValueError, match="'nothing' is empty"):
        to_dataset("nothing", [], None, None)
    with pytest.raises(ValueError, match="duplicate problem_id"):
        to_dataset("twice", [{"problem_id": "a"}, {"problem_id": "a"}], None, None)


def test_ids_are_identical_in_another_process() -> None:
    """Ids do not depend on the process (e.g. on Python's salted ``hash``)."""
    script = (
        "import json\nfrom openrlhf_das.data import load_dataset_by_name\n"
        f"print(json.dumps({{n: list(load_dataset_by_name(n, limit={GSM_LIMIT} if n == 'gsm_symbolic' else None)"
        f"['problem_id']) for n in {sorted(DATASETS)!r}}}))\n"
    )
    env = dict(os.environ, PYTHONHASHSEED="12345")
    out = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=120, check=True)
    theirs = json.loads(out.stdout.strip().splitlines()[-1])
    ours = {n: list(load_dataset_by_name(n, limit=GSM_LIMIT if n == "gsm_symbolic" else None)["problem_id"])
            for n in DATASETS}
    assert theirs == ours


def test_stable_id_and_chat_messages() -> None:
    assert stable_id("src", "text") == "61a2cab5b8878ed6"  # sha1("src\ntext")[:16], fixed forever
    assert to_chat_messages("hi") == [{"role": "user", "content": "hi"}]
    assert to_chat_messages("hi", system="be brief") == [
        {"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}]
