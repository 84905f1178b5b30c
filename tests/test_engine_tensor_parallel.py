"""A tensor-parallel (TP = 2) DAS engine: every rank holds its own drafter, fed the same history.

Real vLLM CPU engine with two worker processes (``distributed_executor_backend="mp"``; vLLM's CPU
backend wants one NUMA node per worker, so each is bound to one core with
``VLLM_CPU_OMP_THREADS_BIND``), tiny float32 model, greedy:

* outputs with DAS equal the plain TP = 2 engine's, token for token;
* the history snapshot shipped through ``collective_rpc`` reaches both ranks, and both ranks'
  drafters report the same history, steps, drafts and accepted tokens per length bucket (vLLM
  verifies the output rank's drafts; a rank whose drafter state drifted would show here);
* drafts were both accepted and rejected (the history has one token in eight replaced).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
from vllm import SamplingParams

from engine_fixtures import corrupt, running_llm, snapshot_bytes, token_ids
from openrlhf_das.config import DASConfig
from openrlhf_das.engines.vllm.factory import cpu_threads_bind, with_das_metadata
from openrlhf_das.models.tiny import build_tiny_model

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from epochs import ranks_agree  # noqa: E402  benchmarks/epochs.py: what engine_rollouts.py records

pytestmark = pytest.mark.engine

VOCAB = 256
CONFIG = DASConfig().with_overrides({"length_policy": False, "flat_budget": {"tokens": 4, "factor": 1.0},
                                     "gate.mode": "off"})
PROMPTS = [[(7 * i + 3 * j) % 250 + 2 for j in range(8 + i)] for i in range(6)]
PIDS = [f"p{i}" for i in range(len(PROMPTS))]
TP = dict(in_process=False, tensor_parallel_size=2, distributed_executor_backend="mp")


@pytest.fixture(scope="module")
def tp_env(tmp_path_factory):
    bind = cpu_threads_bind(2)
    if bind is None:
        pytest.skip("TP = 2 on vLLM's CPU backend needs two cores (one per worker)")
    saved = os.environ.get("VLLM_CPU_OMP_THREADS_BIND")
    os.environ["VLLM_CPU_OMP_THREADS_BIND"] = bind
    yield str(build_tiny_model(tmp_path_factory.mktemp("tiny"), vocab_size=VOCAB))
    if saved is None:
        os.environ.pop("VLLM_CPU_OMP_THREADS_BIND", None)
    else:
        os.environ["VLLM_CPU_OMP_THREADS_BIND"] = saved


def test_tp2_das_engine_is_lossless_and_ranks_agree(tp_env):
    model = tp_env
    params = SamplingParams(temperature=0.0, max_tokens=64, ignore_eos=True)
    prompts = [{"prompt_token_ids": p} for p in PROMPTS]
    with running_llm(model, **TP) as llm:
        plain = token_ids(llm.generate(prompts, params, use_tqdm=False))

    with running_llm(model, das=CONFIG, **TP) as llm:
        history = corrupt(plain, every=8, vocab_size=VOCAB, seed=0)
        loaded = llm.collective_rpc("das_load_snapshot", args=(snapshot_bytes(PIDS, history), None))
        out = token_ids(llm.generate(prompts, [with_das_metadata(params, pid) for pid in PIDS], use_tqdm=False))
        stats = llm.collective_rpc("das_get_stats")

    assert out == plain
    assert len(loaded) == 2 and loaded[0] == loaded[1] and loaded[0]["problems"] == len(PIDS)
    rank0, rank1 = stats
    assert rank0["faults"] == rank1["faults"] == 0
    for key in ("history", "steps", "acceptance"):
        assert rank0[key] == rank1[key], key
    assert ranks_agree(stats)  # what benchmarks/engine_rollouts.py --tensor-parallel records
    total = rank0["acceptance"]["total"]
    assert 0 < total["accepted"] < total["drafted"]

