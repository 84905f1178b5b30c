"""Repeated-epoch rollouts through one vLLM engine, the way an RL job produces them (a benchmark
driver: not part of the ``openrlhf_das`` package; import it with ``benchmarks/`` on ``sys.path``).

Each epoch submits every problem × sample request at once (a synchronous RL step), waits for
the last one, and — for a DAS engine — ships the finished responses of the last ``window``
epochs to the engine as a history snapshot before the next epoch, exactly as the Ray history
actor does between steps. Used by ``benchmarks/engine_rollouts.py``.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from openrlhf_das.drafter import HistorySnapshot, Rollout
from openrlhf_das.engines.vllm.factory import with_das_metadata


@dataclass(frozen=True)
class Problem:
    problem_id: str
    prompt_token_ids: list[int]


@dataclass
class EpochResult:
    """One epoch: wall seconds, tokens generated, DAS stats of the epoch (None if not DAS)."""

    epoch: int
    seconds: float
    output_tokens: int
    requests: int
    response_lengths: list[int]
    das_stats: dict[str, Any] | None = None
    ranks_agree: bool | None = None
    """Tensor-parallel engines: whether every rank's DAS stats equal rank 0's (wall times
    aside); None for a single rank or no DAS."""
    finish_seconds: list[float] = field(default_factory=list, repr=False)
    """Seconds from the epoch's start at which each request finished, in finishing order (the
    long-tail timeline: requests still running at t = requests - #finish_seconds <= t). Without
    speculation a request of L tokens finishes at decode step ~L, so sorted lengths paired with
    these times give the engine's step rate at each batch size."""
    digests: list[str] = field(default_factory=list, repr=False)
    """Per request (submission order), the first 12 hex digits of sha1 over its output token
    ids: greedy runs of two modes agree on a request iff its digests are equal."""
    outputs: list[list[int]] = field(default_factory=list, repr=False)
    logprobs: list[list[float]] = field(default_factory=list, repr=False)

    @property
    def tokens_per_second(self) -> float:
        return self.output_tokens / self.seconds if self.seconds > 0 else 0.0

    def summary(self) -> dict[str, Any]:
        return {
            "epoch": self.epoch,
            "seconds": self.seconds,
            "output_tokens": self.output_tokens,
            "requests": self.requests,
            "tokens_per_second": self.tokens_per_second,
            "max_response_length": max(self.response_lengths, default=0),
            "mean_response_length": float(np.mean(self.response_lengths)) if self.response_lengths else 0.0,
            "das": self.das_stats,
            "ranks_agree": self.ranks_agree,
            "finish_seconds": [round(t, 4) for t in self.finish_seconds],
            "response_lengths": self.response_lengths,
            "output_digests": self.digests,
        }


RANK_VARYING_STATS = frozenset({"propose_seconds", "critical_seconds", "last_snapshot_seconds"})
"""``das_get_stats`` keys that legitimately differ between tensor-parallel ranks (wall time)."""


def ranks_agree(per_rank: Sequence[dict[str, Any]]) -> bool:
    """Whether the ``das_get_stats`` of all tensor-parallel ranks agree, wall times aside: each
    rank's drafter holds the same history and drafted and had accepted the same tokens."""
    same = [{k: v for k, v in s.items() if k not in RANK_VARYING_STATS} for s in per_rank]
    return all(s == same[0] for s in same[1:])


