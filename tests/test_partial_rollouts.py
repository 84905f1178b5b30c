"""Partial rollouts (``--das.partial_rollout``): what DAS does with a resumed request.

The product path (``openrlhf_das/integrations/openrlhf/partial.py`` + the DAS rollout actor in
``integrations/openrlhf/engines.py``) resubmits a cut sample as ``prompt + tokens so far`` with
``max_tokens`` reduced and ``with_das_metadata(params, problem_id, class,
generated_offset=tokens so far)``; the OpenRLHF-level behaviour (cut/resume identity, weight
versions, budget, carried groups) is tested through OpenRLHF and Ray in
``tests/test_openrlhf_partial.py`` and ``tests/test_partial_budget.py``. Here, on a real
in-process CPU engine (tiny random Llama, float32, greedy):

* ``generated_offset`` makes a resumed request promote at its total generated length
  (speculator, proposer metadata, and in the engine);
* a resubmission built that way continues the uninterrupted greedy output token for token.
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from openrlhf_das.config import DASConfig, LengthClass
from openrlhf_das.speculator import DASSpeculator, StepRequest

VOCAB = 256
N_PROBLEMS = 4
PROMPT_LEN = 16
MAX_TOKENS = 48
CONFIG = DASConfig()


@pytest.fixture(scope="module")
def engine():
    from vllm import SamplingParams

    from engine_fixtures import random_prompts, running_llm, tiny_model, token_ids

    prompts = random_prompts(N_PROBLEMS, PROMPT_LEN, VOCAB, seed=11)
    params = SamplingParams(temperature=0.0, max_tokens=MAX_TOKENS)
    with running_llm(tiny_model(VOCAB), das=CONFIG, max_num_seqs=8) as llm:
        # the uninterrupted reference (same engine, same weights)
        ref = token_ids(llm.generate([{"prompt_token_ids": p} for p in prompts], params, use_tqdm=False))
        yield SimpleNamespace(llm=llm, prompts=prompts, params=params, ref=ref)


# ---------------------------------------------------------------------------------- (d)
def test_generated_offset_promotes_at_total_length():
    cfg = DASConfig(promote_medium_tokens=10, promote_long_tokens=20)
    spec = DASSpeculator(cfg)
    prompt = list(range(2, 10))
    toks = np.array(prompt + [5] * 4, np.int32)  # 4 tokens generated in this segment

    def cls(offset):
        return spec.class_of(StepRequest("r", toks, len(prompt), "p", LengthClass.SHORT, 0, offset))

    assert cls(0) is LengthClass.SHORT
    assert cls(6) is LengthClass.SHORT  # 10 total: not above the threshold
    assert cls(7) is LengthClass.MEDIUM  # 11 total
    assert cls(17) is LengthClass.LONG  # 21 total
    assert StepRequest("r", toks, len(prompt), generated_offset=17).generated == 21


def test_proposer_reads_generated_offset():
    from vllm import SamplingParams

    from openrlhf_das.engines.vllm.factory import with_das_metadata
    from openrlhf_das.engines.vllm.proposer import DASProposer

    base = SamplingParams(max_tokens=8)
    reqs = {
        "a": with_das_metadata(base, "p", "short", generated_offset=37),
        "b": with_das_metadata(base, "q"),
        "c": SamplingParams(max_tokens=8, extra_args={"das": {"problem_id": "r", "generated_offset": "x"}}),
    }
    prop = DASProposer.__new__(DASProposer)
    prop.runner = SimpleNamespace(requests={k: SimpleNamespace(sampling_params=v) for k, v in reqs.items()})
    prop._meta = {}
    prop.bad_metadata = 0
    assert reqs["a"].extra_args["das"] == {"problem_id": "p", "length_class": "short", "generated_offset": 37}
    assert "generated_offset" not in reqs["b"].extra_args["das"]
    assert prop._meta_of("a") == ("p", LengthClass.SHORT, 37)
    assert prop._meta_of("b") == ("q", None, 0)
    assert prop._meta_of("c") == (None, None, 0) and prop.bad_metadata == 1


@pytest.mark.engine
def test_resumed_request_promotes_at_total_length_in_engine(engine):
    """In the engine: short-class samples resubmitted the way the DAS rollout actor resubmits a
    cut sample (prompt + its first n > promote_medium_tokens tokens, ``max_tokens`` reduced,
    ``generated_offset=n``) are medium from the first decode step, and continue the uninterrupted
    greedy output. The same resubmission without the offset restarts at 0 generated tokens and
    stays short (so the offset, not the prompt length, is what promotes)."""
    from engine_fixtures import inproc_drafter, token_ids
    from openrlhf_das.engines.vllm.factory import with_das_metadata

    llm = engine.llm
    spec = inproc_drafter(llm).speculator
    # absolute thresholds only (no run limit, no problem quantile, no tail rule): the class then
    # depends on the generated length alone, which is what the offset must carry
    llm.collective_rpc("das_update_config", args=({"promote_medium_tokens": 12, "promote_long_tokens": 1000,
                                                   "promotion.tail_running": 0,
                                                   "promotion.history_quantile": None},))
    first: dict[str, tuple[int, int, LengthClass]] = {}
    orig = spec.class_of

    def spy(req, *args, **kwargs):
        c = orig(req, *args, **kwargs)
        first.setdefault(req.request_id, (req.generated, req.generated_offset, c))
        return c

    cut_at = [13 + i for i in range(N_PROBLEMS)]

    def resubmit(with_offset: bool) -> list[list[int]]:
        prompts, params = [], []
        for i, (prompt, n) in enumerate(zip(engine.prompts, cut_at)):
            sp = engine.params.clone()
            sp.max_tokens = MAX_TOKENS - n
            prompts.append({"prompt_token_ids": prompt + engine.ref[i][:n]})
            params.append(with_das_metadata(sp, f"p{i}", "short", generated_offset=n if with_offset else 0))
        return token_ids(llm.generate(prompts, params, use_tqdm=False))

    try:
        spec.class_of = spy
        resumed = resubmit(with_offset=True)
        with_offset = dict(first)
        first.clear()
        resubmit(with_offset=False)
        without_offset = dict(first)
    finally:
        spec.__dict__.pop("class_of", None)
        llm.collective_rpc("das_update_config", args=({"promote_medium_tokens": CONFIG.promote_medium_tokens,
                                                        "promote_long_tokens": CONFIG.promote_long_tokens,
                                                        "promotion.tail_running": CONFIG.promotion.tail_running,
                                                        "promotion.history_quantile":
                                                            CONFIG.promotion.history_quantile},))
    assert len(with_offset) == len(without_offset) == N_PROBLEMS
    for generated, offset, c in with_offset.values():
        assert offset in cut_at and generated >= offset > 12
        assert c is LengthClass.MEDIUM
    for generated, offset, c in without_offset.values():
        assert offset == 0 and generated <= 12
        assert c is LengthClass.SHORT
    for i, n in enumerate(cut_at):
        assert engine.ref[i][:n] + resumed[i] == engine.ref[i]
