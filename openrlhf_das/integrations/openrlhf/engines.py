"""DAS rollout engines for OpenRLHF: the rollout actor and the ``create_vllm_engines`` wrapper.

* :class:`DASRolloutActor` subclasses OpenRLHF's ``RolloutRayActor`` body (the class under the
  ``@ray.remote``; Ray forbids subclassing the remote wrapper). Its ``generate_responses`` takes
  two extra keyword arguments, ``problem_id`` and ``length_class``, and every vLLM request it
  issues for them (all ``num_samples`` samples, every turn of a multi-turn agent) carries them in
  ``SamplingParams.extra_args["das"]`` on a per-request copy (:func:`with_das_metadata`; OpenRLHF
  shares one ``SamplingParams`` object). Without ``problem_id`` the id is the prompt hash
  (:func:`~.problem_ids.prompt_hash`), the same the trainer side computes. Every response it
  returns carries the id (``das_problem_id``), so the trainer records it without resolving the
  prompt again. ``das_rpc(method,
  *args, **kwargs)`` forwards to ``llm.collective_rpc`` (list over workers), which the history
  actor uses for ``das_load_snapshot`` / ``das_get_stats``. With ``--das.partial_rollout`` its
  ``pause_generation`` / ``resume_generation`` cut and resume in-flight samples across weight syncs
  and tag their tokens with weight versions (:mod:`.partial`).
* :func:`create_vllm_engines` has OpenRLHF's signature and placement logic (it calls OpenRLHF's
  own function), but each engine is a :class:`DASRolloutActor` with ``speculative_config``
  (method ``suffix``, k = the largest DAS budget) and ``worker_extension_cls`` =
  :class:`~.worker.DASWorkerWrap`; the DAS config goes to each actor's engine in vLLM's
  ``additional_config["das"]`` (an engine argument, like the two above: the actor hands every
  leftover keyword to ``AsyncEngineArgs``). Then it starts the history actor
  (:func:`start_history_actor`). With DAS off in the driver (no ``OPENRLHF_DAS_CONFIG``, see
  :mod:`.settings`) it is OpenRLHF's.

Importing this module imports Ray, vLLM and OpenRLHF's rollout module. Version gate: importing
it raises :class:`~openrlhf_das.versions.UnsupportedVersionError` (naming the installed and
tested OpenRLHF) when the rollout actor's class body or a method :class:`DASRolloutActor`
overrides is missing; :func:`create_vllm_engines` checks the module global it swaps first.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
from typing import Any

import ray
from openrlhf.trainer.ray import vllm_engine as _ve
from vllm.utils import random_uuid

from ... import versions
from ...config import DASConfig
from ...engines.vllm.factory import additional_config, speculative_config, with_das_metadata
from . import partial, problem_ids, settings
from .worker import WORKER_WRAP

logger = logging.getLogger(__name__)

_BASE: type = versions.actor_class(getattr(_ve, "RolloutRayActor", None), "openrlhf.RolloutRayActor")
"""OpenRLHF's rollout actor class body (under ``@ray.remote``)."""
versions.require_attrs(_BASE, ["generate", "generate_responses", "pause_generation", "resume_generation"],
                       "openrlhf.RolloutRayActor", ("openrlhf",))

_REQUEST = contextvars.ContextVar("openrlhf_das_request", default=None)
"""(problem_id, length_class) of the ``generate_responses`` call whose tasks are running.
asyncio tasks copy the context when created, so the executor's concurrent ``generate`` calls
each see the value of the call that spawned them."""


class DASRolloutActor(_BASE):  # type: ignore[misc, valid-type]
    """OpenRLHF ``RolloutRayActor`` + per-request DAS metadata + ``das_rpc``."""

    async def __init__(self, *args: Any, das_partial: bool = False, **kwargs: Any) -> None:
        self._das_partial = partial.EnginePartialState() if das_partial else None
        await super().__init__(*args, **kwargs)

    async def generate(self, prompt_token_ids, sampling_params, multi_modal_data=None):
        meta = _REQUEST.get()
        if self._das_partial is not None and not multi_modal_data:
            def tag(params: Any, offset: int) -> Any:
                if meta is None:
                    return params
                return with_das_metadata(params, meta[0], meta[1], generated_offset=offset)

            return await self._das_partial.generate(self.llm, list(prompt_token_ids), sampling_params, tag, random_uuid)
        if meta is not None:
            sampling_params = with_das_metadata(sampling_params, meta[0], meta[1])
        return await super().generate(prompt_token_ids, sampling_params, multi_modal_data)

    async def pause_generation(self):
        if self._das_partial is not None:
            await self._das_partial.pause(self.llm)  # cut: abort in-flight samples, keep their tokens
        await super().pause_generation()

    async def resume_generation(self):
        await super().resume_generation()
        if self._das_partial is not None:
            self._das_partial.resume()  # new weight version; cut samples resubmit

    def das_partial_stats(self) -> dict[str, int] | None:
        """Cut/resume counters and the engine's weight version (None without partial rollouts)."""
        p = self._das_partial
        return None if p is None else {**p.stats, "weight_version": p.version, "inflight": len(p.inflight)}

    async def generate_responses(
        self,
        prompt: str,
        label: str,
        sampling_params,
        max_length: int,
        hf_tokenizer,
        num_samples: int = 1,
        images=None,
        problem_id: str | None = None,
        length_class: str | None = None,
    ):
        pid = problem_id if problem_id else problem_ids.prompt_hash(prompt)
        token = _REQUEST.set((pid, length_class))
        try:
            if self._das_partial is None:
                return _with_problem_id(await super().generate_responses(
                    prompt, label, sampling_params, max_length, hf_tokenizer, num_samples=num_samples, images=images
                ), pid)

            async def one_sample() -> dict[str, Any]:
                # OpenRLHF's generate_responses runs `executor.execute` once per sample; here each
                # runs in its own task with its own weight-version record.
                runs: list[list[int]] = []
                partial.SEGMENTS.set(runs)
                response = await self.executor.execute(
                    prompt=prompt, label=label, sampling_params=sampling_params, max_length=max_length,
                    hf_tokenizer=hf_tokenizer, llm_engine=self, images=images,
                )
                response["das_weight_versions"] = partial.response_segments(runs)
                return response

            return _with_problem_id(await asyncio.gather(*(one_sample() for _ in range(num_samples))), pid)
        finally:
            _REQUEST.reset(token)

    async def das_rpc(self, method: str, *args: Any, **kwargs: Any) -> list[Any]:
        """``collective_rpc(method, args, kwargs)`` on the engine's workers (one result per
        worker / TP rank)."""
        return await self.llm.collective_rpc(method, args=args, kwargs=kwargs)


