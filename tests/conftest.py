"""Fixtures shared by the engine test modules that roll out the shortest MATH-500 prompts on
SmolLM2-135M-Instruct (float32): ``model`` and ``problems``, sized by the module's
``NUM_PROMPTS``. A module that defines fixtures of these names uses its own."""

from __future__ import annotations

import pytest

from engine_fixtures import shortest_math_prompts, smollm2_fp32


@pytest.fixture(scope="module")
def model() -> str:
    return smollm2_fp32()


@pytest.fixture(scope="module")
def problems(request, model) -> tuple[list[str], list[list[int]]]:
    """(problem ids, prompt token ids) of the module's ``NUM_PROMPTS`` shortest prompts."""
    return shortest_math_prompts(model, request.module.NUM_PROMPTS)
