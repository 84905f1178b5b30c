"""Math and code rewards on real problems from the shipped datasets."""

from __future__ import annotations

import dataclasses
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from openrlhf_das.data import (
    CODE_LIMITS,
    build_program,
    code_reward,
    extract_code,
    extract_last_boxed,
    load_code,
    load_math,
    math_reward,
)


@pytest.fixture(scope="module")
def humaneval() -> dict[str, dict]:
    return {row["problem_id"]: row for row in load_code()}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("so the answer is \\boxed{204}.", "204"),
        ("\\boxed{\\frac{\\sqrt{6}}{4}}", "\\frac{\\sqrt{6}}{4}"),  # nested braces
        ("\\boxed{\\{1, 2\\}} braces escaped", "\\{1, 2\\}"),
        ("first \\boxed{1}, finally \\boxed{2}", "2"),  # last box wins
        ("\\fbox{x+1}", "x+1"),
        ("\\boxed {7}", "7"),
        ("no box at all: 204", None),
        ("\\boxed{3} then truncated \\boxed{\\frac{1}{2", None),  # unclosed last box
    ],
)
def test_extract_last_boxed(text: str, expected: str | None) -> None:
    assert extract_last_boxed(text) == expected


def test_math_reward_on_mmath_answers() -> None:
    rows = {row["problem_id"]: row for row in load_math("mmath")}
    assert all(math_reward(f"... \\boxed{{{row['answer']}}}", row["answer"]) == 1.0 for row in rows.values())
    aya = rows["mmath/AIME2024/0"]["answer"]  # Aya's walk: 204 minutes
    assert math_reward("The walk takes \\boxed{204} minutes.", aya) == 1.0
    assert math_reward("The walk takes \\boxed{204.0} minutes.", aya) == 1.0
    assert math_reward("The walk takes \\boxed{240} minutes.", aya) == 0.0
    assert math_reward("The walk takes 204 minutes.", aya) == 0.0  # unboxed
    half = next(row["answer"] for row in rows.values() if row["answer"] == "\\frac{1}{2}")
    assert math_reward("\\boxed{\\dfrac{1}{2}}", half) == 1.0
    assert math_reward("\\boxed{0.5}", half) == 1.0
    assert math_reward("\\boxed{\\frac{1}{3}}", half) == 0.0


def test_math_reward_off_the_main_thread_is_bounded() -> None:
    """OpenRLHF calls reward functions from worker threads, where math-verify's SIGALRM timeout
    cannot work: there the comparison runs in a worker process (same results), and a call that
    overruns is abandoned and its worker killed (a real sleeping call, not a mock)."""
    import importlib
    import threading
    import time

    mr = importlib.import_module("openrlhf_das.data.math_reward")  # the package re-exports the function

    out: dict = {}

    def worker() -> None:
        out["half"] = math_reward("\\boxed{0.5}", "\\frac{1}{2}")  # not an exact match: needs math-verify
        out["third"] = math_reward("\\boxed{\\frac{1}{3}}", "\\frac{1}{2}")
        t0 = time.perf_counter()
        try:
            mr.call_with_timeout(time.sleep, (60,), 2.0)
        except TimeoutError:
            out["timeout_after"] = time.perf_counter() - t0
        out["after_kill"] = math_reward("\\boxed{\\dfrac{2}{4}}", "\\frac{1}{2}")  # a fresh pool works

    thread = threading.Thread(target=worker)
    thread.start()
    thread.join(120)
    assert not thread.is_alive()
    assert out["half"] == 1.0 and out["third"] == 0.0 and out["after_kill"] == 1.0
    assert 2.0 <= out["timeout_after"] < 10.0


@pytest.mark.parametrize(
    ("response", "answer", "reward"),
    [
        ("\\boxed{\\frac{1}{\\sqrt{2}}}", "\\frac{\\sqrt{2}}{2}", 1.0),
        ("\\boxed{\\left( 3, \\frac{\\pi}{2} \\right)}", "(3, \\pi/2)", 1.0),
        ("\\boxed{x^2+2x}", "2x+x^2", 1.0),
        ("\\boxed{28,080}", "28080", 1.0),
        ("\\boxed{2\\sqrt{2}}", "$2\\sqrt{2}$", 1.0),  # gold with $ delimiters
        ("\\boxed{[-\\frac{1}{4}, 0) \\cup (0, 2)}", "$[-\\frac{1}{4}, 0) \\cup (0, 2)$", 1.0),
        ("\\boxed{[-\\frac{1}{4}, 0] \\cup (0, 2)}", "[-\\frac{1}{4}, 0) \\cup (0, 2)", 0.0),
        ("\\boxed{\\sqrt{3}}", "\\sqrt{2}", 0.0),
        ("\\boxed{}", "1", 0.0),
        ("\\boxed{\\frac{1}{", "\\frac{1}{2}", 0.0),
    ],
)
def test_math_reward_forms(response: str, answer: str, reward: float) -> None:
    assert math_reward(response, answer) == reward