DASRolloutRayActor = ray.remote(DASRolloutActor)


def _with_problem_id(responses: list[Any], pid: str) -> list[Any]:
    """``responses`` (OpenRLHF's dicts) with ``das_problem_id`` set: the id travels back with them."""
    for r in responses:
        if isinstance(r, dict):
            r["das_problem_id"] = pid
    return responses


class _DASActorFactory:
    """Stands in for ``RolloutRayActor`` while OpenRLHF's ``create_vllm_engines`` runs: same
    ``.options(...).remote(**actor_kwargs)`` calls, DAS actor + DAS engine kwargs."""

    def __init__(self, config: DASConfig, partial_rollout: bool = False) -> None:
        self.config = config
        self.partial_rollout = partial_rollout

    def options(self, **options: Any) -> "_DASActorOptions":
        return _DASActorOptions(self.config, options, self.partial_rollout)


class _DASActorOptions:
    def __init__(self, config: DASConfig, options: dict[str, Any], partial_rollout: bool) -> None:
        self.config = config
        self.options = options
        self.partial_rollout = partial_rollout

    def remote(self, *args: Any, **kwargs: Any) -> Any:
        if "speculative_config" in kwargs:
            raise ValueError("create_vllm_engines: a speculative_config is already set; DAS sets its own")
        kwargs["speculative_config"] = speculative_config(self.config)
        kwargs["worker_extension_cls"] = WORKER_WRAP
        kwargs["additional_config"] = additional_config(self.config, kwargs.get("additional_config"))
        kwargs["das_partial"] = self.partial_rollout
        return DASRolloutRayActor.options(**self.options).remote(*args, **kwargs)


_HISTORY_HANDLES: list[Any] = []
"""Driver-side references that keep the (non-detached) history actor alive for the job."""


def start_history_actor(engines: list[Any], config: DASConfig, integ: settings.IntegrationSettings) -> Any:
    """Start the named :class:`~openrlhf_das.ray.RolloutHistoryActor` over ``engines``."""
    from ...ray import create_history_actor

    actor = create_history_actor(
        integ.run_dir,
        config,
        engines,
        name=integ.history_actor_name,
        num_cpus=integ.history_cpus,
        pin_problems=integ.sticky,
        snapshot_every=integ.snapshot_every,
        mode="das",
        meta={"producer_integration": "openrlhf", "num_engines": len(engines), "sticky": integ.sticky},
    )
    ray.get(actor.status.remote())  # fail here, not at the first step, if it cannot start
    _HISTORY_HANDLES.append(actor)
    logger.info("DAS history actor %r started (run dir %s, %d engines)", integ.history_actor_name, integ.run_dir, len(engines))
    return actor


def create_vllm_engines(*args: Any, **kwargs: Any) -> list[Any]:
    """OpenRLHF's ``create_vllm_engines`` (same arguments) building DAS engines, plus the
    history actor; OpenRLHF's own when DAS is off in this process."""
    original = _original_create_vllm_engines()
    state = settings.current()
    if state is None:
        return original(*args, **kwargs)
    config, integ = state
    versions.require_attrs(_ve, ["RolloutRayActor"], "openrlhf.create_vllm_engines", ("openrlhf",))
    saved = _ve.RolloutRayActor
    _ve.RolloutRayActor = _DASActorFactory(config, integ.partial_rollout)
    try:
        engines = original(*args, **kwargs)
    finally:
        _ve.RolloutRayActor = saved
    start_history_actor(engines, config, integ)
    return engines


def _original_create_vllm_engines():
    fn = _ve.create_vllm_engines
    return getattr(fn, "__das_original__", fn)
