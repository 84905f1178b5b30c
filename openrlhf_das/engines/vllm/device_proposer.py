"""``DASDeviceProposer``: DAS drafting on the GPU under vLLM's async scheduling (mode ``das_gpu``).

:class:`~.async_proposer.DASAsyncProposer` keeps async scheduling but drafts on the host, so a
drafted step waits for step N's tokens to reach the host (a synchronous round trip per drafted
step; docs/gpu.md, run 5b). This subclass (chosen by ``device_drafter.enabled``) drafts where the
tokens are: :class:`openrlhf_das.device.DeviceDrafter` reads the runner's GPU token buffer and
writes the draft tensor on the device. Per engine step (``propose``, end of step N):

* **drafting step** (the batch gate and vLLM's scheduler give step N + 1 draft slots): one
  device step, replayed from a CUDA graph of the batch's size bucket
  (:class:`~openrlhf_das.device.graphs.BucketGraphs`), appends step N's sampled tokens to the
  token buffer, drafts for every row, records acceptance of the previous drafts per length
  bucket and class on the device, and pads every row's draft to the count the host announces
  (``pad_drafts``: with the row's last token, verified like any draft). The host writes those
  counts into the runner's ``_num_valid_draft_tokens_cpu`` itself, from lengths it already
  knows, and hands vLLM no device counts: vLLM then has nothing to copy back and step N + 1
  starts without waiting for the GPU. Without padding (eager engines, CPU) the counts go the
  stock ``ngram_gpu`` way (device tensor, copied back by vLLM).
* **gated step** (no draft slots): only the append, also from a graph; host counts 0, and no
  Python work per row (the rows are matched to requests afresh when drafting resumes; the verify
  result of the last drafted step before the gate closes goes uncounted).

* **token preparation** (vLLM's ``update_token_ids_ngram``, called by the runner right before
  ``propose`` at every step, drafted or gated: the next input token and valid-sample count of
  each row, about 16 eager tensor operations): with ``lean_bookkeeping`` this class computes the
  same tensors in one graph replay per step (:meth:`update_token_ids_ngram`; graphs per batch
  bucket, sampled width 1 or 1 + k and output parity — outputs alternate between two buffers
  because vLLM reads them in the next step and on a copy stream), writing the valid sampled tokens
  and counts straight into the device step's inputs, so ``propose`` copies nothing in.

Host work per step is O(1) Python plus numpy over the rows; per-row metadata (problem slot,
class, budgets) is rebuilt only when the batch changes, and written with two host-to-device copies
(its integer fields packed in one tensor); a batch change carries the rows' pending-draft state
(packed likewise) with one gather. Classes follow the length policy of
``DASSpeculator.class_of`` (``policy/promotion.py``: promotion relative to each request's
``max_tokens`` and its problem's past lengths, the tail rule), vectorized over the rows and
refreshed every ``live_interval`` drafting steps; padded engines give every row ``fill_budget``
anyway. Online tuning (``tuning.mode: aimd``) is not mirrored on the device. Live sibling text is appended every
``device_drafter.live_interval`` steps. The history (``das_load_snapshot``) is loaded into the
device indexes, not into host trees. Acceptance counts live on the device and are folded into
the speculator's tracker when stats are read (between steps).

Lossless as every DAS mode: vLLM's rejection sampler verifies each draft token.
"""

from __future__ import annotations

import functools
import logging
import time
from typing import Any

import numpy as np
import torch

from ...config import LengthClass
from ...drafter import HistorySnapshot
from ...policy.acceptance import Counts
from ...policy.promotion import (NO_THRESHOLD, is_tail_step, problem_threshold, promoted_rank, run_thresholds,
                                tail_floor)
from .async_proposer import DASAsyncProposer

logger = logging.getLogger(__name__)

_CLASSES = (LengthClass.SHORT, LengthClass.MEDIUM, LengthClass.LONG)
_STAT_COLS = 4  # drafted, accepted, verify_steps, decode_steps (policy.acceptance.Counts)


