"""Engine settings for DAS: what to pass to ``vllm.LLM`` / ``AsyncEngineArgs``.

``engine_kwargs(config)`` returns the speculative config (method ``suffix`` with
``num_speculative_tokens`` = the largest DAS budget, no stock global cache; ``ngram_gpu`` with
``async_scheduling``) and the DAS worker extension. The DAS config itself travels in vLLM's
``additional_config`` under the key ``"das"`` (vLLM's ``SpeculativeConfig`` forbids extra keys):
``EngineArgs.additional_config`` becomes ``VllmConfig.additional_config``, which every engine
process gets with the rest of the engine's config, and from which the proposers and the
scheduler gate read it (:func:`config_from_vllm`). Nothing goes through ``os.environ``: engines
of one process each get their own config.
"""

from __future__ import annotations

import copy
import os
from typing import Any, Mapping

from ...config import DASConfig, LengthClass

WORKER_EXTENSION = "openrlhf_das.engines.vllm.worker_extension.DASWorkerExtension"


def speculative_config(config: DASConfig) -> dict[str, Any]:
    k = config.max_budget
    if k < 1:
        raise ValueError("every DAS budget is 0: nothing to draft (raise budgets.long.tokens)")
    if config.async_scheduling:  # the GPU-contract method vLLM keeps async; DAS replaces its proposer
        return {"method": "ngram_gpu", "num_speculative_tokens": k}
    return {
        "method": "suffix",
        "num_speculative_tokens": k,
        "suffix_decoding_max_tree_depth": config.max_depth,
        "suffix_decoding_max_cached_requests": 0,
        "suffix_decoding_min_token_prob": config.min_token_prob,
    }


ADDITIONAL_CONFIG_KEY = "das"
"""Key of the DAS config (``DASConfig.to_dict()``) in vLLM's ``additional_config``."""


def additional_config(config: DASConfig, extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """vLLM ``additional_config`` carrying ``config``, merged into ``extra`` (not mutated)."""
    out = dict(extra or {})
    out[ADDITIONAL_CONFIG_KEY] = config.to_dict()
    return out


def das_config_dict(vllm_config: Any) -> Mapping[str, Any] | None:
    """The raw DAS config of an engine's ``VllmConfig`` (None: not a DAS engine). Reads only
    ``vllm_config.additional_config`` (no vLLM import: the plugin's version gate uses it)."""
    extra = getattr(vllm_config, "additional_config", None)
    return extra.get(ADDITIONAL_CONFIG_KEY) if isinstance(extra, Mapping) else None


def config_from_vllm(vllm_config: Any) -> DASConfig | None:
    """The validated :class:`DASConfig` of an engine (None: a stock engine). A malformed value
    raises :class:`~openrlhf_das.config.DASConfigError` at engine start."""
    raw = das_config_dict(vllm_config)
    return None if raw is None else DASConfig.from_dict(raw)


CUDA_GRAPH_COMPILATION = {"mode": 0, "cudagraph_mode": "FULL_DECODE_ONLY"}
"""The measured winner on vLLM 0.26 / H100 (docs/gpu.md): CUDA graphs without inductor; with
speculation they only cover uniform (1 + k)-token decode steps, hence ``pad_drafts``.
``cudagraph_mode: "FULL"`` (non-uniform batches) produced garbage with ``mode: 0`` there."""


def engine_kwargs(
    config: DASConfig, worker_extension_cls: str = WORKER_EXTENSION, *, cuda_graphs: bool = False,
    extra_additional_config: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """kwargs to add to ``vllm.LLM(...)``/``AsyncEngineArgs(...)`` for a DAS engine: the
    speculative config, the worker extension and ``additional_config`` with the DAS config
    (merged into ``extra_additional_config``, the engine's other additional settings). Changes
    no process state.

    ``cuda_graphs=True`` (GPU): the recommended graph settings, with ``pad_drafts`` switched
    on so that every decode step replays a captured graph (measured 3.25x -> 1.37x of the
    no-speculation time on H100 in docs/gpu.md; unpadded steps run eager).
    """
    kw: dict[str, Any] = {}
    if cuda_graphs:
        config = config.with_overrides({"pad_drafts": True})
        kw["compilation_config"] = dict(CUDA_GRAPH_COMPILATION)
    return {"speculative_config": speculative_config(config), "worker_extension_cls": worker_extension_cls,
            "additional_config": additional_config(config, extra_additional_config), **kw}


def with_das_metadata(
    params: Any, problem_id: str | None, length_class: LengthClass | str | None = None, generated_offset: int = 0
) -> Any:
    """A copy of ``SamplingParams`` carrying the request's problem id and class in
    ``extra_args["das"]`` (OpenRLHF shares one SamplingParams across requests: never mutate).
    ``generated_offset`` (partial rollouts): tokens the sample generated before this request."""
    sp = copy.copy(params)
    extra = dict(sp.extra_args or {})
    das: dict[str, Any] = {}
    if problem_id is not None:
        das["problem_id"] = str(problem_id)
    if length_class is not None:
        das["length_class"] = LengthClass(length_class).value
    if generated_offset:
        das["generated_offset"] = int(generated_offset)
    extra["das"] = das
    sp.extra_args = extra
    return sp


def cpu_threads_bind(tensor_parallel: int) -> str | None:
    """``VLLM_CPU_OMP_THREADS_BIND`` for a tensor-parallel engine on vLLM's CPU backend: one core
    per worker (``"0|1"``), from this process's CPU affinity; None when there are fewer cores than
    workers. vLLM otherwise binds each worker to a NUMA node and refuses more workers than nodes."""
    cpus = sorted(os.sched_getaffinity(0))
    return "|".join(map(str, cpus[:tensor_parallel])) if len(cpus) >= tensor_parallel else None
