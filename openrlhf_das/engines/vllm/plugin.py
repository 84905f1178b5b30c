"""The ``vllm.general_plugins`` entry point of openrlhf-das.

vLLM calls :func:`register` in every process it starts (API process, engine core, workers);
it must be idempotent. It rebinds ``SuffixDecodingProposer`` to :class:`DASProposer` where the
model runner looks it up, and hooks the model runner's constructor so the proposer can read
per-request ``SamplingParams.extra_args``. Without a DAS config the proposer delegates to the
stock implementation, so installing the package changes nothing for plain vLLM users.
"""

from __future__ import annotations

import functools
import logging

logger = logging.getLogger(__name__)

_registered = False


def register() -> None:
    global _registered
    if _registered:
        return
    _registered = True
    try:
        import vllm.v1.spec_decode.suffix_decoding as suffix_mod
        import vllm.v1.worker.gpu_model_runner as runner_mod
    except ImportError as exc:  # pragma: no cover - vLLM without the V1 suffix proposer
        logger.warning("openrlhf-das: vLLM V1 suffix proposer not found (%s); DAS disabled", exc)
        return

    from .proposer import DASProposer

    suffix_mod.SuffixDecodingProposer = DASProposer
    runner_mod.SuffixDecodingProposer = DASProposer
    original_init = runner_mod.GPUModelRunner.__init__
    if getattr(original_init, "_das_hooked", False):
        return

    @functools.wraps(original_init)
    def init_with_das(self, *args, **kwargs):
        original_init(self, *args, **kwargs)
        drafter = getattr(self, "drafter", None)
        if isinstance(drafter, DASProposer):
            drafter.runner = self

    init_with_das._das_hooked = True  # type: ignore[attr-defined]
    runner_mod.GPUModelRunner.__init__ = init_with_das