def test_lenient_reward_takes_the_last_number_only_without_a_box() -> None:
    """``make demo``'s arithmetic reward: a tiny model's '... so 4 + 1 = 5.' scores; a boxed
    answer still decides when there is one."""
    row = load_math("arithmetic", limit=1)[0]
    answer = row["answer"]
    assert math_reward(f"Adding them gives {answer}.", answer, lenient=True) == 1.0
    assert math_reward(f"Adding them gives {answer}.", answer) == 0.0  # boxed-only
    assert math_reward(f"\\boxed{{{int(answer) + 1}}} or maybe {answer}", answer, lenient=True) == 0.0
    assert math_reward("no number here", answer, lenient=True) == 0.0


def test_math_reward_off_the_main_thread() -> None:
    """math-verify's SIGALRM timeout is main-thread only; other threads must still get scores."""
    scores: list[float] = []
    worker = threading.Thread(target=lambda: scores.extend(
        [math_reward("\\boxed{\\dfrac{2}{4}}", "\\frac{1}{2}"), math_reward("\\boxed{3}", "4")]))
    worker.start()
    worker.join(timeout=60)
    assert scores == [1.0, 0.0]


def test_gsm_symbolic_answer_scores() -> None:
    row = load_math("gsm_symbolic", limit=1)[0]
    assert math_reward(f"Total: \\boxed{{{row['answer']}}}", row["label"]) == 1.0
    assert math_reward(f"Total: \\boxed{{{int(row['answer']) + 1}}}", row["label"]) == 0.0


def test_code_reward_canonical_and_wrong(humaneval: dict) -> None:
    for task_id in ("HumanEval/0", "HumanEval/32", "HumanEval/163"):
        row = humaneval[task_id]
        assert code_reward(row["canonical_solution"], row) == 1.0, task_id  # body continuation
        assert code_reward(row["canonical_solution"], row["label"]) == 1.0, task_id  # label JSON
    row = humaneval["HumanEval/0"]
    fenced = f"Here it is:\n```python\n{row['question']}{row['canonical_solution']}```\nDone."
    assert code_reward(fenced, row) == 1.0
    wrong = "```python\ndef has_close_elements(numbers, threshold):\n    return False\n```"
    assert code_reward(wrong, row) == 0.0
    assert code_reward("    return not_defined_anywhere\n", row) == 0.0
    assert code_reward("```python\ndef has_close_elements(:\n```", row) == 0.0  # syntax error
    hang = "```python\ndef has_close_elements(numbers, threshold):\n    while True:\n        pass\n```"
    assert code_reward(hang, row, limits=dataclasses.replace(CODE_LIMITS, wall_time_s=1.0)) == 0.0


def test_extract_code_and_program(humaneval: dict) -> None:
    assert extract_code("a\n```python\nx = 1\n```\nb\n```py\ny = 2\n```") == "y = 2\n"
    assert extract_code("no fences") == "no fences"
    row = humaneval["HumanEval/0"]
    program = build_program("    return True\n", row)
    assert program.startswith(row["question"] + "    return True\n")
    assert program.rstrip().endswith("check(has_close_elements)")


def test_code_reward_from_many_threads(humaneval: dict) -> None:
    """Trainers score a batch concurrently; every run gets its own sandbox and the right score."""
    rows = [humaneval[f"HumanEval/{i}"] for i in range(8)]
    jobs = [(row["canonical_solution"], row, 1.0) for row in rows] + [("    return None\n", row, 0.0) for row in rows]
    with ThreadPoolExecutor(max_workers=4) as pool:
        scores = list(pool.map(lambda job: code_reward(job[0], job[1]), jobs))
    assert scores == [expected for _, _, expected in jobs]
