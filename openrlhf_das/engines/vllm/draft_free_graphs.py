"""Full CUDA graphs for the draft-free steps of a speculating engine (vLLM V1 model runner).

With speculation on, vLLM's full decode graphs (``cudagraph_mode`` FULL_DECODE_ONLY or
FULL_AND_PIECEWISE) cover only uniform decode steps of exactly 1 + k query tokens per request.
A step in which *no* request has a draft (DAS's batch gate is closed, or nothing matched) has
one token per request; vLLM counts it as non-uniform and runs it eager — several times slower
per step than the same step of a no-speculation engine, which replays a graph. Without this
module the only way to stay on graphs is to pad every draft to k (``pad_drafts``), so even a
gated step verifies k filler tokens per request.

:func:`install` adds the graphs a no-speculation engine has: FULL keys for decode steps of one
token per request, captured with vLLM's own and dispatched for such steps. DAS then leaves a
step that drafts nothing undrafted and pays what no speculation pays (``stats()["plain_steps"]``).

Invariant: a key added here has ``num_reqs == num_tokens`` (one per capture size up to
``max_num_seqs``); vLLM's (1 + k)-token keys have ``num_reqs = num_tokens / (1 + k)``, so the
two never collide. While a 1-token step is dispatched or captured, the runner's and the
dispatcher's ``uniform_decode_query_len`` read 1 (restored after); nothing else changes.

Installed by the plugin in engine processes with a DAS config whose ``draft_free_graphs`` is
on. A no-op for engines without full decode graphs (eager, CPU, PIECEWISE-only), without
speculation, or with LoRA. Written against the V1 model runner of vLLM 0.26-0.29 (same code in
both); attention-only models (hybrid Mamba/GDN layers build speculative metadata per step and
are not covered).
"""

from __future__ import annotations

import functools
import inspect
import logging
from contextlib import contextmanager
from typing import Any, Iterator

logger = logging.getLogger(__name__)

KEYS_ATTR = "_das_draft_free_keys"
"""Dispatcher attribute: the frozenset of BatchDescriptors added by :func:`install`."""

_MARK = "_das_draft_free"


def draft_free_keys(dispatcher: Any) -> frozenset:
    """The 1-token-per-request decode keys added to ``dispatcher`` (empty if none)."""
    return getattr(dispatcher, KEYS_ATTR, frozenset())


@contextmanager
def _one_token_steps(*objs: Any) -> Iterator[None]:
    """Make ``objs`` (runner, dispatcher) see a uniform decode query length of 1."""
    old = [o.uniform_decode_query_len for o in objs]
    for o in objs:
        o.uniform_decode_query_len = 1
    try:
        yield
    finally:
        for o, v in zip(objs, old):
            o.uniform_decode_query_len = v


def _wrap_initialize_keys(orig: Any) -> Any:
    from vllm.config import CUDAGraphMode

    @functools.wraps(orig)
    def initialize_cudagraph_keys(self: Any, cudagraph_mode: Any, uniform_decode_query_len: int = 1) -> None:
        orig(self, cudagraph_mode, uniform_decode_query_len)
        keys: set = set()
        if (
            uniform_decode_query_len > 1
            and cudagraph_mode.decode_mode() == CUDAGraphMode.FULL
            and cudagraph_mode.separate_routine()
            and self.vllm_config.lora_config is None
        ):
            max_seqs = self.vllm_config.scheduler_config.max_num_seqs
            with _one_token_steps(self):
                for size in self.compilation_config.cudagraph_capture_sizes or []:
                    if size <= max_seqs:
                        desc = self._create_padded_batch_descriptor(size, True, False, 0)
                        self.add_cudagraph_key(CUDAGraphMode.FULL, desc)
                        keys.add(desc)
            logger.info("DAS: %d full CUDA graphs for draft-free decode steps (up to %d requests)",
                        len(keys), max((d.num_reqs for d in keys), default=0))
        setattr(self, KEYS_ATTR, frozenset(keys))

    setattr(initialize_cudagraph_keys, _MARK, True)
    return initialize_cudagraph_keys


def _wrap_determine(orig: Any) -> Any:
    sig = inspect.signature(orig)

    @functools.wraps(orig)
    def determine(self: Any, *args: Any, **kwargs: Any) -> Any:
        dispatcher = self.cudagraph_dispatcher
        if draft_free_keys(dispatcher) and self.uniform_decode_query_len > 1:
            a = sig.bind(self, *args, **kwargs).arguments
            if (
                a.get("force_uniform_decode") is None
                and a["max_num_scheduled_tokens"] == 1
                and a["num_tokens"] == a["num_reqs"]
            ):
                with _one_token_steps(self, dispatcher):
                    return orig(self, *args, **kwargs)
        return orig(self, *args, **kwargs)

    setattr(determine, _MARK, True)
    return determine


def _wrap_capture(orig: Any) -> Any:
    @functools.wraps(orig)
    def warmup_and_capture(self: Any, desc: Any, *args: Any, **kwargs: Any) -> Any:
        dispatcher = self.cudagraph_dispatcher
        if desc in draft_free_keys(dispatcher):
            with _one_token_steps(self, dispatcher):
                return orig(self, desc, *args, **kwargs)
        return orig(self, desc, *args, **kwargs)

    setattr(warmup_and_capture, _MARK, True)
    return warmup_and_capture


_PATCHES = {
    "dispatcher": {"initialize_cudagraph_keys": _wrap_initialize_keys},
    "runner": {"_determine_batch_execution_and_padding": _wrap_determine, "_warmup_and_capture": _wrap_capture},
}


def install(dispatcher_cls: Any = None, runner_cls: Any = None) -> bool:
    """Patch ``dispatcher_cls`` (default vLLM's ``CudagraphDispatcher``) and ``runner_cls``
    (default ``GPUModelRunner``). Idempotent; returns True if something was patched."""
    if dispatcher_cls is None:
        from vllm.v1.cudagraph_dispatcher import CudagraphDispatcher as dispatcher_cls
    if runner_cls is None:
        from vllm.v1.worker.gpu_model_runner import GPUModelRunner as runner_cls
    patched = False
    for cls, names in ((dispatcher_cls, _PATCHES["dispatcher"]), (runner_cls, _PATCHES["runner"])):
        for name, wrap in names.items():
            current = getattr(cls, name)
            if not getattr(current, _MARK, False):
                setattr(cls, name, wrap(current))
                patched = True
    return patched
