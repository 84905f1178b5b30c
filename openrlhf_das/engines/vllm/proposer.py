"""``DASProposer``: vLLM V1's suffix proposer, drafting with DAS.

vLLM constructs it wherever it would construct ``SuffixDecodingProposer`` (the plugin rebinds
the name), so ``speculative_config={"method": "suffix", ...}`` keeps vLLM's own validation and
rejection sampler: outputs and logprobs are those of plain decoding.

* Without a DAS config (no ``additional_config["das"]`` in the engine's config, see
  :func:`~.factory.engine_kwargs`) every call is delegated to the stock proposer: the engine
  behaves exactly like stock vLLM.
* With one, the proposer takes the model runner under construction (:mod:`.runner_ref`; vLLM
  passes the suffix proposer none) and refuses to start without it.
* With one, drafts come from :class:`~openrlhf_das.speculator.DASSpeculator`; per-request
  metadata travels in ``SamplingParams.extra_args["das"] = {"problem_id": str,
  "length_class": "short"|"medium"|"long", "generated_offset": int}`` (all optional;
  ``generated_offset`` = tokens a resumed partial rollout generated before this request, so
  promotion sees the sample's total length; default 0).
* Per-request trees survive a request leaving the batch (preemption, pause) and are rebuilt
  from the full token list when needed; they are freed when vLLM forgets the request.
* The acceptance of the previous draft is ``len(sampled_token_ids[i]) - 1``.
* ``pad_drafts`` auto (``None``) is resolved at the first step, from the engine's resolved
  CUDA-graph mode (:func:`~.compat.full_decode_graphs`); ``stats()["pad_drafts"]`` says which.
* With padding and ``draft_free_graphs`` (engines with full decode graphs), a step in which no
  request got a real draft (gate closed, nothing matched) is left undrafted instead of padded:
  :mod:`.draft_free_graphs` gives such 1-token steps a graph (``stats()["plain_steps"]``).
* With padding and ``fill_padded_drafts``, a drafted step gives every request the largest
  budget: its k verify tokens are paid whether they hold real drafts or filler.
* Faults: any exception in the DAS path for a step yields empty drafts for that step (counted
  in ``stats()["engine_faults"]``); per-request faults are isolated inside the drafter.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from vllm.v1.spec_decode.suffix_decoding import SuffixDecodingProposer

from ...speculator import StepRequest
from .compat import make_arg_parser
from .drafting import DASDrafting
from .factory import config_from_vllm
from .runner_ref import runner_for

__all__ = ["DASProposer"]

logger = logging.getLogger(__name__)

_STOCK_PROPOSE = SuffixDecodingProposer.propose
_PARSE = make_arg_parser(_STOCK_PROPOSE)


class DASProposer(DASDrafting, SuffixDecodingProposer):
    """Suffix proposer subclass; see the module docstring."""

    def __init__(self, vllm_config: Any) -> None:
        config = config_from_vllm(vllm_config)
        runner = runner_for(vllm_config, "DAS proposer") if config is not None else None
        SuffixDecodingProposer.__init__(self, vllm_config)
        self._init_das(vllm_config, runner, config)
        if self.speculator is not None:
            logger.info("DAS proposer active (k=%d, depth=%d)", self.num_speculative_tokens, self.das_config.max_depth)

    # ------------------------------------------------------------------ vLLM entry point
    def propose(self, *args: Any, **kwargs: Any) -> list[list[int]]:
        if self.speculator is None:
            return _STOCK_PROPOSE(self, *args, **kwargs)
        t0 = time.perf_counter()
        a = _PARSE(*args, **kwargs)
        n = len(a.sampled_token_ids)
        if self.breaker_tripped:
            return [[] for _ in range(n)]
        try:
            out = self._propose(a.num_speculative_tokens, a.input_batch, a.sampled_token_ids)
            self._on_ok()
            return out
        except Exception:  # noqa: BLE001 - a drafter fault must never kill the rollout
            self._on_fault("proposer")
            self._forget_pending(list(a.input_batch.req_ids))
            return [[] for _ in range(n)]
        finally:
            self.propose_seconds += time.perf_counter() - t0

    def _propose(self, k: int | None, input_batch: Any, sampled: list[list[int]]) -> list[list[int]]:
        spec = self.speculator
        assert spec is not None
        req_ids = input_batch.req_ids
        n = len(sampled)
        self._enter_batch(req_ids)
        k = self.num_speculative_tokens if k is None else min(k, self.num_speculative_tokens)
        if k <= 0 or not spec.gate_allows(n):
            spec.observe_gated(req_ids, sampled)
            return self._pad([[] for _ in range(n)], k, input_batch, sampled)

        rows: list[int] = []
        batch: list[StepRequest] = []
        tok = input_batch.token_ids_cpu
        num_tokens = input_batch.num_tokens_no_spec
        num_prompt = input_batch.num_prompt_tokens
        for i in range(n):
            if not sampled[i]:  # partial prefill: nothing to draft yet
                continue
            nt = int(num_tokens[i])
            if nt >= self.max_model_len - 1:
                continue
            rid = req_ids[i]
            pid, cls, offset = self._meta_of(rid)
            rows.append(i)
            batch.append(StepRequest(rid, tok[i, :nt], int(num_prompt[i]), pid, cls, len(sampled[i]), offset))
        drafts: list[list[int]] = [[] for _ in range(n)]
        for i, d in zip(rows, spec.step(batch, num_running=n, padded_k=k if self.pads else 0)):
            if d:
                room = self.max_model_len - int(num_tokens[i]) - 1
                drafts[i] = d[: min(k, room)]
        return self._pad(drafts, k, input_batch, sampled)

    def _pad(self, drafts: list[list[int]], k: int, input_batch: Any, sampled: list[list[int]]) -> list[list[int]]:
        """:meth:`_pad_rows` over the decode rows (those that sampled) of ``input_batch``."""
        if not self.pads:
            return drafts
        num_tokens, tok = input_batch.num_tokens_no_spec, input_batch.token_ids_cpu
        rows = [i for i in range(len(drafts)) if sampled[i]]
        return self._pad_rows(drafts, k, rows, num_tokens, lambda i: tok[i, int(num_tokens[i]) - 1])
