"""benchmarks/epochs.py, the repeated-epoch rollout driver of ``benchmarks/engine_rollouts.py``
(moved out of the package, issue 23): its long-tail timeline on a real CPU engine, its progress
hook, and the tensor-parallel stats comparison it records."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from vllm import SamplingParams

from engine_fixtures import random_prompts, running_llm, tiny_model

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from epochs import Problem, _finish_recorder, ranks_agree, run_epochs  # noqa: E402

VOCAB = 256


@pytest.fixture(scope="module")
def prompts() -> list[list[int]]:
    return random_prompts(24, 16, VOCAB, seed=6)


@pytest.mark.engine
def test_run_epochs_records_the_long_tail_timeline(prompts):
    """``run_epochs(timeline=True)``: one finish time per request, in order, within the epoch;
    requests of different lengths finish at different times (EOS at T = 1 ends some early)."""
    problems = [Problem(f"p{i}", p) for i, p in enumerate(prompts[:8])]
    params = SamplingParams(temperature=1.0, max_tokens=160, seed=3)
    with running_llm(tiny_model(VOCAB)) as llm:
        results = run_epochs(llm, problems, 2, params, 2, das=False, timeline=True)
    for res in results:
        done = res.finish_seconds
        assert len(done) == res.requests == 16
        assert done == sorted(done) and 0 < done[0] and done[-1] <= res.seconds
        assert res.summary()["finish_seconds"] == [round(t, 4) for t in done]
        assert res.summary()["response_lengths"] == res.response_lengths
        assert sum(res.response_lengths) == res.output_tokens
    lengths = [n for r in results for n in r.response_lengths]
    assert min(lengths) < max(lengths)  # a real tail: not every request ran to max_tokens


def test_finish_recorder_counts_only_the_request_bar() -> None:
    """vLLM passes its ``use_tqdm`` callable two kinds of bars: bars over an iterable (rendering
    or adding requests: ``tqdm_func(prompts, desc=...)``) and the finished-request bar
    (``tqdm_func(total=N, ...)`` + ``update``). Only the latter are finished requests."""
    import time

    finished: list[float] = []
    make = _finish_recorder(time.perf_counter(), finished)
    for _ in make(list(range(50)), desc="Adding requests", mininterval=0, miniters=1):
        pass
    bar = make(total=5, desc="Processed prompts")
    for _ in range(5):
        bar.update(1)
    bar.close()
    assert len(finished) == 5 and finished == sorted(finished)


def test_ranks_agree_ignores_wall_time_only():
    """Tensor-parallel ranks agree when only wall times differ (``engine_rollouts.py`` records it)."""
    rank = {"propose_seconds": 0.5, "last_snapshot_seconds": 0.01, "snapshot_incremental": 2, "steps": 3,
            "acceptance": {"total": {"drafted": 8, "accepted": 5}}}
    assert ranks_agree([rank, {**rank, "propose_seconds": 0.7, "last_snapshot_seconds": 0.02}])
    assert not ranks_agree([rank, {**rank, "snapshot_incremental": 1}])
    assert not ranks_agree([rank, {**rank, "acceptance": {"total": {"drafted": 8, "accepted": 4}}}])
    assert not ranks_agree([rank, {**rank, "steps": 4}])
