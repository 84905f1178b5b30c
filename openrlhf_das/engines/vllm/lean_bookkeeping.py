"""Cheaper host bookkeeping of vLLM's ``ngram_gpu`` runner path in DAS async engines
(``lean_bookkeeping``, on by default).

DAS's async engines (``das_async``, ``das_gpu``) run vLLM's ``ngram_gpu`` path of the V1 model
runner. Two of its per-request loops run on the host at every drafted step, and a drafted tail
step is host-bound (docs/gpu.md, run 8: 5.0 ms per drafted step against 2.6 ms without
speculation, the device busy 2.9 ms of it):

* **the deferred correction** of optimistic acceptance (the closure ``_update_states`` returns,
  called right after the forward is launched): for every request that did not accept all its
  drafts it corrects ``input_batch.num_tokens_no_spec[row]`` on the host and
  ``num_tokens_no_spec_gpu[row]`` with two tensor operations on the device — two kernel
  launches and three dispatcher calls per request per drafted step. :func:`corrections` runs the
  same closure with ``num_tokens_no_spec_gpu`` bound to a host scratch array, so the per-request
  updates are numpy stores, then writes the corrected host lengths of all the batch's rows to the
  device with one copy. Equivalent: at that point the device lengths equal the host lengths (vLLM
  copies every active row's host length to the device in ``_update_states``,
  ``update_ngram_gpu_tensors_incremental``) except for the rows the closure corrects, which it
  corrects on both sides by the same amount.
* **the draft trim** (``update_scheduler_for_invalid_drafts``, called in ``_update_states``)
  reads each request's valid-draft count with ``counts[row].item()`` on a CPU tensor (an
  indexing and an ``item`` dispatch per request). The patched call hands it a numpy view of the
  same buffer (``counts[row].item()`` works on numpy scalars alike); only for buffers a DAS
  engine registered (:func:`register_counts`), so stock ``ngram_gpu`` engines are untouched.

* **the per-step length sync** (``update_ngram_gpu_tensors_incremental``, called in
  ``_update_states`` at every step, drafted or gated): it lists the batch's rows, copies them to
  the device, walks every request to find moved rows, then copies every row's host length to the
  device with an ``index_copy_``: Python work per request and two transfers at every step (about
  1 ms per step at 1,024 requests on the H100 host, docs/gpu.md run 9's host profile). In a step
  without a new request whose rows are ``0..n-1`` (every decode step but those after an arrival),
  :func:`_lean_sync` finds the moved requests with a set difference of the two index maps and
  does the same moves and one length copy through vLLM's own pinned staging buffer; a step with a
  new request runs vLLM's function. Only for length buffers a DAS engine registered
  (:func:`register_lengths`).

Outputs unchanged (only where lengths are written from); the engine tests compare drafts,
acceptance and outputs with the switch on and off (``tests/test_engine_lean_bookkeeping.py``).

Written against the V1 runner of vLLM 0.26-0.29 (the same code in both). Guarded
(:mod:`openrlhf_das.versions`, optional feature ``lean_bookkeeping``): outside the tested
versions, or when ``update_scheduler_for_invalid_drafts`` is missing from the runner's module,
:func:`install` patches nothing; a runner or batch attribute that cannot be read at a step
switches the feature off and that step runs vLLM's own closure.
"""

from __future__ import annotations

import functools
import logging
import weakref
from typing import Any, Callable

import numpy as np
import torch

from ... import versions

logger = logging.getLogger(__name__)

FEATURE = "lean_bookkeeping"
_MARK = "_das_lean_bookkeeping"
_SCRATCH = "_das_lengths_scratch"
_COUNTS: dict[int, tuple["weakref.ref[torch.Tensor]", Callable[[], bool]]] = {}
"""id -> (weak reference, switch) of the valid-draft count buffers of DAS engines."""
_LENGTHS: dict[int, tuple["weakref.ref[torch.Tensor]", Callable[[], bool], list[int]]] = {}
"""id -> (weak reference, switch, [lean syncs]) of the device length buffers of DAS engines."""


