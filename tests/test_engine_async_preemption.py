"""Preemption under async scheduling with the DAS async proposer (``async_scheduling: true``).

The recipe of ``test_engine_preemption.py``: a KV cache of 20 blocks of 128 tokens for 16
requests that each grow to two blocks (16-token prompts + 200 tokens) makes vLLM preempt and
recompute requests. vLLM's ngram_gpu path copies a resumed request's tokens back into the GPU
history; the DAS proposer's host copy of a request's context must then follow (it is refetched
when its length no longer lines up). Greedy outputs must equal plain decoding, and drafts must
still be accepted. Own module: an in-process engine must not overlap another one.
"""

from __future__ import annotations

import numpy as np
import pytest
from vllm import SamplingParams

from engine_fixtures import corrupt, das_stats, load_history, random_prompts, running_llm, tiny_model, token_ids
from openrlhf_das.config import DASConfig
from openrlhf_das.engines.vllm.factory import with_das_metadata

pytestmark = pytest.mark.engine

VOCAB = 256
N = 16
KV_BLOCKS = 20
PIDS = [f"p{i}" for i in range(N)]


@pytest.mark.parametrize("drafter", ["host", "device"])
def test_preempted_requests_stay_lossless_and_keep_drafting(drafter: str) -> None:
    """``host``: the DAS async proposer; ``device``: the device drafter (``das_gpu``), whose rows
    are matched to requests again after the batch changes and whose token buffer rows vLLM
    refills for resumed requests."""
    prompts = [{"prompt_token_ids": p} for p in random_prompts(N, 16, VOCAB, seed=4)]
    sp = SamplingParams(temperature=0.0, max_tokens=200, ignore_eos=True)
    with running_llm(tiny_model(VOCAB), max_model_len=256) as llm:
        base = token_ids(llm.generate(prompts, sp, use_tqdm=False))
    over = {"async_scheduling": True}
    if drafter == "device":
        over["device_drafter"] = {"enabled": True, "history_capacity": 1 << 14, "live_capacity": 1 << 12}
    config = DASConfig().with_overrides(over)
    with running_llm(tiny_model(VOCAB), das=config, async_cpu=True, max_model_len=256,
                     num_gpu_blocks_override=KV_BLOCKS) as llm:
        load_history(llm, PIDS, corrupt(base, every=12, vocab_size=VOCAB, seed=2))
        outs = token_ids(llm.generate(prompts, [with_das_metadata(sp, pid, "long") for pid in PIDS], use_tqdm=False))
        st = das_stats(llm)
    total = st["acceptance"]["total"]
    print(f"resumed {st['resumed_requests']}, context fetches {st['context_fetches']}, acceptance {total}")
    assert st["resumed_requests"] > 0  # the small KV cache did preempt
    drafted = st["device_drafted_steps"] if drafter == "device" else st["async_drafted_steps"]
    assert st["engine_faults"] == 0 and drafted > 0 and total["accepted"] > 0
    assert [i for i, (a, b) in enumerate(zip(base, outs)) if a != b] == []
    assert np.mean([len(o) for o in outs]) == 200
