"""Stock behaviour without a DAS config (issue item 6), on a real CPU engine.

The plugin is installed (entry point ``vllm.general_plugins``), so every ``method: "suffix"``
engine gets a ``DASProposer``; started without a DAS config (no ``additional_config["das"]``) it
must be vLLM's own suffix decoding: stock drafts, outputs identical to plain decoding, no DAS state.

In-process engines (``VLLM_ENABLE_V1_MULTIPROCESSING=0``) so the test can look at the proposer
object itself; the spawned-process path is covered by ``test_engine_lossless.py``.
"""

from __future__ import annotations

import pytest
from vllm import SamplingParams
from vllm.v1.spec_decode.suffix_decoding import SuffixDecodingProposer

from engine_fixtures import inproc_drafter, random_prompts, running_llm, tiny_model, token_ids
from openrlhf_das.engines.vllm.factory import with_das_metadata
from openrlhf_das.engines.vllm.proposer import DASProposer

pytestmark = pytest.mark.engine

VOCAB = 256
MAX_TOKENS = 96
# vLLM's own suffix settings (stock global response cache on), not DAS's engine_kwargs.
STOCK = {"method": "suffix", "num_speculative_tokens": 4}


@pytest.fixture(scope="module")
def prompts() -> list[list[int]]:
    return random_prompts(24, 16, VOCAB, seed=6)


@pytest.fixture(scope="module")
def params() -> SamplingParams:
    return SamplingParams(temperature=0.0, max_tokens=MAX_TOKENS, ignore_eos=True)


@pytest.fixture(scope="module")
def baseline(prompts, params) -> list[list[int]]:
    with running_llm(tiny_model(VOCAB)) as llm:
        return token_ids(llm.generate([{"prompt_token_ids": p} for p in prompts], params, use_tqdm=False))


@pytest.fixture(scope="module")
def stock(prompts, params, baseline):
    """Two passes on one stock-suffix engine: the second one can draft from the first's
    responses (vLLM's global response cache), the way stock suffix decoding is used.
    ``start_llm`` starts it without ``additional_config["das"]``."""
    with running_llm(tiny_model(VOCAB), stock_suffix=STOCK,
                     per_request_spec_decode_metrics="summary") as llm:
        drafter = inproc_drafter(llm)
        reqs = [{"prompt_token_ids": p} for p in prompts]
        first = llm.generate(reqs, params, use_tqdm=False)
        # DAS metadata on a stock engine is simply ignored
        second = llm.generate(reqs, [with_das_metadata(params, f"p{i}", "long") for i in range(len(prompts))],
                              use_tqdm=False)
        stats = llm.collective_rpc("das_get_stats")
        with pytest.raises(Exception, match="DAS is not enabled"):
            llm.collective_rpc("das_load_snapshot", args=(b"", None))
        after_error = token_ids(llm.generate(reqs[:2], params, use_tqdm=False))
        yield {
            "drafter": drafter,
            "first": first,
            "second": second,
            "stats": stats,
            "after_error": after_error,
        }


def test_plugin_installed_but_stock(stock) -> None:
    drafter = stock["drafter"]
    assert isinstance(drafter, DASProposer)  # the plugin rebound the class
    assert isinstance(drafter, SuffixDecodingProposer)
    assert drafter.das_config is None and drafter.speculator is None
    # a stock engine reports DAS off, and no patch of this process was switched off (version gate)
    assert stock["stats"] == [{"enabled": False, "disabled_features": {}}]


def test_stock_outputs_identical_to_plain(stock, baseline) -> None:
    assert token_ids(stock["first"]) == baseline
    assert token_ids(stock["second"]) == baseline
    assert stock["after_error"] == baseline[:2]  # a refused RPC leaves the engine working


def test_stock_suffix_really_drafts(stock) -> None:
    # vLLM's per-request spec-decode metrics: the stock proposer proposed and got acceptances
    drafted = sum(o.outputs[0].spec_decode_metrics.num_draft_tokens for o in stock["second"])
    accepted = sum(
        j * c for o in stock["second"] for j, c in enumerate(o.outputs[0].spec_decode_metrics.histogram)
    )
    print(f"stock suffix (2nd pass): drafted={drafted} accepted={accepted}")
    assert drafted > 0 and accepted > 0
    # the stock proposer's own state is in use (its per-request trees / global cache)
    assert stock["drafter"].suffix_cache.cached_requests

