"""OpenRLHF reward function (``--reward.remote_url <this file>``): code, run in the sandbox.

``reward_func(queries, prompts, labels)`` → 1.0 per sample whose completion passes its HumanEval
unit tests, else 0.0. Labels are the JSON specs ``{"question", "entry_point", "test"}`` written by
``openrlhf_das.integrations.openrlhf.data_recipes`` for the ``code`` recipe. Generated code runs
only inside ``openrlhf_das.data.sandbox`` (no network, read-only host, limits); this file refuses
to load where the sandbox cannot isolate (no Linux namespaces) unless
``OPENRLHF_DAS_UNSAFE_CODE_REWARD=1`` (then programs run with rlimits only: trusted setups only).
"""

from __future__ import annotations

import os
from typing import Any, List

import torch

from openrlhf_das.data.code_reward import code_reward
from openrlhf_das.data.sandbox import isolation_available
from openrlhf_das.integrations.openrlhf.reward_funcs._common import response_text

_UNSAFE = os.environ.get("OPENRLHF_DAS_UNSAFE_CODE_REWARD") == "1"
if not _UNSAFE and not isolation_available():
    raise RuntimeError(
        "code_reward_func: the sandbox cannot isolate generated code on this machine (Linux namespaces "
        "unavailable). Run where they are (root or unprivileged user namespaces), or set "
        "OPENRLHF_DAS_UNSAFE_CODE_REWARD=1 to run it without network/filesystem isolation."
    )


def reward_func(queries: List[str], prompts: List[str], labels: List[str], **kwargs: Any) -> dict:
    rewards = [
        code_reward(response_text(q, p), str(label), allow_network_fallback=_UNSAFE)
        for q, p, label in zip(queries, prompts, labels)
    ]
    t = torch.tensor(rewards, dtype=torch.float)
    return {"rewards": t, "scores": t, "extra_logs": {"code_pass": t.mean() if len(rewards) else torch.tensor(0.0)}}
