"""Engine settings from openrlhf_das.engines.vllm.factory (no engine is started)."""

from __future__ import annotations

import json
import os

import pytest
from vllm import SamplingParams

from openrlhf_das.config import DASConfig
from openrlhf_das.engines.vllm import engine_kwargs, speculative_config, with_das_metadata
from openrlhf_das.integrations.openrlhf.settings import DAS_CONFIG_ENV


def test_speculative_config_uses_largest_budget_and_no_stock_cache() -> None:
    cfg = DASConfig().with_overrides({"budgets.long.tokens": 6})
    spec = speculative_config(cfg)
    assert spec["method"] == "suffix" and spec["num_speculative_tokens"] == 6
    assert spec["suffix_decoding_max_cached_requests"] == 0
    with pytest.raises(ValueError, match="every DAS budget is 0"):
        speculative_config(cfg.with_overrides({"budgets.medium.tokens": 0, "budgets.long.tokens": 0}))


def test_async_scheduling_selects_the_gpu_contract_method() -> None:
    spec = speculative_config(DASConfig().with_overrides({"async_scheduling": True, "budgets.long.tokens": 6}))
    assert spec == {"method": "ngram_gpu", "num_speculative_tokens": 6}


def test_engine_kwargs_carry_config_in_additional_config_and_cuda_graph_mode_pads(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(DAS_CONFIG_ENV, raising=False)
    env_before = dict(os.environ)
    plain = engine_kwargs(DASConfig(), extra_additional_config={"other": 1})
    assert "compilation_config" not in plain
    assert plain["additional_config"] == {"other": 1, "das": DASConfig().to_dict()}
    json.dumps(plain["additional_config"])  # vLLM hashes it as JSON (VllmConfig.compute_hash)
    graphs = engine_kwargs(DASConfig(), cuda_graphs=True)
    assert graphs["compilation_config"]["cudagraph_mode"] == "FULL_DECODE_ONLY"
    assert graphs["additional_config"]["das"]["pad_drafts"] is True
    assert dict(os.environ) == env_before  # engine_kwargs changes no process state


def test_with_das_metadata_copies_and_validates() -> None:
    base = SamplingParams(temperature=1.0, extra_args={"other": 1})
    sp = with_das_metadata(base, "p1", "long")
    assert sp.extra_args == {"other": 1, "das": {"problem_id": "p1", "length_class": "long"}}
    assert base.extra_args == {"other": 1}  # the shared object is never mutated
    with pytest.raises(ValueError):
        with_das_metadata(base, "p1", "huge")
