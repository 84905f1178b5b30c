"""The batch gate in vLLM's scheduler, for async DAS engines (method ``ngram_gpu``).

Under async scheduling vLLM cannot know step N + 1's drafts when it schedules it, so for a GPU
drafter it reserves ``num_speculative_tokens`` placeholder slots for every running request at
every step; the worker trims the slots its drafter left empty. A step that DAS gates (more than
``gate.max_running`` requests) then still pays for k placeholders per request: KV slots, the
trim, the optimistic-acceptance bookkeeping and its later correction, per request, on the host
(H100 long-tail run of 2026-12-06, docs/gpu.md: the gated bulk phase of ``das_async`` took
1.5x that of no speculation and 1.3x that of synchronous no speculation).

vLLM's scheduler already has the switch: a dense ``dynamic_sd_lookup`` (batch size -> k,
0 = schedule no draft slots). :func:`install` wraps ``Scheduler.__init__`` so that an engine
whose DAS config has ``async_scheduling`` and ``scheduler_gate`` on and a ``max_running`` gate
gets the table :func:`gate_lookup` (k up to ``max_running`` requests, 0 above), unless the
engine set a schedule of its own. It is set on the scheduler object, not through vLLM's
``num_speculative_tokens_per_batch_size`` config, because that config switches the V1 runner's
full CUDA graphs to PIECEWISE. The scheduler passes the step's k to the proposer
(``num_spec_tokens_to_schedule``), which drafts no more than that, so scheduler and drafter
agree on which steps draft; outputs are unchanged (only which steps carry draft slots).

Written against vLLM 0.26-0.29 (same scheduler code in both). Guarded (:mod:`openrlhf_das.versions`):
optional feature ``scheduler_gate``; outside the tested versions, or when ``Scheduler.__init__``
is missing, :func:`install` patches nothing; a scheduler whose fields (``vllm_config``,
``num_spec_tokens``, ``scheduler_config.max_num_seqs``, ``speculative_config.use_ngram_gpu``)
cannot be read gets no table and the feature switches off (stock scheduling: every step
reserves draft slots, outputs unchanged).
"""

from __future__ import annotations

import functools
import logging
from typing import Any

from ... import versions
from ...policy import MaxRunningGate
from .factory import config_from_vllm

logger = logging.getLogger(__name__)

_MARK = "_das_scheduler_gate"
FEATURE = "scheduler_gate"


def gate_lookup(k: int, max_running: int, max_num_seqs: int) -> list[int]:
    """Dense table for vLLM's ``dynamic_sd_lookup``: index = requests scheduled in a step
    (0..``max_num_seqs``; index 0 unused), value = draft slots per request for the next step:
    ``k`` while the gate allows drafting (<= ``max_running`` requests), else 0."""
    if k < 1 or max_running < 1 or max_num_seqs < 1:
        raise ValueError("k, max_running and max_num_seqs must be >= 1")
    gate = MaxRunningGate(max_running)  # the rule the proposer applies (DASSpeculator.gate_allows)
    return [0] + [k if gate.allows(n) else 0 for n in range(1, max_num_seqs + 1)]


def _wanted(scheduler: Any) -> int | None:
    """The gate's ``max_running`` if ``scheduler`` should get the table, else None."""
    spec = getattr(scheduler.vllm_config, "speculative_config", None)
    if spec is None or not spec.use_ngram_gpu() or scheduler.num_spec_tokens < 1:
        return None
    if scheduler.dynamic_sd_lookup is not None:  # AttributeError if vLLM renamed it: feature off
        return None  # the engine configured a schedule of its own
    config = config_from_vllm(scheduler.vllm_config)
    if config is None or not config.async_scheduling or not config.scheduler_gate:
        return None
    return config.gate.max_running if config.gate.mode == "max_running" else None


def _table(scheduler: Any) -> tuple[int, list[int]] | None:
    """(max_running, lookup table) for ``scheduler``, or None when it gets none."""
    max_running = _wanted(scheduler)
    if max_running is None:
        return None
    return max_running, gate_lookup(scheduler.num_spec_tokens, max_running, scheduler.scheduler_config.max_num_seqs)


def _wrap_init(orig: Any) -> Any:
    @functools.wraps(orig)
    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        orig(self, *args, **kwargs)
        table = versions.probe(FEATURE, lambda: _table(self), None)
        if table is not None:
            max_running, self.dynamic_sd_lookup = table
            logger.info("DAS: scheduler reserves draft slots only for steps of <= %d requests", max_running)

    setattr(__init__, _MARK, True)
    return __init__


def install(scheduler_cls: Any = None) -> bool:
    """Wrap ``scheduler_cls.__init__`` (default vLLM's V1 ``Scheduler``, which the async
    scheduler inherits). Idempotent; returns True if it patched, False when already patched or
    when the feature is off (untested vLLM, or no ``__init__`` of its own: switched off)."""
    return bool(versions.optional_patch(FEATURE, _install, scheduler_cls))


def _install(scheduler_cls: Any) -> bool:
    if scheduler_cls is None:
        from vllm.v1.core.sched.scheduler import Scheduler as scheduler_cls
    current = vars(scheduler_cls)["__init__"]
    if getattr(current, _MARK, False):
        return False
    scheduler_cls.__init__ = _wrap_init(current)
    return True
