"""The ``vllm.general_plugins`` entry point of openrlhf-das.

vLLM calls :func:`register` in every process it starts (API process, engine core, workers)
before the model runner module is imported there; it must be idempotent. It rebinds
``SuffixDecodingProposer`` to :class:`DASProposer` in vLLM's suffix-decoding module (and in the
model-runner module if something imported it already), so ``method: "suffix"`` builds a DAS
proposer. Without a DAS config the proposer delegates to the stock implementation, so having
the package installed changes nothing for plain vLLM users.
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

    from .proposer import DASProposer

    suffix_mod.SuffixDecodingProposer = DASProposer
    runner_mod = sys.modules.get(_RUNNER_MODULE)
    if runner_mod is not None:
        runner_mod.SuffixDecodingProposer = DASProposer