def register_counts(counts: torch.Tensor, on: Callable[[], bool]) -> None:
    """Let the draft trim read ``counts`` (a runner's ``_num_valid_draft_tokens_cpu``, a CPU
    tensor) as numpy while ``on()`` (the engine's ``lean_bookkeeping`` setting) is true. A buffer
    that is not a CPU tensor (another vLLM) is not registered: the trim reads it as vLLM does."""
    if isinstance(counts, torch.Tensor) and counts.device.type == "cpu":
        _COUNTS[id(counts)] = (weakref.ref(counts), on)


def _switched_on(registry: dict[int, tuple], buffer: Any) -> bool:
    """``buffer`` is registered in ``registry`` (the same object, not a reused id), its engine's
    switch is on and the feature is enabled."""
    entry = registry.get(id(buffer))
    return entry is not None and entry[0]() is buffer and entry[1]() and versions.enabled(FEATURE)


def _lean(counts: Any) -> bool:
    return _switched_on(_COUNTS, counts)


def register_lengths(lengths: torch.Tensor, on: Callable[[], bool]) -> None:
    """Let the per-step length sync take its lean form (:func:`_lean_sync`) for ``lengths`` (a
    runner's ``num_tokens_no_spec_gpu``) while ``on()`` is true."""
    if isinstance(lengths, torch.Tensor):
        _LENGTHS[id(lengths)] = (weakref.ref(lengths), on, [0])


def lean_syncs(lengths: torch.Tensor) -> int:
    """Steps whose length sync took the lean form (no new request), for ``lengths`` (0 if
    unregistered)."""
    entry = _LENGTHS.get(id(lengths))
    return entry[2][0] if entry is not None and entry[0]() is lengths else 0


def _lean_sync(input_batch: Any, token_ids_gpu_tensor: Any, num_tokens_no_spec_gpu: torch.Tensor, new_reqs: Any,
                 staging: torch.Tensor) -> bool:
    """If this step has no new request and its rows are ``0..n-1``, do what vLLM's incremental
    update does then — move the token rows of requests whose row changed since the previous step
    (a finished request's row is refilled by ``condense``), then ``num_tokens_no_spec_gpu[:n] =
    num_tokens_no_spec[:n]`` (through vLLM's pinned staging buffer) — and return True; else change
    nothing and return False. The moved requests come from a set difference of the two index
    maps (C speed) instead of vLLM's walk over every request; moves have distinct sources and
    destinations, so their order does not matter."""
    if new_reqs:
        return False
    curr = input_batch.req_id_to_index
    prev = input_batch.prev_req_id_to_index
    if not curr or prev is None:
        return False
    n = len(curr)
    if max(curr.values()) != n - 1 or n > len(staging):  # distinct rows: exactly 0..n-1
        return False
    src, dst = [], []
    if prev != curr:
        for req_id, row in curr.items() - prev.items():
            before = prev.get(req_id)
            if before is not None:  # a request absent before is not moved (vLLM: a new one)
                src.append(before)
                dst.append(row)
    if src:  # as vLLM moves them
        from vllm.utils.torch_utils import async_tensor_h2d

        device = num_tokens_no_spec_gpu.device
        src_t = async_tensor_h2d(src, dtype=torch.long, device=device)
        dst_t = async_tensor_h2d(dst, dtype=torch.long, device=device)
        token_ids_gpu_tensor[dst_t] = token_ids_gpu_tensor[src_t].clone()
        num_tokens_no_spec_gpu[dst_t] = num_tokens_no_spec_gpu[src_t].clone()
    vals = staging[:n]
    vals.copy_(input_batch.num_tokens_no_spec_cpu_tensor[:n])
    num_tokens_no_spec_gpu[:n].copy_(vals, non_blocking=True)
    return True


