"""``FinishedRollout``: what the rollout side sends the history actor for each response.

Plain data only (ids as strings, token ids as int32 arrays, numbers), so it crosses Ray
without custom classes on the other side: :meth:`FinishedRollout.from_dict` accepts the dict
form ``{"problem_id", "prompt_tokens", "response_token_ids", "step", "response_length"?,
"reward"?, "policy_version"?}`` that a trainer hook can build without importing this package.

The history keeps responses only; of a prompt only its length is recorded, so the rollout side
sends ``prompt_tokens`` (a count), not the prompt's tokens. (A ``prompt_token_ids`` array is still
accepted and counted.)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np

from ..drafter.suffix_tree import as_tokens


@dataclass(frozen=True)
class FinishedRollout:
    """One finished response of RL step ``step``.

    ``response_token_ids`` are the generated tokens only (int32, EOS included if emitted);
    ``response_length`` (tokens) is their number; ``prompt_tokens`` the prompt's length. ``reward`` is None when not known yet;
    ``policy_version`` is the weight version that generated it (None = unknown; with partial
    rollouts a response may span versions: pass the newest).
    """

    problem_id: str
    prompt_tokens: int
    response_token_ids: np.ndarray
    step: int
    reward: float | None = None
    policy_version: int | None = None

    @property
    def response_length(self) -> int:
        return int(self.response_token_ids.size)

    @classmethod
    def make(
        cls,
        problem_id: str,
        prompt_tokens: int,
        response_token_ids: Sequence[int] | np.ndarray,
        step: int,
        reward: float | None = None,
        policy_version: int | None = None,
    ) -> "FinishedRollout":
        """Validating constructor (token ids → contiguous int32; step, prompt_tokens >= 0)."""
        if not isinstance(problem_id, str) or not problem_id:
            raise ValueError(f"problem_id must be a non-empty string, got {problem_id!r}")
        if int(step) < 0:
            raise ValueError(f"step must be >= 0, got {step}")
        if int(prompt_tokens) < 0:
            raise ValueError(f"prompt_tokens must be >= 0, got {prompt_tokens}")
        return cls(
            problem_id,
            int(prompt_tokens),
            as_tokens(response_token_ids),
            int(step),
            None if reward is None else float(reward),
            None if policy_version is None else int(policy_version),
        )

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "FinishedRollout":
        """From the plain dict form; ``response_length``, if given, must match the tokens."""
        prompt = d.get("prompt_tokens")
        if prompt is None:
            prompt = len(d.get("prompt_token_ids", ()))
        r = cls.make(
            d["problem_id"],
            prompt,
            d["response_token_ids"],
            d["step"],
            d.get("reward"),
            d.get("policy_version"),
        )
        n = d.get("response_length")
        if n is not None and int(n) != r.response_length:
            raise ValueError(
                f"rollout of {r.problem_id!r}: response_length {n} != {r.response_length} response tokens"
            )
        return r


def coerce_rollouts(items: Sequence[FinishedRollout | Mapping[str, Any]]) -> list[FinishedRollout]:
    """``FinishedRollout``s from a mix of instances and dicts (validated)."""
    return [r if isinstance(r, FinishedRollout) else FinishedRollout.from_dict(r) for r in items]
