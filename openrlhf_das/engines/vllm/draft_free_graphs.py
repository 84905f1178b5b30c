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
``max_num_seqs``, and ``max_num_seqs`` itself: :func:`one_token_sizes`); vLLM's (1 + k)-token
keys have ``num_reqs = num_tokens / (1 + k)``, so the two never collide. While a 1-token step is
dispatched or captured, the runner's and the dispatcher's ``uniform_decode_query_len`` read 1
and the dispatcher pads to the 1-token sizes (both restored after); nothing else changes.

Installed by the DAS proposer's constructor (inside the model runner's, before the keys are set
up and the graphs captured) when its config has ``draft_free_graphs`` on and the engine has full
decode graphs. Adds nothing to engines without them (eager, CPU, PIECEWISE-only), without
speculation, or with LoRA. Written against the V1 model runner of vLLM 0.26-0.29 (same code in
both); attention-only models (hybrid Mamba/GDN layers build speculative metadata per step and
are not covered).

Guarded (:mod:`openrlhf_das.versions`, optional feature ``draft_free_graphs``): outside the
tested versions, or when a patched method is missing, :func:`install` patches nothing. Every
private attribute and argument read at key set-up, dispatch and capture goes through
``versions.probe``: a rename (e.g. of the ``max_num_scheduled_tokens`` argument or
``_bs_to_padded_graph_size``) switches the feature off for the process and the step takes
vLLM's own path (it then runs eager, as without this module); :func:`draft_free_keys` is empty
from then on, so the proposer pads every step again.
"""

from __future__ import annotations

import functools
import inspect
import logging
from contextlib import contextmanager
from typing import Any, Iterator

from ... import versions

logger = logging.getLogger(__name__)

KEYS_ATTR = "_das_draft_free_keys"
"""Dispatcher attribute: the frozenset of BatchDescriptors added by :func:`install`."""

PAD_ATTR = "_das_draft_free_padding"
"""Dispatcher attribute: request count -> padded 1-token step size (list indexed by count)."""

_MARK = "_das_draft_free"
FEATURE = "draft_free_graphs"


def draft_free_keys(dispatcher: Any) -> frozenset:
    """The 1-token-per-request decode keys added to ``dispatcher`` (empty if none, or once the
    feature is switched off)."""
    if not versions.enabled(FEATURE):
        return frozenset()
    return getattr(dispatcher, KEYS_ATTR, frozenset())


def _saved_state(objs: tuple[Any, ...]) -> list[tuple[Any, str, Any, Any]]:
    """(object, attribute, current value, 1-token value) for :func:`_one_token_steps`; reads
    every private attribute first (raises on a rename before anything is changed)."""
    saved = [(o, "uniform_decode_query_len", o.uniform_decode_query_len, 1) for o in objs]
    saved += [(o, "_bs_to_padded_graph_size", o._bs_to_padded_graph_size, getattr(o, PAD_ATTR))
              for o in objs if hasattr(o, PAD_ATTR)]
    return saved


@contextmanager
def _one_token_steps(*objs: Any) -> Iterator[bool]:
    """Make ``objs`` (runner, dispatcher) see a uniform decode query length of 1, and the
    dispatcher pad to the 1-token step sizes; yields False (changing nothing) when their
    attributes cannot be read (feature switched off)."""
    saved = versions.probe(FEATURE, lambda: _saved_state(objs), None)
    if saved is None:
        yield False
        return
    for o, name, _, value in saved:
        setattr(o, name, value)
    try:
        yield True
    finally:
        for o, name, old, _ in saved:
            setattr(o, name, old)


def one_token_sizes(capture_sizes: list[int], max_num_seqs: int, max_capture_size: int) -> list[int]:
    """Sizes (= requests) of the 1-token step graphs: vLLM's capture sizes that fit
    ``max_num_seqs``, plus ``max_num_seqs`` itself when within ``max_capture_size``. vLLM rounds
    the capture sizes to multiples of 1 + k, and a padded step may not have more requests than
    ``max_num_seqs``: without the extra size, a step of all ``max_num_seqs`` requests (e.g. 1024
    when 1025 is the next multiple of 5) would run eager."""
    sizes = {s for s in capture_sizes if s <= max_num_seqs}
    if max_num_seqs <= max_capture_size:
        sizes.add(max_num_seqs)
    return sorted(sizes)


def default_capture_sizes(max_capture_size: int) -> list[int]:
    """vLLM's capture sizes (tokens) for a given ``max_cudagraph_capture_size`` (0.26-0.29): 1, 2,
    4, multiples of 8 below 256, then multiples of 16 up to the maximum (which vLLM then truncates
    to the largest of them)."""
    m = max_capture_size
    return [s for s in (1, 2, 4) if s <= m] + list(range(8, min(m + 1, 256), 8)) + list(range(256, m + 1, 16))


def _graph_max_tokens(max_capture_size: int, query_len: int) -> int:
    """The widest step (tokens) with a graph on an engine that speculates ``query_len - 1`` tokens:
    vLLM rounds each capture size up to a multiple of ``query_len`` and drops those above the
    (truncated) maximum."""
    sizes = default_capture_sizes(max_capture_size)
    top = sizes[-1] if sizes else 0
    return max((r for r in (-(-s // query_len) * query_len for s in sizes) if r <= top), default=0)


def covering_capture_size(tokens: int, query_len: int) -> int:
    """The smallest ``max_cudagraph_capture_size`` with which an engine that speculates
    ``query_len - 1`` tokens has graphs for decode steps of ``tokens`` tokens: ``tokens`` requests
    at one token each (draft-free steps), or ``tokens // query_len`` requests padded to
    ``query_len`` each.

    vLLM truncates the maximum to its largest default capture size
    (:func:`default_capture_sizes`), rounds every size up to a multiple of ``query_len``, drops
    those above the maximum, and dispatches no step wider than the largest one left to a graph.
    So 1024 one-token requests at k = 4 need 1040 (1024 leaves 1010: steps of 1011-1024 requests
    ran eager), 256 need 272 (256 leaves 250). ``query_len`` 1: the smallest default size >= ``tokens``."""
    size = max(tokens, 1)
    while size not in default_capture_sizes(size) or _graph_max_tokens(size, query_len) < tokens:
        size += 1
    return size


def _padding_table(sizes: list[int], max_capture_size: int) -> list[int]:
    """Request count n (0..max_capture_size) -> the smallest size >= n, or n when none is."""
    table, j = [], 0
    for n in range(max_capture_size + 1):
        while j < len(sizes) and sizes[j] < n:
            j += 1
        table.append(sizes[j] if j < len(sizes) else n)
    return table


def _wrap_initialize_keys(orig: Any) -> Any:
    from vllm.config import CUDAGraphMode

    def wanted(self: Any, cudagraph_mode: Any, uniform_decode_query_len: int) -> bool:
        return (
            uniform_decode_query_len > 1
            and cudagraph_mode.decode_mode() == CUDAGraphMode.FULL
            and cudagraph_mode.separate_routine()
            and self.vllm_config.lora_config is None
        )

    def descriptors(self: Any) -> list[Any]:
        """The 1-token keys (nothing added yet); raises on a renamed attribute."""
        max_size = self.compilation_config.max_cudagraph_capture_size
        sizes = one_token_sizes(self.compilation_config.cudagraph_capture_sizes or [],
                                self.vllm_config.scheduler_config.max_num_seqs, max_size)
        setattr(self, PAD_ATTR, _padding_table(sizes, max_size))
        with _one_token_steps(self) as entered:
            if not entered:
                raise AttributeError("the dispatcher's uniform decode length or padding table")
            return [self._create_padded_batch_descriptor(size, True, False, 0) for size in sizes]

    @functools.wraps(orig)
    def initialize_cudagraph_keys(self: Any, cudagraph_mode: Any, uniform_decode_query_len: int = 1) -> None:
        orig(self, cudagraph_mode, uniform_decode_query_len)
        keys: set = set()
        if versions.probe(FEATURE, lambda: wanted(self, cudagraph_mode, uniform_decode_query_len), False):
            for desc in versions.probe(FEATURE, lambda: descriptors(self), []):
                self.add_cudagraph_key(CUDAGraphMode.FULL, desc)
                keys.add(desc)
            if keys:
                logger.info("DAS: %d full CUDA graphs for draft-free decode steps (up to %d requests)",
                            len(keys), max((d.num_reqs for d in keys), default=0))
        setattr(self, KEYS_ATTR, frozenset(keys))

    setattr(initialize_cudagraph_keys, _MARK, True)
    return initialize_cudagraph_keys


def _wrap_determine(orig: Any) -> Any:
    sig = inspect.signature(orig)

    def one_token_step(self: Any, args: tuple, kwargs: dict) -> Any:
        """The dispatcher if this is a draft-free 1-token decode step with keys, else None."""
        dispatcher = self.cudagraph_dispatcher
        if not draft_free_keys(dispatcher) or self.uniform_decode_query_len <= 1:
            return None
        a = sig.bind(self, *args, **kwargs).arguments
        one = (a.get("force_uniform_decode") is None and a["max_num_scheduled_tokens"] == 1
               and a["num_tokens"] == a["num_reqs"])
        return dispatcher if one else None

    @functools.wraps(orig)
    def determine(self: Any, *args: Any, **kwargs: Any) -> Any:
        dispatcher = versions.probe(FEATURE, lambda: one_token_step(self, args, kwargs), None)
        if dispatcher is not None:
            with _one_token_steps(self, dispatcher):
                return orig(self, *args, **kwargs)
        return orig(self, *args, **kwargs)

    setattr(determine, _MARK, True)
    return determine


def _wrap_capture(orig: Any) -> Any:
    @functools.wraps(orig)
    def warmup_and_capture(self: Any, desc: Any, *args: Any, **kwargs: Any) -> Any:
        dispatcher = versions.probe(FEATURE, lambda: self.cudagraph_dispatcher, None)
        if dispatcher is not None and desc in draft_free_keys(dispatcher):
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
    (default ``GPUModelRunner``). Idempotent; returns True if something was patched; False also
    when the feature is off (untested vLLM, or a patched or called method is missing: then
    nothing is patched and the feature is switched off)."""
    return bool(versions.optional_patch(FEATURE, _install, dispatcher_cls, runner_cls))


_CALLED = {"dispatcher": ("_create_padded_batch_descriptor", "add_cudagraph_key")}
"""Methods the patched code calls (checked with the patched ones before anything is patched)."""


def _install(dispatcher_cls: Any, runner_cls: Any) -> bool:
    if dispatcher_cls is None:
        from vllm.v1.cudagraph_dispatcher import CudagraphDispatcher as dispatcher_cls
    if runner_cls is None:
        from vllm.v1.worker.gpu_model_runner import GPUModelRunner as runner_cls
    from vllm.config import CUDAGraphMode  # noqa: F401 - the key set-up needs it

    for cls, names in ((dispatcher_cls, [*_PATCHES["dispatcher"], *_CALLED["dispatcher"]]),
                       (runner_cls, list(_PATCHES["runner"]))):
        for name in names:
            getattr(cls, name)  # AttributeError before anything is patched
    patched = False
    for cls, names in ((dispatcher_cls, _PATCHES["dispatcher"]), (runner_cls, _PATCHES["runner"])):
        for name, wrap in names.items():
            current = getattr(cls, name)
            if not getattr(current, _MARK, False):
                setattr(cls, name, wrap(current))
                patched = True
    return patched