FEATURE = "device_drafter"
RUNNER_ATTRS = ("token_ids_gpu_tensor", "num_tokens_no_spec_gpu", "input_batch", "requests",
                "_num_valid_draft_tokens_cpu")
"""vLLM model-runner attributes the device proposer reads (vLLM 0.26 GPU / 0.29 CPU builds)."""
BATCH_ATTRS = ("req_ids", "num_tokens_no_spec", "num_prompt_tokens")


def device_drafter_usable() -> bool:
    """Whether the device drafter can be built here: vLLM within the tested versions and
    ``suffix-gpu`` importable at a tested version. Otherwise the feature is switched off (one
    warning, ``das_get_stats()["disabled_features"]``) and the engine drafts on the host
    (:class:`DASAsyncProposer`), as ``async_scheduling`` alone does."""
    from ... import versions

    if not versions.optional(FEATURE, "vllm", "suffix-gpu"):  # installed and tested (versions.TESTED)
        return False
    try:
        import suffix_gpu  # noqa: F401
    except ImportError as exc:
        versions.disable(FEATURE, f"suffix-gpu is not importable ({exc})")
        return False
    return True


class DASDeviceProposer(DASAsyncProposer):
    """See the module docstring. Built by :class:`DASAsyncProposer` when the DAS config has
    ``device_drafter.enabled``."""

    def __init__(self, vllm_config: Any, device: torch.device, runner: Any = None) -> None:
        super().__init__(vllm_config, device, runner)
        from ...device import BucketGraphs, DeviceDrafter, DeviceDrafterSettings, bucket_sizes

        c = self.das_config
        dc = c.device_drafter
        vocab = self._vocab = int(vllm_config.model_config.get_vocab_size())
        self.device_drafter = DeviceDrafter(DeviceDrafterSettings(
            k=self.k, vocab_size=vocab, max_pattern_len=c.pattern_tokens or c.max_depth,
            max_occurrences=dc.max_occurrences, num_backoff=dc.num_backoff, min_token_prob=c.min_token_prob,
            max_spec_offset=c.max_spec_offset, history_capacity=dc.history_capacity,
            live_capacity=dc.live_capacity, use_own=c.use_request_tree, use_problem=c.use_problem_tree,
            use_global=c.use_global_tree and dc.global_index), device)
        m, k, dev = self.max_num_seqs, self.k, device
        i64 = dict(dtype=torch.int64, device=dev)
        # step inputs (rows of the current batch; rows past it are neutralised: count 0)
        self._in_sampled = torch.full((m, k + 1), -1, dtype=torch.int32, device=dev)
        self._in_count = torch.zeros(m, dtype=torch.int32, device=dev)
        # per-row metadata, written at batch changes
        # (integer fields packed in one tensor: one host-to-device copy per metadata write)
        self._row_meta = torch.zeros(4, m, **i64)
        self._row_slot, self._row_budget, self._row_gen_base, self._row_class = self._row_meta.unbind(0)
        self._row_slot.fill_(-1)  # generated tokens = length + _row_gen_base
        self._row_factor = torch.ones(m, dtype=torch.float32, device=dev)
        self._pad_on = torch.zeros((), dtype=torch.bool, device=dev)
        self._pad_on_host: bool | None = None
        # outputs and per-row state carried to the next step
        self._out_len = torch.zeros(m, dtype=torch.int32, device=dev)
        # per row: real draft tokens proposed, considered (0/1), length bucket and class of the
        # pending draft; packed so that a batch change carries all four with one gather
        self._prev_state = torch.zeros(4, m, **i64)
        self._prev_real, self._prev_considered, self._prev_bucket, self._prev_class = self._prev_state.unbind(0)
        edges = torch.tensor(list(c.length_buckets), **i64)
        self._edges = edges
        self._by_bucket = torch.zeros(len(edges) + 1, _STAT_COLS, **i64)
        self._by_class = torch.zeros(len(_CLASSES), _STAT_COLS, **i64)
        # host mirrors
        self._batch: list[str] = []
        self._row_prompt = np.zeros(0, np.int64)
        self._row_offset = np.zeros(0, np.int64)
        self._row_base_class = np.zeros(0, np.int64)
        self._row_medium_at = self._row_long_at = self._row_problem_at = np.zeros(0, np.float64)
        self._row_slot_host = np.zeros(0, np.int64)
        self._live_done: dict[str, int] = {}
        self._steps_since_live = 0
        self._meta_dirty = True
        gate = c.gate
        draft_max = min(m, gate.max_running) if gate.mode == "max_running" else m
        # token preparation (update_token_ids_ngram): the sampler's tokens in, next tokens and counts
        # out, double-buffered (vLLM reads a step's outputs in the next step and on a copy stream)
        self._in_raw = torch.full((m, k + 1), -1, dtype=torch.int32, device=dev)
        self._prep_next = [torch.zeros(m, dtype=torch.int32, device=dev) for _ in range(2)]
        self._prep_count = [torch.zeros(m, dtype=torch.int32, device=dev) for _ in range(2)]
        self._parity = 0
        self._discard: torch.Tensor | None = None  # the runner's discard mask buffer (read by the graphs)
        self._prep_graphs = {(w, par): BucketGraphs(f"token prep w{w}", functools.partial(self._prep_step, w=w, par=par),
                                                     bucket_sizes(m), dev, enabled=dc.cuda_graphs)
                             for w in (1, k + 1) for par in (0, 1)}
        self.prep_steps = 0  # steps whose token preparation ran here (else vLLM's)
        self._graphs = BucketGraphs("device drafting", self._draft_step, bucket_sizes(draft_max), dev,
                                    enabled=dc.cuda_graphs)
        self._append_graphs = BucketGraphs("token append", self._append_step, bucket_sizes(m), dev,
                                           enabled=dc.cuda_graphs, pool=None)
        self._captured = False
        self._off = False  # the runner lacks an attribute this proposer reads: no drafting
        self.device_drafted_steps = 0
        self.device_gated_steps = 0
        self.host_seconds = 0.0  # host time inside propose (the whole per-step drafter cost on the host)
        self.gated_host_seconds = 0.0  # the part of it spent in gated steps
        self.live_appends = 0
        logger.info("DAS device drafter active (k=%d, sources own=%s problem=%s global=%s, graphs=%s)", k,
                    c.use_request_tree, c.use_problem_tree, self.device_drafter.settings.use_global,
                    self._graphs.enabled)

    # ------------------------------------------------------------------ device steps (graph bodies)
    def _append_step(self, b: int) -> None:
        """Write each row's sampled tokens after its length into the runner's token buffer."""
        runner = self.runner
        tok = runner.token_ids_gpu_tensor[:b]
        self._out_len[:b] = self._append_history(runner.num_tokens_no_spec_gpu[:b], tok, self._in_sampled[:b],
                                                 self._in_count[:b])

    def _prep_step(self, b: int, w: int, par: int) -> None:
        """vLLM's ``update_token_ids_ngram`` for ``b`` rows of sampled width ``w``, into the
        parity-``par`` outputs and the device step's inputs (same operations, same results)."""
        runner = self.runner
        raw = self._in_raw[:b, :w]
        backup_at = (runner.num_tokens_no_spec_gpu[:b] - 1).clamp(min=0).long()
        backup = runner.token_ids_gpu_tensor[:b].gather(1, backup_at.unsqueeze(1)).squeeze(1)
        valid = raw.masked_fill(self._discard[:b].unsqueeze(1), -1)
        count = ((valid != -1) & (valid < self._vocab)).sum(dim=1).to(torch.int32)
        last = count - 1
        chosen = valid.gather(1, last.clamp(min=0).long().unsqueeze(1)).squeeze(1)
        self._prep_next[par][:b] = torch.where(last >= 0, chosen, backup)
        self._prep_count[par][:b] = count
        self._in_sampled[:b, :w] = valid
        self._in_count[:b] = count

    def _draft_step(self, b: int) -> None:
        runner = self.runner
        tok = runner.token_ids_gpu_tensor[:b]
        count = self._in_count[:b]
        new_len = self._append_history(runner.num_tokens_no_spec_gpu[:b], tok, self._in_sampled[:b], count)
        self._out_len[:b] = new_len
        # acceptance of the drafts proposed at the previous step (vLLM's convention: accepted =
        # sampled - 1, at most the real draft length; filler tokens are not counted)
        got = count > 0
        real = self._prev_real[:b]
        considered = self._prev_considered[:b].bool() & got
        accepted = torch.minimum((count.to(torch.int64) - 1).clamp(min=0), real)
        drafted_row = considered & (real > 0)
        cols = torch.stack([torch.where(drafted_row, real, 0), torch.where(drafted_row, accepted, 0),
                            drafted_row.to(torch.int64), considered.to(torch.int64)], dim=1)
        self._by_bucket.index_add_(0, self._prev_bucket[:b], cols)
        self._by_class.index_add_(0, self._prev_class[:b], cols)
        # draft
        length = self.max_model_len
        mask = got & (new_len < length - 1)
        draft, valid = self.device_drafter.propose(new_len, tok, mask, self._row_slot[:b], self._row_budget[:b],
                                                   self._row_factor[:b])
        valid = torch.minimum(valid.to(torch.int64), (length - 1 - new_len.to(torch.int64)).clamp(min=0))
        self._prev_real[:b] = valid
        self._prev_considered[:b] = mask & (self._row_budget[:b] > 0)
        gen = new_len.to(torch.int64) + self._row_gen_base[:b]
        self._prev_bucket[:b] = torch.bucketize(gen, self._edges, right=True)
        self._prev_class[:b] = self._row_class[:b]
        # padding: every row's draft filled to k with its last token (vLLM reads as many as the
        # host announces, which is never more than the room left)
        last = tok.gather(1, (new_len.to(torch.int64) - 1).clamp(min=0).unsqueeze(1))
        slot = torch.arange(self.k, device=tok.device).unsqueeze(0)
        fill = torch.where(self._pad_on, last.expand(-1, self.k), torch.full_like(draft, -1))
        self._drafts_gpu[:b] = torch.where(slot < valid.unsqueeze(1), draft, fill)
        self._valid_gpu[:b] = valid.to(torch.int32)

    # ------------------------------------------------------------------ vLLM entry points
    def load_model(self, *args: Any, **kwargs: Any) -> None:
        if getattr(self.runner, "token_ids_gpu_tensor", None) is not None and self._runner_ok():
            self._capture()

    def _prep_usable(self) -> bool:
        """Whether token preparation can run here: lean bookkeeping on and the runner's discard
        mask buffer readable (else vLLM's ``update_token_ids_ngram`` runs)."""
        if not self.das_config.lean_bookkeeping:
            return False
        if self._discard is None:
            from ... import versions
            from .lean_bookkeeping import FEATURE

            mask = versions.probe(FEATURE, lambda: self.runner.discard_request_mask.gpu, None)
            if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool:
                return False
            self._discard = mask
        return True

    def _runner_ok(self) -> bool:
        """Check the runner attributes this proposer reads once; if one is missing (another vLLM
        version), the device drafter switches off for the engine: steps go undrafted (plain
        decoding) and ``disabled_features`` says why."""
        from ... import versions

        try:
            versions.require_attrs(self.runner, RUNNER_ATTRS, FEATURE)
            versions.require_attrs(self.runner.input_batch, BATCH_ATTRS, FEATURE)
        except versions.UnsupportedVersionError as exc:
            versions.disable(FEATURE, str(exc))
            self._off = True
            return False
        return True

    def _capture(self) -> None:
        """Capture the step graphs once the runner's token buffers exist (load_model or the
        first step); warm-up runs compile the kernels."""
        if self._captured or not self._graphs.enabled:
            self._captured = True
            return
        if getattr(self.runner, "token_ids_gpu_tensor", None) is None:
            return
        t0 = time.perf_counter()
        self._in_count.zero_()
        self._graphs.capture_all()
        self._append_graphs.capture_all()
        if self._prep_usable():
            for g in self._prep_graphs.values():
                g.capture_all()
        self._prev_state[:2].zero_()  # real drafts and considered
        self._by_bucket.zero_()
        self._by_class.zero_()
        self._captured = True
        prep = self._prep_graphs.values()
        logger.info("DAS device drafter: %d + %d + %d CUDA graphs captured in %.1f s (failures: %d)",
                    len(self._graphs.graphs), len(self._append_graphs.graphs), sum(len(g.graphs) for g in prep),
                    time.perf_counter() - t0,
                    self._graphs.failures + self._append_graphs.failures + sum(g.failures for g in prep))

    def update_token_ids_ngram(self, sampled_token_ids: Any, gpu_input_batch: Any, token_ids_gpu: torch.Tensor,
                               num_tokens_no_spec: torch.Tensor, discard_request_mask: torch.Tensor
                               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """vLLM's token preparation (next input token, valid sampled tokens and their count per
        row, without a host sync), from one graph replay; vLLM's own where this engine cannot
        (no lean bookkeeping, other buffers or dtypes than captured, a fault)."""
        stock = super().update_token_ids_ngram
        runner = self.runner
        if (self.speculator is None or self._off or self.breaker_tripped or not isinstance(sampled_token_ids, torch.Tensor)
                or not self._prep_usable() or sampled_token_ids.dtype != torch.int32
                or token_ids_gpu is not runner.token_ids_gpu_tensor or num_tokens_no_spec is not runner.num_tokens_no_spec_gpu
                or discard_request_mask.data_ptr() != self._discard.data_ptr()
                or int(gpu_input_batch.vocab_size) != self._vocab or sampled_token_ids.shape[1] > self.k + 1):
            return stock(sampled_token_ids, gpu_input_batch, token_ids_gpu, num_tokens_no_spec, discard_request_mask)
        t0 = time.perf_counter()
        try:
            n, width = int(gpu_input_batch.num_reqs), int(sampled_token_ids.shape[1])
            self._in_raw[:n, :width].copy_(sampled_token_ids[:n])
            w = width
            if (w, 0) not in self._prep_graphs:  # a width without graphs (unpadded drafts): pad to 1 + k
                self._in_raw[:n, w:].fill_(-1)
                w = self.k + 1
            par = self._parity
            self._prep_graphs[(w, par)].run(n)
            self._parity ^= 1
            self.prep_steps += 1
            return self._prep_next[par][:n], self._prep_count[par][:n], self._in_sampled[:n, :width]
        except Exception:  # noqa: BLE001 - a drafter fault must never kill the rollout
            self._on_fault("device proposer (token preparation)")
            return stock(sampled_token_ids, gpu_input_batch, token_ids_gpu, num_tokens_no_spec, discard_request_mask)
        finally:
            self.host_seconds += time.perf_counter() - t0

    def propose(self, num_speculative_tokens: int, num_tokens_no_spec: torch.Tensor, token_ids_gpu: torch.Tensor,
                valid_sampled_token_ids_gpu: torch.Tensor, valid_sampled_tokens_count: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor | None]:
        if self.speculator is None:  # pragma: no cover - built only with a DAS config
            return super().propose(num_speculative_tokens, num_tokens_no_spec, token_ids_gpu,
                                   valid_sampled_token_ids_gpu, valid_sampled_tokens_count)
        t0 = time.perf_counter()
        n = int(num_tokens_no_spec.shape[0])
        runner = self.runner
        gated = False
        if self._deferred is None:
            self._deferred = bool(getattr(runner, "use_async_scheduling", False))
        if self._off or self.breaker_tripped:
            runner._num_valid_draft_tokens_cpu[:n] = 0
            return self._drafts_gpu[:n], None
        try:
            if not self._captured:
                if not self._runner_ok():
                    return self.propose(num_speculative_tokens, num_tokens_no_spec, token_ids_gpu,
                                        valid_sampled_token_ids_gpu, valid_sampled_tokens_count)
                self._capture()
            spec = self.speculator
            k = min(int(num_speculative_tokens), self.k)
            drafting = k > 0 and spec.gate_allows(n)
            if valid_sampled_token_ids_gpu.data_ptr() != self._in_sampled.data_ptr():  # vLLM's preparation ran
                width = valid_sampled_token_ids_gpu.shape[1]
                self._in_sampled[:n, :width].copy_(valid_sampled_token_ids_gpu)
                self._in_count[:n].copy_(valid_sampled_tokens_count)
            if not drafting:  # the append only: no row metadata, no Python work per row
                gated = True
                self._in_count[n:].zero_()
                self._append_graphs.run(n)
                runner._num_valid_draft_tokens_cpu[:n] = 0
                self._batch = []  # rows are matched afresh when drafting resumes
                spec.steps += 1
                spec.gated_steps += 1
                self.device_gated_steps += 1
                self._on_ok()
                return self._drafts_gpu[:n], None
            req_ids = runner.input_batch.req_ids
            if len(req_ids) < n or self._batch != req_ids[:n]:
                self._batch_changed(list(req_ids[:n]))
            elif self._meta_dirty:
                self._write_row_meta(n)
            b = self._graphs.bucket(n) if self._graphs.enabled else n
            if b is not None and b > n:
                self._in_count[n:b].zero_()
            self._graphs.run(n)
            spec.steps += 1
            self.device_drafted_steps += 1
            self._on_ok()
            self._steps_since_live += 1
            if self._steps_since_live >= self.das_config.device_drafter.live_interval:
                self._append_live(n)
            if self.pads:
                host_len = np.asarray(runner.input_batch.num_tokens_no_spec[:n], dtype=np.int64)
                room = self.max_model_len - 1 - (host_len + self.k + 1)  # host lengths lag a step
                runner._num_valid_draft_tokens_cpu[:n] = torch.from_numpy(np.clip(np.minimum(k, room), 0, None))
                return self._drafts_gpu[:n], None
            return self._drafts_gpu[:n], self._valid_gpu[:n]
        except Exception:  # noqa: BLE001 - a drafter fault must never kill the rollout
            self._on_fault("device proposer")
            self._batch = []
            runner._num_valid_draft_tokens_cpu[:n] = 0
            return self._drafts_gpu[:n], None
        finally:
            dt = time.perf_counter() - t0
            self.host_seconds += dt
            self.propose_seconds += dt
            if gated:
                self.gated_host_seconds += dt

    # ------------------------------------------------------------------ batch metadata (host)
    def _batch_changed(self, req_ids: list[str]) -> None:
        """Carry per-row device state to the new row order; rebuild the row metadata."""
        old = {rid: i for i, rid in enumerate(self._batch)}
        perm = np.fromiter((old.get(r, -1) for r in req_ids), np.int64, len(req_ids))
        self._enter_batch(req_ids)
        for rid in self._live_done.keys() - set(req_ids):
            if rid not in self.runner.requests:
                del self._live_done[rid]
        n = len(req_ids)
        if n and not (perm >= 0).any():  # after gated steps or a history load: nothing pending
            self._prev_state[:2].zero_()  # real drafts and considered
        elif n:  # carry each row's pending draft to its new row (new rows: nothing pending)
            idx = torch.from_numpy(perm).to(self.device, non_blocking=True)
            moved = self._prev_state[:, idx.clamp(min=0)]
            self._prev_state[:, :n] = torch.where(idx >= 0, moved, 0)
        self._batch = req_ids
        meta = [self._meta_of(r) for r in req_ids]
        ib = self.runner.input_batch
        self._row_prompt = np.asarray(ib.num_prompt_tokens[:n], dtype=np.int64).copy()
        self._row_offset = np.fromiter((m[2] for m in meta), np.int64, n)
        classes = self.speculator.classes
        unknown = self.das_config.unknown_class
        self._row_base_class = np.fromiter(
            ((m[1] or classes.get(m[0] or "", unknown)).rank for m in meta), np.int64, n)
        requests = self.runner.requests
        limits = [getattr(getattr(requests.get(r), "sampling_params", None), "max_tokens", None) for r in req_ids]
        at = np.array([run_thresholds(self.das_config, lim) for lim in limits], dtype=np.float64).reshape(n, 2)
        self._row_medium_at, self._row_long_at = at[:, 0], at[:, 1]
        promote_at = self.speculator.problem_promote_at
        self._row_problem_at = np.fromiter((promote_at.get(m[0] or "", NO_THRESHOLD) for m in meta), np.float64, n)
        self._row_slot_host = np.fromiter((self.device_drafter.slot_of(m[0], assign=True) for m in meta), np.int64, n)
        self._write_row_meta(n)

    def _write_row_meta(self, n: int) -> None:
        """Row class (with promotion), budget, factor and slot to the device."""
        c = self.das_config
        host_len = np.asarray(self.runner.input_batch.num_tokens_no_spec[:n], dtype=np.int64)
        gen = host_len - self._row_prompt + self._row_offset
        # the length policy of DASSpeculator.class_of (policy/promotion.py), vectorized over rows
        floor = tail_floor(c) if is_tail_step(c, n) else 0
        cls = np.asarray(promoted_rank(self._row_base_class, gen, self._row_medium_at, self._row_long_at,
                                       self._row_problem_at, floor), dtype=np.int64)
        if self.pads and c.fill_padded_drafts:
            fb = c.fill_budget
            budget, factor = np.full(n, fb.tokens), np.full(n, fb.factor, np.float32)
        elif c.length_policy:
            table = [c.budgets.of(x) for x in _CLASSES]
            budget = np.array([table[i].tokens for i in cls])
            factor = np.array([table[i].factor for i in cls], np.float32)
        else:
            budget, factor = np.full(n, c.flat_budget.tokens), np.full(n, c.flat_budget.factor, np.float32)
        budget = np.minimum(budget, self.k)
        meta = np.stack([self._row_slot_host, budget.astype(np.int64), self._row_offset - self._row_prompt, cls])
        self._row_meta[:, :n].copy_(torch.from_numpy(meta), non_blocking=True)  # slot, budget, gen base, class
        self._row_factor[:n].copy_(torch.from_numpy(factor.astype(np.float32)), non_blocking=True)
        if self._pad_on_host is not bool(self.pads):
            self._pad_on_host = bool(self.pads)
            self._pad_on.fill_(self._pad_on_host)
        self._meta_dirty = False

    def _append_live(self, n: int) -> None:
        """Append the batch's new sibling text (older than the newest pattern + k tokens, which a
        request would otherwise match in its own latest copy) to the problem index; refresh
        promotion of the row classes."""
        self._steps_since_live = 0
        self._meta_dirty = True
        c = self.das_config
        if not (c.use_siblings and c.use_problem_tree):
            return
        host_len = np.asarray(self.runner.input_batch.num_tokens_no_spec[:n], dtype=np.int64)
        hold = (c.pattern_tokens or c.max_depth) + self.k + 1
        done = np.fromiter((self._live_done.get(r, -1) for r in self._batch), np.int64, n)
        start = np.where(done < 0, self._row_prompt, done)
        end = host_len - hold
        ready = (self._row_slot_host >= 0) & (end - start >= c.device_drafter.live_chunk)
        if not ready.any():
            return
        rows = np.nonzero(ready)[0]
        overlap = c.pattern_tokens or c.max_depth  # a pattern spanning two chunks stays findable
        starts = np.where(done[rows] < 0, start[rows], np.maximum(start[rows] - overlap, self._row_prompt[rows]))
        self.device_drafter.append_live(self.runner.token_ids_gpu_tensor, rows, starts, end[rows],
                                        self._row_slot_host[rows])
        for i in rows:
            self._live_done[self._batch[i]] = int(end[i])
        self.live_appends += 1

    # ------------------------------------------------------------------ RPCs, stats
    def load_snapshot_bytes(self, data: bytes, classes: dict[str, str] | None = None) -> dict[str, int]:
        """Load a history snapshot into the device indexes (between steps) and set the classes."""
        t0 = time.perf_counter()
        snap = HistorySnapshot.from_npz_bytes(data)
        spec = self.speculator
        responses = [snap.tokens[snap.offsets[i] : snap.offsets[i + 1]] for i in range(snap.num_rollouts)]
        pids = [snap.problem_ids[int(j)] for j in snap.problem_index]
        out = self.device_drafter.load_history(responses, pids, snap.steps)
        lengths: dict[str, list[int]] = {}
        for pid, r in zip(pids, responses):
            lengths.setdefault(pid, []).append(len(r))
        q = self.das_config.promotion.history_quantile
        spec.problem_promote_at = {p: problem_threshold(v, q) for p, v in lengths.items()}
        if classes is not None:
            spec.classes = {p: LengthClass(v) for p, v in classes.items()}
        else:
            from ...policy import assign_length_classes

            c = self.das_config
            spec.classes = assign_length_classes(list(lengths), lengths, c.long_ratio, c.medium_ratio,
                                                 c.unknown_class)
        self._batch = []  # slots and classes changed: row metadata is rebuilt at the next step
        self._live_done.clear()
        spec.last_snapshot_seconds = time.perf_counter() - t0
        spec.snapshot_full += 1
        return out

    def update_config(self, overrides: dict[str, Any]) -> dict[str, Any]:
        """As for the host proposers; budgets and padding of the rows are rewritten at the next
        step. Shapes of the device drafter (sources, capacities) stay as the engine started."""
        out = super().update_config(overrides)
        self._batch = []
        return out

    def _fold_device_counts(self, reset: bool) -> None:
        """Add the device acceptance counts to the speculator's tracker (a host read: between
        steps only)."""
        tracker = self.speculator.tracker
        by_bucket = self._by_bucket.tolist()  # a copy (on CPU .cpu() would alias the buffer)
        by_class = self._by_class.tolist()
        self._by_bucket.zero_()
        self._by_class.zero_()
        for i, row in enumerate(by_bucket):
            c = Counts(*map(int, row))
            tracker.by_bucket[i].add(c)
            tracker.total.add(c)
        for i, row in enumerate(by_class):
            tracker.by_class[_CLASSES[i].value].add(Counts(*map(int, row)))

    def stats(self, reset: bool = False) -> dict[str, Any]:
        self._fold_device_counts(reset)
        return super().stats(reset)

    def _extra_stats(self, reset: bool) -> dict[str, Any]:
        out = super()._extra_stats(reset)
        out.update({
            "device_drafter": True,
            "device_drafted_steps": self.device_drafted_steps,
            "device_gated_steps": self.device_gated_steps,
            "host_seconds": self.host_seconds,
            "gated_host_seconds": self.gated_host_seconds,
            "live_appends": self.live_appends,
            "prep_steps": self.prep_steps,
            "prep_graph_replays": sum(g.replays for g in self._prep_graphs.values()),
            **{f"drafting_{k}": v for k, v in self._graphs.stats().items()},
            **{f"append_{k}": v for k, v in self._append_graphs.stats().items()},
            "device_history": self.device_drafter.stats(),
        })
        if reset:
            self.device_drafted_steps = self.device_gated_steps = self.live_appends = self.prep_steps = 0
            self.host_seconds = self.gated_host_seconds = 0.0
        return out
