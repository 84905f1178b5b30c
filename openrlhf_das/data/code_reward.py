"""Reward for code answers: run HumanEval's unit tests against a completion in the sandbox."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping

from .sandbox import SandboxLimits, run_python

# HumanEval's tests take well under a second; the wall limit covers sandbox start-up too.
CODE_LIMITS = SandboxLimits(wall_time_s=6.0, memory_bytes=1 << 30)
_FENCE = re.compile(r"```[ \t]*(?:python3?|py)?[ \t]*\n(.*?)```", re.DOTALL | re.IGNORECASE)


def extract_code(completion: str) -> str:
    """Content of the last fenced code block of ``completion``, or all of it when it has none."""
    blocks = _FENCE.findall(completion)
    return blocks[-1] if blocks else completion


def build_program(completion: str, problem: Mapping[str, str]) -> str:
    """The test program for ``completion``: stub, code, HumanEval ``test``, ``check(entry_point)``.

    A completion that defines ``entry_point`` itself follows the stub (so the stub's imports and
    helper functions stay, and the new definition replaces the stub's); anything else is taken
    as the continuation of the stub's function body, HumanEval's native format.
    """
    code = extract_code(completion)
    entry_point = problem["entry_point"]
    defines_entry = re.search(rf"^def\s+{re.escape(entry_point)}\s*\(", code, re.MULTILINE)
    solution = problem["question"] + ("\n\n" + code if defines_entry else code)
    return f"{solution}\n\n{problem['test']}\n\ncheck({entry_point})\n"


def code_reward(
    completion: str,
    problem: Mapping[str, str] | str,
    *,
    limits: SandboxLimits = CODE_LIMITS,
    allow_network_fallback: bool = False,
) -> float:
    """1.0 if ``completion`` passes the problem's HumanEval tests in the sandbox, else 0.0.

    Args:
        completion: model output: a fenced code block with the whole function, or a bare
            continuation of the function body.
        problem: a ``load_code`` row (keys ``question``, ``entry_point``, ``test``) or its
            ``label`` JSON string.
        limits: sandbox limits; failing, crashing, timing out or exceeding memory scores 0.0.
        allow_network_fallback: see :func:`openrlhf_das.data.sandbox.run_python`.

    Raises:
        SandboxUnavailableError: no isolation here and the fallback was not allowed.
    """
    spec = json.loads(problem) if isinstance(problem, str) else problem
    result = run_python(build_program(completion, spec), limits, allow_network_fallback=allow_network_fallback)
    return 1.0 if result.passed else 0.0
