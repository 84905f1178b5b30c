"""``DeviceDrafter``: DAS drafting on the accelerator, built on ``suffix-gpu``.

The host drafter (:class:`openrlhf_das.drafter.Drafter`) keeps suffix trees in host memory, so
an engine must copy every step's tokens to the host before it can draft: under vLLM's async
scheduling that is a synchronous round trip per drafted step (docs/gpu.md, run 5b). This class
drafts from tensors that already live on the device, with the sources of the host drafter:

* **own text**: the request's prompt + output in the engine's token buffer (``suffix-gpu``'s
  ``LocalMatchKernel``, multi-length backoff);
* **problem history + live siblings**: one ``suffix-gpu`` ``GlobalIndex`` over the responses of
  every problem of the history window, each token *keyed by its problem*: a token ``t`` of the
  problem in slot ``s`` is stored as ``s * stride + t`` (``stride`` >= the vocabulary size), and
  a request of slot ``s`` queries with its tail keyed the same way, so the suffix array only
  ever matches text of the request's own problem (a per-problem index without a per-problem
  buffer). In-flight responses of the batch (GRPO siblings) are appended live to the index's
  delta buffer, keyed likewise;
* **global history**: a second ``GlobalIndex`` over the same responses with plain token ids.

Every source drafts with ``suffix-gpu``'s frequency-greedy expansion and arctic-style score (sum
of per-depth chain probabilities); the best score wins (ties: own text, then problem, then
global), as in the host ``Drafter``. A draft is capped at ``min(budget, floor(match_len *
factor + max_spec_offset))`` per row, and expansion stops below ``min_token_prob``.

Contract of :meth:`propose`: device tensors in, device tensors out, fixed shapes for a given
batch size, no host synchronization (so it can be captured in a CUDA graph:
:class:`~.graphs.GraphedPropose`). History changes (:meth:`load_history`, :meth:`append_live`)
are host calls between or beside steps; they write the indexes' tensors in place, so captured
graphs stay valid.

Units: tokens; ``[B]`` = one entry per batch row. Memory: :meth:`memory_bytes` (16 bytes per
history token of capacity per index: corpus, suffix array and their build copies, int32).
Imports torch and ``suffix_gpu`` only (no vLLM, Ray or OpenRLHF).
"""

from __future__ import annotations

import logging
from collections import deque
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
from suffix_gpu.expand import expand_chain
from suffix_gpu.global_index import PAD_TOKEN, SEP_TOKEN, GlobalIndex
from suffix_gpu.local_matcher import LocalMatchKernel, select_local_best

logger = logging.getLogger(__name__)

NO_SLOT = -1
"""Row slot of a request without a problem (or whose problem has no history slot)."""

# Written against suffix-gpu 0.1.3's internals (``GlobalIndex`` buffers, ``_query_backoff``,
# ``LocalMatchKernel.gather_candidates``, ``expand_chain``): the version is in
# ``openrlhf_das.versions.TESTED`` and checked before an engine builds this drafter.


@dataclass(frozen=True)
class DeviceDrafterSettings:
    """Shapes and thresholds of a :class:`DeviceDrafter` (fixed for its lifetime)."""

    k: int
    """Most draft tokens per row and step (vLLM's ``num_speculative_tokens``)."""
    vocab_size: int
    max_pattern_len: int = 16
    max_occurrences: int = 64
    num_backoff: int = 4
    min_token_prob: float = 0.1
    max_spec_offset: float = 0.0
    history_capacity: int = 1 << 22
    """Tokens (with one separator per response) each history index holds; older steps are
    dropped when a snapshot has more."""
    live_capacity: int = 1 << 16
    """Tokens of live sibling text the problem index's delta buffer holds; the oldest chunks
    are dropped when it is full, and it is emptied at every history load."""
    use_own: bool = True
    use_problem: bool = True
    use_global: bool = True