def _wrap_sync(orig: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(orig)
    def update_ngram_gpu_tensors_incremental(input_batch: Any, token_ids_gpu_tensor: Any, num_tokens_no_spec_gpu: Any,
                                             new_reqs: Any, device: Any, *args: Any, **kwargs: Any) -> Any:
        staging = kwargs.get("_pinned_val_buf")
        if (staging is not None and not args and _switched_on(_LENGTHS, num_tokens_no_spec_gpu)
                and versions.probe(FEATURE, lambda: _lean_sync(input_batch, token_ids_gpu_tensor,
                                                               num_tokens_no_spec_gpu, new_reqs, staging), False)):
            _LENGTHS[id(num_tokens_no_spec_gpu)][2][0] += 1
            return None
        return orig(input_batch, token_ids_gpu_tensor, num_tokens_no_spec_gpu, new_reqs, device, *args, **kwargs)

    setattr(update_ngram_gpu_tensors_incremental, _MARK, True)
    return update_ngram_gpu_tensors_incremental


def _wrap_trim(orig: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(orig)
    def update_scheduler_for_invalid_drafts(event: Any, counts: Any, *args: Any, **kwargs: Any) -> Any:
        if _lean(counts):
            counts = counts.numpy()  # a view: the same values, numpy-speed per-row reads
        return orig(event, counts, *args, **kwargs)

    setattr(update_scheduler_for_invalid_drafts, _MARK, True)
    return update_scheduler_for_invalid_drafts


def corrections(runner: Any, fn: Callable[[], None]) -> Callable[[], None]:
    """``fn`` (vLLM's deferred correction closure of ``runner``) with its device length updates
    batched into one copy (module docstring)."""

    def read() -> tuple[torch.Tensor, np.ndarray, np.ndarray, int]:
        gpu = runner.num_tokens_no_spec_gpu
        scratch = getattr(runner, _SCRATCH, None)
        if scratch is None or len(scratch) != len(gpu):
            scratch = np.zeros(len(gpu), dtype=np.int64)
            setattr(runner, _SCRATCH, scratch)
        batch = runner.input_batch
        return gpu, scratch, batch.num_tokens_no_spec, int(batch.num_reqs)

    def correct_spec_decode_token_counts() -> None:
        state = versions.probe(FEATURE, read, None) if versions.enabled(FEATURE) else None
        if state is None:
            fn()
            return
        gpu, scratch, host, n = state  # the closure changes lengths, not the batch's rows
        runner.num_tokens_no_spec_gpu = scratch  # the closure's per-row device updates land here
        try:
            fn()
        finally:
            runner.num_tokens_no_spec_gpu = gpu
        if n:
            lengths = torch.from_numpy(np.ascontiguousarray(host[:n], dtype=np.int32))
            if gpu.is_cuda:
                lengths = lengths.pin_memory()  # the caching host allocator keeps it until the copy ran
            gpu[:n].copy_(lengths, non_blocking=True)

    setattr(correct_spec_decode_token_counts, _MARK, True)
    return correct_spec_decode_token_counts


def install(runner_module: Any = None) -> bool:
    """Patch the runner module's ``update_scheduler_for_invalid_drafts`` and
    ``update_ngram_gpu_tensors_incremental`` (idempotent). Returns True if it patched; False when
    already patched or the feature is off (untested vLLM, or a function is missing: switched off
    with one warning)."""
    return bool(versions.optional_patch(FEATURE, _install, runner_module))


def _install(runner_module: Any) -> bool:
    if runner_module is None:
        from vllm.v1.worker import gpu_model_runner as runner_module
    current = runner_module.update_scheduler_for_invalid_drafts  # AttributeError: feature off
    sync = runner_module.update_ngram_gpu_tensors_incremental
    if getattr(current, _MARK, False):
        return False
    runner_module.update_scheduler_for_invalid_drafts = _wrap_trim(current)
    runner_module.update_ngram_gpu_tensors_incremental = _wrap_sync(sync)
    return True
