"""OpenRLHF reward function (``--reward.remote_url <this file>``): arithmetic answers, lenient.

``reward_func(queries, prompts, labels)`` → 1.0 per sample whose answer equals the label: the last
``\\boxed{...}`` of the response or, when it has none, its last number
(``openrlhf_das.data.math_reward.final_answer(lenient=True)``), else 0.0. For the shipped
``arithmetic`` set of ``make demo``: SmolLM2-135M-Instruct seldom writes ``\\boxed{}`` but often
ends with the right sum, so the reward moves (the boxed-only math reward stays near 0 for it).
"""

from __future__ import annotations

from typing import Any, List

import torch

from openrlhf_das.data.math_reward import math_reward
from openrlhf_das.integrations.openrlhf.reward_funcs._common import response_text


def reward_func(queries: List[str], prompts: List[str], labels: List[str], **kwargs: Any) -> dict:
    rewards = [math_reward(response_text(q, p), str(label), lenient=True) for q, p, label in zip(queries, prompts, labels)]
    t = torch.tensor(rewards, dtype=torch.float)
    return {"rewards": t, "scores": t, "extra_logs": {"math_accuracy": t.mean() if len(rewards) else torch.tensor(0.0)}}
