"""Reward-function files for OpenRLHF's ``--reward.remote_url <file.py>``.

OpenRLHF 0.11.2 (``SingleTurnAgentExecutor``) loads a ``.py`` given as ``--reward.remote_url``
with ``importlib`` and calls its ``reward_func(queries, prompts, labels)`` once per sample, in a
thread (``asyncio.to_thread``): ``queries`` = decoded prompt + response (special tokens kept),
``prompts`` = the prompt text, ``labels`` = the dataset's ``--data.label_key`` value. It returns
``{"rewards": tensor, "scores": tensor, "extra_logs": {name: tensor}}``.

* :data:`MATH` – ``math_reward_func.py``: 1.0 if the last ``\\boxed{}`` matches the label
  (``openrlhf_das.data.math_reward``, math-verify).
* :data:`ARITHMETIC` – ``arithmetic_reward_func.py``: the same, but a response without a
  ``\boxed{}`` is judged by its last number (``make demo``'s ``arithmetic`` set, tiny models).
* :data:`CODE` – ``code_reward_func.py``: 1.0 if the completion passes the HumanEval tests of
  the label in the namespace sandbox (``openrlhf_das.data.code_reward``).

Scripts get the paths with ``python -m openrlhf_das.integrations.openrlhf.reward_funcs math``.
"""

from __future__ import annotations

from pathlib import Path

_HERE = Path(__file__).resolve().parent
MATH = str(_HERE / "math_reward_func.py")
ARITHMETIC = str(_HERE / "arithmetic_reward_func.py")
CODE = str(_HERE / "code_reward_func.py")
PATHS = {"math": MATH, "arithmetic": ARITHMETIC, "code": CODE}
