"""Greedy losslessness of DAS on a real model (issue items 1 and 3, SmolLM2 part).

SmolLM2-135M-Instruct (float32, see ``engine_fixtures.smollm2_fp32``) on the 200 shortest
MATH-500 problems of the shipped dataset, with SmolLM2's chat template, greedy, 48 tokens,
``logprobs=1`` in ``processed_logprobs`` mode (what OpenRLHF sets):

1. a plain engine (no speculation) produces the reference outputs and logprobs;
2. a DAS engine gets a history built from that first pass — with about one token in eight
   replaced, so drafts are mostly right and sometimes wrong, and the verifier has to both accept
   and reject (a verifier that wrongly accepted drafts would copy the planted tokens) — then
   decodes the same prompts with their problem ids.

Both engines run the production path: spawned engine-core and worker processes that load the
plugin themselves and receive the DAS config through the inherited environment.

DAS settings: the batch gate is off (200 requests in flight; the default gate, max_running 64,
would switch drafting off for every step at this batch size), the length policy stays on, so
the snapshot's length ranking gives 40 % of the problems class "short" (budget 0), 40 %
"medium" (2) and 20 % "long" (4): steps mix rows with 0, 2 and 4 drafts.
"""

from __future__ import annotations

import numpy as np
import pytest
from vllm import SamplingParams

from engine_fixtures import (
    chosen_logprobs,
    corrupt,
    das_stats,
    load_history,
    running_llm,
    token_differences,
    token_ids,
)
from openrlhf_das.config import DASConfig
from openrlhf_das.engines.vllm.factory import with_das_metadata

pytestmark = pytest.mark.engine

NUM_PROMPTS = 200
MAX_TOKENS = 48
LOGPROB_TOL = 1e-4  # float32 engine
CONFIG = DASConfig.from_dict({"gate": {"mode": "off"}})
ENGINE = dict(in_process=False, kv_cache_gib=3, max_model_len=1024, logprobs_mode="processed_logprobs")


@pytest.fixture(scope="module")
def params() -> SamplingParams:
    return SamplingParams(temperature=0.0, max_tokens=MAX_TOKENS, logprobs=1)


@pytest.fixture(scope="module")
def plain(model, problems, params):
    _, prompts = problems
    with running_llm(model, **ENGINE) as llm:
        return llm.generate([{"prompt_token_ids": p} for p in prompts], params, use_tqdm=False)


@pytest.fixture(scope="module")
def das(model, problems, params, plain) -> dict:
    pids, prompts = problems
    history = corrupt(token_ids(plain), every=8, vocab_size=49152, seed=0)
    with running_llm(model, das=CONFIG, **ENGINE) as llm:
        hist = load_history(llm, pids, history)
        outs = llm.generate([{"prompt_token_ids": p} for p in prompts],
                            [with_das_metadata(params, pid) for pid in pids], use_tqdm=False)
        stats = das_stats(llm)
    return {"outputs": outs, "stats": stats, "history": hist}


def test_history_loaded(das, problems) -> None:
    assert das["history"]["problems"] == len(problems[0]) == NUM_PROMPTS


def test_greedy_outputs_identical(das, plain) -> None:
    assert len(plain) == NUM_PROMPTS
    assert token_differences(plain, das["outputs"]) == []


def test_drafts_proposed_accepted_and_rejected(das) -> None:
    st = das["stats"]
    total = st["acceptance"]["total"]
    print(f"DAS acceptance: {total}")
    print(f"by class: { {k: (v['drafted'], v['accepted']) for k, v in st['acceptance']['by_class'].items()} }")
    assert total["drafted"] > 0 and total["accepted"] > 0
    assert total["accepted"] < total["drafted"]  # the planted wrong tokens were rejected
    by_class = st["acceptance"]["by_class"]
    assert by_class["short"]["drafted"] == 0  # budget 0
    assert by_class["medium"]["accepted"] > 0 and by_class["long"]["accepted"] > 0
    assert st["faults"] == 0 and st["engine_faults"] == 0 and st["bad_metadata"] == 0


def test_processed_logprobs_match(das, plain) -> None:
    a = np.concatenate([np.array(x) for x in chosen_logprobs(das["outputs"])])
    b = np.concatenate([np.array(x) for x in chosen_logprobs(plain)])
    assert a.shape == b.shape
    diff = float(np.max(np.abs(a - b)))
    print(f"processed logprobs: max |DAS - plain| = {diff:.3g} over {a.size} tokens")
    assert np.all(np.isfinite(a))
    assert diff <= LOGPROB_TOL
