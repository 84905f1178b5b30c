"""``DASDrafting``: the DAS side shared by the two vLLM proposers.

:class:`~.proposer.DASProposer` (method ``suffix``, synchronous scheduling) and
:class:`~.async_proposer.DASAsyncProposer` (method ``ngram_gpu``, async scheduling) differ in
how tokens reach the drafter and drafts reach the GPU; everything else lives here: the
:class:`~openrlhf_das.speculator.DASSpeculator`, per-request metadata from
``SamplingParams.extra_args["das"]``, freeing finished requests, pad resolution, the worker
RPCs (snapshot, config, stats) and fault counters.

Metadata: ``extra_args["das"] = {"problem_id": str, "length_class": "short"|"medium"|"long",
"generated_offset": int}`` (all optional; ``generated_offset`` = tokens a resumed partial rollout
generated before this request, so promotion sees the sample's total length; default 0).

Config and runner come in explicitly: the DAS config from the engine's
``vllm_config.additional_config["das"]`` (:func:`~.factory.config_from_vllm`), the model runner
from vLLM (async proposers) or from :func:`~.runner_ref.runner_for` (the suffix proposer, which
vLLM builds without one). A DAS proposer without its runner refuses to start.
"""

from __future__ import annotations

import logging
from typing import Any, Callable

from ...config import DASConfig, LengthClass
from ...drafter import HistorySnapshot
from ...speculator import DASSpeculator
from . import draft_free_graphs
from .compat import full_decode_graphs, graph_decode_requests

logger = logging.getLogger(__name__)