class DeviceDrafter:
    """See the module docstring."""

    def __init__(self, settings: DeviceDrafterSettings, device: torch.device | str) -> None:
        s = self.settings = settings
        self.device = torch.device(device)
        if s.k < 1:
            raise ValueError("k must be >= 1")
        self.stride = int(s.vocab_size)
        # slot * stride + token must stay below the PAD sentinel (int32 max)
        self.max_slots = int((PAD_TOKEN - 1) // self.stride) - 1
        if self.max_slots < 1:
            raise ValueError(f"vocab_size {s.vocab_size} leaves no room for problem keys in int32")
        caps = [s.max_pattern_len] if s.num_backoff == 1 else (
            [max(2, s.max_pattern_len >> i) for i in range(s.num_backoff - 1)] + [2])
        self._caps = torch.tensor(sorted(set(caps), reverse=True), dtype=torch.int64, device=self.device)
        self.local = LocalMatchKernel(
            k=s.k, max_pattern_len=s.max_pattern_len, max_occurrences=s.max_occurrences,
            min_token_prob=s.min_token_prob, support_thresholds=tuple(2 ** i for i in range(s.num_backoff)),
        ).to(self.device)
        no_rebuild = s.live_capacity + 1  # rebuilt only at history loads (a rebuild syncs the host)
        self.problem_index = GlobalIndex(s.history_capacity, s.live_capacity, s.k, s.max_occurrences,
                                         rebuild_threshold=no_rebuild, device=self.device) if s.use_problem else None
        self.global_index = GlobalIndex(s.history_capacity, 1, s.k, s.max_occurrences,
                                        rebuild_threshold=2, device=self.device) if s.use_global else None
        self.slots: dict[str, int] = {}
        self.history_tokens = 0
        self.history_responses = 0
        self.history_problems = 0
        self.dropped_responses = 0
        self.live_tokens_appended = 0
        self.live_tokens_dropped = 0
        self.loads = 0

    # ------------------------------------------------------------------ history (host calls)
    def load_history(self, responses: Sequence[np.ndarray], problem_ids: Sequence[str],
                     steps: Sequence[int] | None = None) -> dict[str, int]:
        """Replace the history with ``responses`` (token arrays) of ``problem_ids`` (aligned);
        when they exceed the capacity the responses of the oldest ``steps`` go first. Empties
        the live sibling text. Blocks until the indexes are built (a step boundary)."""
        s = self.settings
        order = np.arange(len(responses))
        if steps is not None and len(order):
            order = order[np.argsort(-np.asarray(steps, np.int64), kind="stable")]  # newest first
        keep, total = [], 0
        for i in order:
            n = len(responses[i]) + 1
            if n <= 1:
                continue
            if total + n > s.history_capacity:
                continue
            keep.append(int(i))
            total += n
        self.dropped_responses = len([r for r in responses if len(r)]) - len(keep)
        keep.sort()
        slots: dict[str, int] = {}
        for i in keep:
            pid = problem_ids[i]
            if pid not in slots and len(slots) < self.max_slots:
                slots[pid] = len(slots)
        keep = [i for i in keep if problem_ids[i] in slots]
        self.slots = slots
        lens = [len(responses[i]) + 1 for i in keep]
        flat = np.full(sum(lens), SEP_TOKEN, dtype=np.int64)
        keys = np.empty(sum(lens), dtype=np.int64)
        pos = 0
        for i, n in zip(keep, lens):
            flat[pos : pos + n - 1] = responses[i]
            keys[pos : pos + n] = slots[problem_ids[i]] * self.stride
            pos += n
        if self.problem_index is not None:
            keyed = np.where(flat >= 0, flat + keys, flat).astype(np.int32)
            _load_corpus(self.problem_index, keyed, lens)
        if self.global_index is not None:
            _load_corpus(self.global_index, flat.astype(np.int32), lens)
        self.history_tokens = int(sum(lens))
        self.history_responses = len(keep)
        self.history_problems = len(slots)
        self.loads += 1
        return {"responses": len(keep), "tokens": self.history_tokens, "problems": len(slots),
                "dropped_responses": self.dropped_responses}

    def slot_of(self, problem_id: str | None, assign: bool = False) -> int:
        """The problem's key slot; ``assign``: give a problem without history a slot of its own
        (while slots are left), so that its live sibling text can be indexed (epoch 0, new
        problems). Slots are renumbered at every :meth:`load_history`."""
        if problem_id is None:
            return NO_SLOT
        slot = self.slots.get(problem_id)
        if slot is None:
            if not assign or len(self.slots) >= self.max_slots:
                return NO_SLOT
            slot = self.slots[problem_id] = len(self.slots)
        return slot

    def append_live(self, token_ids: torch.Tensor, rows: np.ndarray, starts: np.ndarray, ends: np.ndarray,
                    slots: np.ndarray) -> int:
        """Append ``token_ids[rows[j], starts[j]:ends[j]]`` (live sibling text, device buffer
        rows) to the problem index, keyed by ``slots[j]``, one document each; host arrays,
        device copies only (no sync). Chunks of rows without a slot are skipped. When the live
        buffer is full the oldest chunks are dropped. Returns tokens appended."""
        gi = self.problem_index
        ok = (slots >= 0) & (ends > starts)
        if gi is None or not ok.any():
            return 0
        rows, starts, ends, slots = rows[ok], starts[ok], ends[ok], slots[ok]
        cap = gi.delta_capacity - 1
        ends = np.minimum(ends, starts + cap - 1)  # one chunk never exceeds the buffer
        lens = (ends - starts).astype(np.int64)
        total = int(lens.sum() + len(lens))
        if total > cap:  # keep the newest rows' chunks that fit
            keep = np.cumsum((lens + 1)[::-1]) <= cap
            sel = np.nonzero(keep[::-1])[0]
            rows, starts, ends, slots, lens = rows[sel], starts[sel], ends[sel], slots[sel], lens[sel]
            total = int(lens.sum() + len(lens))
        if gi.delta_len + total > cap:
            self.live_tokens_dropped += _drop_oldest(gi, gi.delta_len + total - cap)
        # flat gather indices: each chunk then one separator slot
        seg = np.repeat(np.arange(len(lens)), lens + 1)
        first = np.concatenate([[0], np.cumsum(lens + 1)[:-1]])
        offs = np.arange(total) - first[seg]
        is_sep = offs == lens[seg]
        col = np.where(is_sep, 0, starts[seg] + offs)
        idx_row = torch.from_numpy(rows[seg].astype(np.int64)).to(self.device, non_blocking=True)
        idx_col = torch.from_numpy(col.astype(np.int64)).to(self.device, non_blocking=True)
        key = torch.from_numpy((slots[seg] * self.stride).astype(np.int64)).to(self.device, non_blocking=True)
        sep = torch.from_numpy(is_sep).to(self.device, non_blocking=True)
        vals = token_ids[idx_row, idx_col].to(torch.int64) + key
        vals = torch.where(sep, torch.full_like(vals, SEP_TOKEN), vals).to(torch.int32)
        start = gi.delta_len
        gi.delta[start : start + total].copy_(vals)
        gi.delta_len += total
        gi.delta_len_t.fill_(gi.delta_len)
        gi.delta_doc_lens.extend(int(n) + 1 for n in lens)
        self.live_tokens_appended += int(lens.sum())
        return int(lens.sum())

    # ------------------------------------------------------------------ propose (device only)
    def propose(self, num_tokens: torch.Tensor, token_ids: torch.Tensor, mask: torch.Tensor,
                row_slot: torch.Tensor, row_budget: torch.Tensor, row_factor: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """Drafts for ``B`` rows: ``num_tokens`` [B] tokens of each row in ``token_ids`` [B, S]
        (int32), ``mask`` [B] bool rows that may draft, ``row_slot`` [B] int64 problem slot
        (``NO_SLOT``: none), ``row_budget`` [B] int64 most draft tokens (<= k), ``row_factor``
        [B] float32 match-length factor. Returns ``draft`` [B, k] int32 (-1 past the draft) and
        ``num_valid`` [B] int32. Device ops only, fixed shapes."""
        s = self.settings
        b = num_tokens.shape[0]
        k, r = s.k, s.max_occurrences
        mask = mask & (row_budget > 0)
        lens, conts, occs, owners = [], [], [], []  # candidate blocks [B, C], [B, C, R, k], [B, C]
        if s.use_own:
            cand, cont, occ = self.local.gather_candidates(num_tokens, token_ids, mask)
            lens.append(cand), conts.append(cont), occs.append(occ), owners.append(0)
        if self.problem_index is not None or self.global_index is not None:
            tails, tail_len = _gather_tails(num_tokens, token_ids, s.max_pattern_len)
        if self.problem_index is not None:
            has_slot = row_slot >= 0
            key = (row_slot.clamp(min=0) * self.stride).unsqueeze(1)
            keyed = torch.where(has_slot.unsqueeze(1), tails + key, torch.full_like(tails, -3))
            plen = torch.where(has_slot & mask, tail_len, torch.zeros_like(tail_len))
            m, cont, occ = self.problem_index._query_backoff(keyed.to(torch.int32), plen, s.max_pattern_len,
                                                              self._caps)
            cont = torch.where(cont >= 0, (cont.to(torch.int64) - key.unsqueeze(2).unsqueeze(3)),
                               torch.full_like(cont, -1, dtype=torch.int64)).to(torch.int32)
            lens.append(m), conts.append(cont), occs.append(occ), owners.append(1)
        if self.global_index is not None:
            glen = torch.where(mask, tail_len, torch.zeros_like(tail_len))
            m, cont, occ = self.global_index._query_backoff(tails.to(torch.int32), glen, s.max_pattern_len,
                                                             self._caps)
            lens.append(m), conts.append(cont), occs.append(occ), owners.append(2)
        if not lens:
            return (torch.full((b, k), -1, dtype=torch.int32, device=self.device),
                    torch.zeros(b, dtype=torch.int32, device=self.device))
        widths = [x.shape[1] for x in lens]
        len_all = torch.cat(lens, dim=1)
        c = len_all.shape[1]
        cont_all = torch.cat(conts, dim=1)
        occ_all = torch.cat(occs, dim=1)
        cap = (row_factor.unsqueeze(1) * len_all.to(torch.float32) + s.max_spec_offset).floor().to(torch.int64)
        cap = torch.minimum(cap.clamp(min=0), row_budget.unsqueeze(1))
        chain, _, emit, score = expand_chain(cont_all.reshape(b * c, r, k), occ_all.reshape(-1), k,
                                             min_token_prob=s.min_token_prob, cap=cap.reshape(-1))
        chain, emit, score = chain.view(b, c, k), emit.view(b, c), score.view(b, c)
        # best candidate per source, then the best source (ties: the earlier source)
        best_chain, best_emit, best_score = [], [], []
        start = 0
        bidx = torch.arange(b, device=self.device)
        for owner, w in zip(owners, widths):
            sl = slice(start, start + w)
            if owner == 0:
                ch, em, _, _, sc = select_local_best(len_all[:, sl], chain[:, sl], emit[:, sl],
                                                     occ_all[:, sl], score[:, sl])
            else:  # first max = longest cap (caps descend)
                j = score[:, sl].argmax(dim=1)
                ch, em, sc = chain[:, sl][bidx, j], emit[:, sl][bidx, j], score[:, sl][bidx, j]
            sc = torch.where(em > 0, sc, torch.full_like(sc, -1.0))
            best_chain.append(ch), best_emit.append(em.to(torch.int64)), best_score.append(sc)
            start += w
        scores = torch.stack(best_score, dim=1)
        pick = scores.argmax(dim=1)  # first max wins ties
        draft = torch.stack(best_chain, dim=1)[bidx, pick]
        num_valid = torch.stack(best_emit, dim=1)[bidx, pick]
        num_valid = torch.where(mask, num_valid, torch.zeros_like(num_valid))
        slot_k = torch.arange(k, device=self.device).unsqueeze(0)
        draft = torch.where(slot_k < num_valid.unsqueeze(1), draft, torch.full_like(draft, -1))
        return draft.to(torch.int32), num_valid.to(torch.int32)

    # ------------------------------------------------------------------ stats
    def memory_bytes(self) -> int:
        """Device bytes held by the history indexes (corpus, suffix array, their build copies
        and the delta buffer)."""
        total = 0
        for gi in (self.problem_index, self.global_index):
            if gi is not None:
                total += sum(t.numel() * t.element_size() for t in (gi.corpus, gi.staging_corpus, gi.sa,
                                                                    gi.staging_sa, gi.delta))
        return total

    def stats(self) -> dict[str, float]:
        live = self.problem_index.delta_len if self.problem_index is not None else 0
        return {
            "history_tokens": self.history_tokens,
            "history_responses": self.history_responses,
            "history_problems": self.history_problems,
            "slots": len(self.slots),
            "dropped_responses": self.dropped_responses,
            "live_tokens": live,
            "live_tokens_appended": self.live_tokens_appended,
            "live_tokens_dropped": self.live_tokens_dropped,
            "history_loads": self.loads,
            "memory_bytes": self.memory_bytes(),
            "bytes_per_history_token": (self.memory_bytes() / self.settings.history_capacity),
        }


def _gather_tails(num_tokens: torch.Tensor, token_ids: torch.Tensor, p: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Last ``p`` tokens of each row, left-aligned ([B, p] int64, 0 past the row's length) and
    their lengths ([B] int64)."""
    s = token_ids.shape[1]
    q = num_tokens.to(torch.int64)
    tail_len = torch.clamp(q, max=p)
    offs = torch.arange(p, dtype=torch.int64, device=token_ids.device)
    idx = q.unsqueeze(1) - tail_len.unsqueeze(1) + offs.unsqueeze(0)
    valid = offs.unsqueeze(0) < tail_len.unsqueeze(1)
    tails = torch.where(valid, token_ids.gather(1, idx.clamp(0, s - 1)).to(torch.int64), 0)
    return tails, tail_len


def _load_corpus(gi: GlobalIndex, tokens: np.ndarray, doc_lens: list[int]) -> None:
    """Make ``tokens`` (documents, each followed by a separator) the whole corpus of ``gi``,
    empty its delta, and build its suffix array; buffers are written in place (captured graphs
    keep their pointers). Synchronous (the SA build syncs the host)."""
    n = int(tokens.size)
    gi.delta_len = 0
    gi.delta_len_t.fill_(0)
    gi.delta_doc_lens = []
    dst = gi.staging_corpus
    dst.fill_(PAD_TOKEN)
    if n:
        dst[:n].copy_(torch.from_numpy(tokens).to(gi.device))
    gi._build_staging_sa(dst, min(n + 1, gi.capacity))
    gi._finish_swap(n, deque(doc_lens), gi.active_epoch + 1)


def _drop_oldest(gi: GlobalIndex, need: int) -> int:
    """Free at least ``need`` tokens at the front of ``gi``'s delta (whole documents); returns
    the tokens dropped."""
    acc = docs = 0
    for ln in gi.delta_doc_lens:
        if acc >= need:
            break
        acc += ln
        docs += 1
    remaining = gi.delta_len - acc
    if remaining > 0:
        gi.delta[:remaining] = gi.delta[acc : gi.delta_len].clone()
    gi.delta_len = max(remaining, 0)
    gi.delta_len_t.fill_(gi.delta_len)
    gi.delta_doc_lens = gi.delta_doc_lens[docs:]
    return acc
