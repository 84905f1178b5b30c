"""OpenRLHF reward function (``--reward.remote_url <this file>``): math answers.

``reward_func(queries, prompts, labels)`` → 1.0 per sample whose last ``\\boxed{...}`` equals the
label mathematically (``openrlhf_das.data.math_reward``: exact text, else math-verify), else 0.0.
Labels are gold answers (the ``label`` field written by ``openrlhf_das.integrations.openrlhf.
data_recipes``). OpenRLHF calls it from a worker thread, where math-verify's SIGALRM timeout is
unavailable (see ``math_reward``).
"""

from __future__ import annotations

from typing import Any, List

import torch

from openrlhf_das.data.math_reward import math_reward
from openrlhf_das.integrations.openrlhf.reward_funcs._common import response_text


def reward_func(queries: List[str], prompts: List[str], labels: List[str], **kwargs: Any) -> dict:
    rewards = [math_reward(response_text(q, p), str(label)) for q, p, label in zip(queries, prompts, labels)]
    t = torch.tensor(rewards, dtype=torch.float)
    return {"rewards": t, "scores": t, "extra_logs": {"math_accuracy": t.mean() if len(rewards) else torch.tensor(0.0)}}