class DASDrafting:
    """Mixin holding a proposer's DAS state; :meth:`_init_das` must run in the proposer's
    ``__init__`` (with ``num_speculative_tokens`` and ``max_model_len`` set). Without a DAS
    config ``speculator`` is None and the proposer behaves like stock vLLM."""

    num_speculative_tokens: int
    max_model_len: int

    def _init_das(self, vllm_config: Any, runner: Any, config: DASConfig | None) -> None:
        self.vllm_config = vllm_config
        self.das_config = config
        self.runner: Any = runner  # its ``requests`` dict gives extra_args
        self.speculator: DASSpeculator | None = None
        self._pads: bool | None = None  # pad_drafts, resolved at the first step
        self._plain_graphs: bool | None = None  # 1-token steps have graphs; resolved at the first step
        self.plain_steps = 0  # padded-engine steps left draft-free (replayed a 1-token graph)
        self.graph_max_requests = 0  # requests a padded decode step may have and replay a graph
        self.engine_faults = 0
        self.consecutive_faults = 0
        self.breaker_tripped = False  # circuit breaker: drafting off for good (max_consecutive_faults)
        self.propose_seconds = 0.0  # wall time spent in the DAS proposer (engine thread)
        self.resumed = 0  # requests that re-entered the batch after leaving it (preemption)
        self.bad_metadata = 0  # requests whose extra_args["das"] could not be used
        self.bookkeeping_faults = 0  # faults while clearing pending drafts after a step's fault
        self._prev_batch: set[str] = set()
        self._meta: dict[str, tuple[str | None, LengthClass | None, int]] = {}
        if config is None:
            return
        if runner is None:
            raise RuntimeError(f"{type(self).__name__}: no model runner (DAS needs its requests' metadata)")
        if config.max_budget > self.num_speculative_tokens:
            raise ValueError(
                f"DAS budgets reach {config.max_budget} tokens but "
                f"num_speculative_tokens is {self.num_speculative_tokens}; set it to the largest budget"
            )
        self.speculator = DASSpeculator(config)
        if config.draft_free_graphs and full_decode_graphs(vllm_config):
            draft_free_graphs.install()  # the runner captures and dispatches them after this

    # ------------------------------------------------------------------ faults
    def _on_fault(self, where: str) -> None:
        """Count a drafter fault (the step already fell back to no drafts) and log it; after
        ``max_consecutive_faults`` in a row, trip the circuit breaker: no more drafting."""
        self.engine_faults += 1
        self.consecutive_faults += 1
        logger.exception("DAS %s fault; no drafts this step", where)
        limit = self.das_config.max_consecutive_faults if self.das_config is not None else 8
        if self.consecutive_faults >= limit and not self.breaker_tripped:
            self.breaker_tripped = True
            logger.error("DAS: %d drafter faults in a row; drafting is off for this engine from now on "
                         "(outputs continue as plain decoding; das_get_stats()['breaker_tripped'])", limit)

    def _on_ok(self) -> None:
        self.consecutive_faults = 0

    # ------------------------------------------------------------------ batch bookkeeping
    def _enter_batch(self, req_ids: list[str]) -> None:
        """Free finished requests; forget the pending drafts of requests that re-entered the
        batch (vLLM dropped them when the request left, so they were never verified)."""
        spec = self.speculator
        assert spec is not None
        self._forget_finished(req_ids)
        batch_ids = set(req_ids)
        resumed = (batch_ids - self._prev_batch).intersection(self._meta)
        self.resumed += len(resumed)
        for rid in resumed:
            spec.tracker.forget(rid)
        self._prev_batch = batch_ids

    def _forget_pending(self, req_ids: list[str]) -> None:
        """After a fault: nothing is pending verification, so the next step is not scored
        against drafts that never reached the engine."""
        try:
            for rid in req_ids:
                self.speculator.tracker.forget(rid)
        except Exception:  # noqa: BLE001 - already on a fault path: the step must still return
            self.bookkeeping_faults += 1
            logger.exception("DAS: clearing pending drafts after a fault failed (%d so far); the next "
                             "step's acceptance may be scored against drafts that never ran",
                             self.bookkeeping_faults)

    def _forget_finished(self, req_ids: list[str]) -> None:
        """Free state of requests vLLM no longer knows (finished or aborted). Requests that
        merely left the batch (preempted, paused) stay in ``runner.requests`` and keep theirs."""
        if not self._meta:
            return
        for rid in self._meta.keys() - self.runner.requests.keys():
            del self._meta[rid]
            self._on_finished(rid)

    def _on_finished(self, req_id: str) -> None:
        self.speculator.finish(req_id)

    def _meta_of(self, req_id: str) -> tuple[str | None, LengthClass | None, int]:
        meta = self._meta.get(req_id)
        if meta is None:
            meta = (None, None, 0)
            state = self.runner.requests.get(req_id)
            sp = getattr(state, "sampling_params", None)
            das = ((sp.extra_args or {}).get("das") if sp is not None else None) or {}
            try:
                pid = das.get("problem_id")
                cls = das.get("length_class")
                offset = int(das.get("generated_offset") or 0)
                if offset < 0:
                    raise ValueError("negative generated_offset")
                meta = (str(pid) if pid is not None else None, LengthClass(cls) if cls else None, offset)
            except (AttributeError, ValueError, TypeError):
                self.bad_metadata += 1
                logger.warning("request %s: unusable extra_args['das']=%r; drafting without it", req_id, das)
            self._meta[req_id] = meta
        return meta

    # ------------------------------------------------------------------ padding
    def _pad_rows(self, drafts: list[list[int]], k: int, rows: list[int], lengths: Any,
                  last_token: Callable[[int], int]) -> list[list[int]]:
        """With ``pad_drafts``: fill the draft of every decode row (``rows``; ``lengths[i]``
        tokens so far, ``last_token(i)`` the newest) up to k with its last token (a filler the
        rejection sampler verifies like any draft), so the step is uniform. A step without any
        real draft stays draft-free when the engine has graphs for 1-token steps."""
        if not self.pads or k <= 0:
            return drafts
        if self._plain_graphs and not any(drafts):
            self.plain_steps += 1
            return drafts
        for i in rows:
            room = min(k, self.max_model_len - int(lengths[i]) - 1)
            d = drafts[i]
            if len(d) < room:
                filler = d[-1] if d else int(last_token(i))
                drafts[i] = d + [filler] * (room - len(d))
        return drafts

    @property
    def pads(self) -> bool:
        """Whether drafts are padded to k: ``pad_drafts``, or with auto the engine's graph mode."""
        if self._pads is None:
            want = self.das_config.pad_drafts if self.das_config is not None else False
            graphs = full_decode_graphs(self.vllm_config)
            self._pads = graphs if want is None else want
            if want is None:
                logger.info("DAS pad_drafts auto: %s (cudagraph_mode %s)", self._pads,
                            getattr(getattr(self.vllm_config, "compilation_config", None), "cudagraph_mode", None))
            dispatcher = getattr(self.runner, "cudagraph_dispatcher", None)
            self._plain_graphs = bool(self._pads and draft_free_graphs.draft_free_keys(dispatcher))
            if self._pads and graphs:
                self._warn_uncovered_decode_steps(dispatcher)
        return self._pads

    def _warn_uncovered_decode_steps(self, dispatcher: Any) -> None:
        """Padded steps of an engine with full decode graphs replay a graph only up to
        ``graph_decode_requests`` requests: say so when a drafted step may have more (it then
        runs eager, several times slower). With draft-free graphs, a drafted step has at most
        ``gate.max_running`` requests (larger steps are draft-free); those have graphs up to the
        largest 1-token key."""
        q = 1 + self.num_speculative_tokens
        self.graph_max_requests = graph_decode_requests(self.vllm_config, q)
        max_seqs = int(getattr(getattr(self.vllm_config, "scheduler_config", None), "max_num_seqs", 0) or 0)
        drafted_max = max_seqs
        gate = self.das_config.gate  # padding is on, so DAS is
        if self._plain_graphs and gate.mode == "max_running":
            drafted_max = min(max_seqs, gate.max_running)
        if self.graph_max_requests < drafted_max:
            logger.warning(
                "DAS: CUDA graphs cover padded decode steps of at most %d requests (%d tokens each); "
                "drafted steps may have %d: larger ones run eager. Set compilation_config "
                "max_cudagraph_capture_size=%d to cover them.", self.graph_max_requests, q, drafted_max,
                draft_free_graphs.covering_capture_size(q * drafted_max, q))
        plain_max = max((d.num_reqs for d in draft_free_graphs.draft_free_keys(dispatcher)), default=0)
        if self._plain_graphs and plain_max < max_seqs:
            logger.warning(
                "DAS: CUDA graphs cover draft-free decode steps of at most %d requests, max_num_seqs is %d: "
                "larger steps run eager. Set compilation_config max_cudagraph_capture_size=%d to cover them.",
                plain_max, max_seqs, draft_free_graphs.covering_capture_size(max_seqs, q))

    # ------------------------------------------------------------------ RPC helpers
    def load_snapshot_bytes(self, data: bytes, classes: dict[str, str] | None = None) -> dict[str, int]:
        """Build the history of a serialized snapshot and swap it in (between steps)."""
        if self.speculator is None:
            raise RuntimeError("DAS is not enabled on this engine (no DAS config at start)")
        snap = HistorySnapshot.from_npz_bytes(data)
        cls_map = {k: LengthClass(v) for k, v in classes.items()} if classes is not None else None
        self.speculator.load_snapshot(snap, cls_map)
        return self.speculator.drafter.history.stats().as_dict()

    def update_config(self, overrides: dict[str, Any]) -> dict[str, Any]:
        """Apply dotted DAS-config overrides between steps (validated; budgets must stay within
        ``num_speculative_tokens``). Returns the new config."""
        if self.speculator is None or self.das_config is None:
            raise RuntimeError("DAS is not enabled on this engine (no DAS config at start)")
        new = self.das_config.with_overrides(overrides)
        if new.max_budget > self.num_speculative_tokens:
            raise ValueError(f"budgets reach {new.max_budget} > num_speculative_tokens {self.num_speculative_tokens}")
        self.speculator.reconfigure(new)
        self.das_config = new
        self._pads = None  # pad_drafts may have changed: resolved again at the next step
        return new.to_dict()

    def _extra_stats(self, reset: bool) -> dict[str, Any]:
        """Counters of the concrete proposer, zeroed with ``reset``."""
        return {}

    def stats(self, reset: bool = False) -> dict[str, Any]:
        if self.speculator is None:
            return {"enabled": False}
        out = {
            "enabled": True,
            "engine_faults": self.engine_faults,
            "consecutive_faults": self.consecutive_faults,
            "breaker_tripped": self.breaker_tripped,
            "propose_seconds": self.propose_seconds,
            "resumed_requests": self.resumed,
            "bad_metadata": self.bad_metadata,
            "bookkeeping_faults": self.bookkeeping_faults,
            "pad_drafts": self.pads,
            "graph_max_requests": self.graph_max_requests,
            "draft_free_graphs": bool(self._plain_graphs),
            "plain_steps": self.plain_steps,
            **self._extra_stats(reset),
            **self.speculator.stats(),
        }
        if reset:
            self.speculator.tracker.reset()
            self.propose_seconds = 0.0
            self.plain_steps = 0
        return out