def run_epochs(
    llm: Any,
    problems: Sequence[Problem],
    samples_per_problem: int,
    sampling_params: Any,
    epochs: int,
    *,
    das: bool,
    window: int = 5,
    keep_outputs: bool = False,
    use_tqdm: bool = False,
    timeline: bool = False,
    on_epoch: Any = None,
) -> list[EpochResult]:
    """Run ``epochs`` synchronous rollout steps; feed DAS history between them when ``das``.
    ``timeline``: record each request's finish time (``EpochResult.finish_seconds``) through
    vLLM's progress-bar hook (``use_tqdm`` callable; replaces the bar). ``on_epoch(epoch, phase)``:
    called with ``phase`` "start" right before an epoch's requests are submitted and "end" right
    after they finish (``step_profile.py`` opens a profiler window there)."""
    if not problems:
        raise ValueError("no problems to roll out")
    if samples_per_problem < 1 or epochs < 1:
        raise ValueError("samples_per_problem and epochs must be >= 1")
    prompts = [{"prompt_token_ids": p.prompt_token_ids} for p in problems for _ in range(samples_per_problem)]
    owners = [p.problem_id for p in problems for _ in range(samples_per_problem)]
    params = [with_das_metadata(sampling_params, pid) for pid in owners] if das else sampling_params
    history: list[Rollout] = []
    results: list[EpochResult] = []
    seen = {"steps": 0, "gated_steps": 0}  # the engine's step counters are cumulative
    for epoch in range(epochs):
        finished: list[float] = []
        if on_epoch is not None:
            on_epoch(epoch, "start")
        t0 = time.perf_counter()
        outs = llm.generate(prompts, params, use_tqdm=_finish_recorder(t0, finished) if timeline else use_tqdm)
        seconds = time.perf_counter() - t0
        if on_epoch is not None:
            on_epoch(epoch, "end")
        tokens = [list(o.outputs[0].token_ids) for o in outs]
        res = EpochResult(epoch, seconds, sum(map(len, tokens)), len(tokens), [len(t) for t in tokens],
                          finish_seconds=finished, digests=[_digest(t) for t in tokens])
        if keep_outputs:
            res.outputs = tokens
            res.logprobs = [_chosen_logprobs(o.outputs[0]) for o in outs]
        if das:
            per_rank = llm.collective_rpc("das_get_stats", kwargs={"reset": True})
            res.das_stats = dict(per_rank[0])
            for key in seen:  # this epoch's share as epoch_steps / epoch_gated_steps
                res.das_stats[f"epoch_{key}"] = res.das_stats.get(key, 0) - seen[key]
                seen[key] = res.das_stats.get(key, 0)
            res.ranks_agree = ranks_agree(per_rank) if len(per_rank) > 1 else None
            history = [r for r in history if r.step > epoch - window]
            history += [Rollout(pid, epoch, np.asarray(t, np.int32)) for pid, t in zip(owners, tokens)]
            snap = HistorySnapshot.from_rollouts(history, next_step=epoch + 1)
            llm.collective_rpc("das_load_snapshot", args=(snap.to_npz_bytes(),))
        results.append(res)
    return results


def _digest(token_ids: Sequence[int]) -> str:
    return hashlib.sha1(np.asarray(token_ids, dtype=np.int64).tobytes()).hexdigest()[:12]


def _finish_recorder(t0: float, finished: list[float]) -> Any:
    """A ``tqdm`` factory for ``LLM.generate(use_tqdm=...)`` that appends ``perf_counter() - t0``
    to ``finished`` for every request vLLM reports done (and prints nothing). vLLM also wraps its
    request-adding loop in a bar (``tqdm_func(prompts, desc="Adding requests")``), whose updates
    are not finished requests: only the bar made with ``total=`` and no iterable records."""
    import os

    from tqdm import tqdm

    class _Recorder(tqdm):
        def update(self, n: float = 1) -> bool | None:
            now = time.perf_counter() - t0
            finished.extend([now] * int(n))
            return super().update(n)

    def make(*args: Any, **kwargs: Any) -> tqdm:
        kwargs["file"] = open(os.devnull, "w")  # noqa: SIM115 - closed with the bar's process
        return tqdm(*args, **kwargs) if args else _Recorder(*args, **kwargs)

    return make


def _chosen_logprobs(completion: Any) -> list[float]:
    """Logprob of each sampled token (empty when logprobs were not requested)."""
    if not completion.logprobs:
        return []
    return [float(lp[tok].logprob) for tok, lp in zip(completion.token_ids, completion.logprobs)]
