"""Trainer-side DAS hooks on OpenRLHF's ``SamplesGenerator`` (sync and async trainers alike).

Both ``PPOTrainer.fit`` (sync) and ``GenerateSamplesActor.fit`` (async) get each step's rollouts
from ``SamplesGenerator.generate_samples``, so that one method is the step boundary:

1. **before** a step's generation: if the history actor prepared snapshots after the previous
   step, push them to every engine and wait for the swap (``push_snapshots``): the engines draft
   from step ``s-1``'s history when step ``s`` starts;
2. during it: every finished response (``_process_response_into_experience`` sees all of them,
   also those dynamic filtering later drops) is captured as a rollout;
3. **right after** it: the rollouts go to the history actor (``add_rollouts``) and the step is
   closed (``end_step(step, push=False)``): the actor folds the history, pulls and records the
   engines' acceptance stats and builds the next snapshots in the background — overlapping the
   training step (sync) or the queue hand-off (async). The step's main DAS scalars are added to
   the ``info`` of its experiences (:data:`LOGGED_METRICS`), so OpenRLHF's own wandb/TensorBoard
   logs show them next to reward and length.

Dispatch (``_dispatch_prompts_to_vllm``) is OpenRLHF's own, run over routing proxies of the
engines: each ``generate_responses`` call gets a ``problem_id`` keyword argument (resolved from the
prompt text here, once) and, with ``sticky``, goes to engine ``engine_for_problem(problem_id, n)``
whichever engine OpenRLHF's load balancer chose. The DAS rollout actor returns the id with every
response (``das_problem_id``), so capturing a rollout does not resolve it again. Length classes
go from the history actor to the engines with their history, not through the trainer.

What crosses to the history actor per response: the problem id, the response tokens (int32),
the prompt's length (not its tokens: only counted there), the reward.

Evaluation generation (``generate_eval_samples``) is tagged too but never recorded as history.
Everything here is inert unless this process has a DAS config and the history actor exists
(i.e. the engines are DAS engines).

Version gate: :func:`patch` checks every private method it wraps (:data:`CORE_METHODS`) before
wrapping any, and raises :class:`~openrlhf_das.versions.UnsupportedVersionError` (naming the
installed and tested OpenRLHF) when one is missing; ``_generate_vllm`` (partial rollouts only)
is optional: without it ``openrlhf.partial_rollout`` is switched off (the CLI refuses
``--das.partial_rollout`` then, :func:`partial_rollout_supported`).
"""

from __future__ import annotations

import collections
import logging
import time
from typing import Any, Callable

import numpy as np

from ... import versions
from . import problem_ids, settings


def _make_logger() -> logging.Logger:
    """OpenRLHF's logger setup when available (its trainer processes print INFO), else stdlib."""
    try:
        from openrlhf.utils.logging_utils import init_logger
    except ImportError:  # pragma: no cover - OpenRLHF absent
        return logging.getLogger(__name__)
    return init_logger("openrlhf_das")


logger = _make_logger()

ADD_CHUNK = 256
"""Rollouts per ``add_rollouts`` call (bounds one Ray message)."""


class GeneratorState:
    """DAS state of one ``SamplesGenerator`` (kept on it as ``_das``)."""

    def __init__(self, history: Any, integ: settings.IntegrationSettings) -> None:
        import ray

        self.history = history
        self.sticky = integ.sticky
        self.step = int(ray.get(history.status.remote())["last_step"]) + 1  # continue a resumed run
        self.capturing = False
        self.captured: list[dict[str, Any]] = []
        # a resumed job's history actor has the restored history ready (resume_at): push it before
        # the first generation; otherwise push_snapshots() is a no-op
        self.push_pending = True
        self.events: collections.deque[tuple[str, int]] = collections.deque(maxlen=3000)
        """("push"|"generate"|"end_step", step) in order (the last 1000 steps): the step-boundary
        protocol, for tests and post-mortems."""
        self.last_result: dict[str, Any] | None = None

    # ------------------------------------------------------------------ step protocol
    def before_generation(self) -> None:
        import ray

        if self.push_pending:
            self.push_pending = False
            try:
                loaded = ray.get(self.history.push_snapshots.remote())
            except Exception:  # noqa: BLE001 - DAS only speeds rollouts up: never stop training
                logger.exception("DAS: snapshot push before step %d failed; engines keep older history", self.step)
            else:
                errors = [e["error"] for e in loaded if "error" in e]
                if errors:
                    logger.error("DAS: snapshot push before step %d failed on some engines: %s", self.step, errors)
                self.events.append(("push", self.step))
        self.events.append(("generate", self.step))
        self.captured = []
        self.capturing = True

    def after_generation(self, seconds: float) -> None:
        import ray

        self.capturing = False
        rollouts, self.captured = self.captured, []
        if not rollouts:  # served from OpenRLHF's sample buffer: no generation, no step
            self.events.pop()
            return
        step = self.step
        for r in rollouts:
            r["step"] = step
        self.step = step + 1
        try:
            refs = [self.history.add_rollouts.remote(rollouts[i : i + ADD_CHUNK]) for i in range(0, len(rollouts), ADD_CHUNK)]
            end = self.history.end_step.remote(step, rollout_seconds=seconds, push=False)
            ray.get(refs)
            result = ray.get(end)
        except Exception:  # noqa: BLE001 - DAS only speeds rollouts up: never stop training
            logger.exception("DAS: recording step %d failed; its rollouts are not in the history", step)
            return
        self.events.append(("end_step", step))
        self.push_pending = True
        self.last_result = result
        metrics = result.get("metrics") or {}
        if result.get("errors"):
            logger.error("DAS step %d: %s", step, result["errors"])
        logger.info(
            "DAS step %d: %d rollouts, %.1f s generation; %s",
            step, len(rollouts), seconds,
            ", ".join(f"{k}={v:.4g}" for k, v in sorted(metrics.items())
                      if isinstance(v, (int, float)) and "/bucket/" not in k and "/class/" not in k),
        )

    def capture(self, response: dict[str, Any]) -> None:
        tokens = response.get("observation_tokens")
        ranges = response.get("action_ranges") or []
        if tokens is None or not ranges:
            return
        tokens = np.asarray(tokens, dtype=np.int32)
        reward = response.get("reward")
        pid = response.get("das_problem_id")  # carried from dispatch by the DAS rollout actor
        self.captured.append({
            "problem_id": pid if pid else problem_ids.resolve(response["prompt"]),
            "prompt_tokens": int(ranges[0][0]),
            # generated tokens only (a multi-turn agent's environment feedback is left out)
            "response_token_ids": np.concatenate([tokens[s:e] for s, e in ranges]),
            "step": 0,  # set at the end of the step
            "reward": None if reward is None else float(np.asarray(_to_numpy(reward)).reshape(-1)[0]),
        })


def _to_numpy(x: Any) -> Any:
    detach = getattr(x, "detach", None)
    return detach().cpu().numpy() if detach is not None else x


# ---------------------------------------------------------------------- state lookup
_MISSING = object()


def state_of(generator: Any) -> GeneratorState | None:
    """The generator's DAS state (created on first use), or None when DAS is off here."""
    st = generator.__dict__.get("_das", _MISSING)
    if st is not _MISSING:
        return st
    st = None
    current = settings.current()
    if current is not None and getattr(generator, "vllm_engines", None):
        import ray

        _, integ = current
        try:
            history = ray.get_actor(integ.history_actor_name)
        except ValueError:
            logger.warning(
                "DAS config is set but no history actor %r exists (engines not created by the DAS "
                "create_vllm_engines?): rollouts are not recorded", integ.history_actor_name,
            )
        else:
            st = GeneratorState(history, integ)
    generator.__dict__["_das"] = st
    return st


# ---------------------------------------------------------------------- engine routing
class _RoutedEngine:
    """Proxy of one engine handle: ``generate_responses.remote`` gets the problem id and, when
    sticky, goes to the engine of the problem; everything else is the engine's."""

    def __init__(self, engines: list[Any], index: int, st: GeneratorState) -> None:
        self._engines, self._index, self._st = engines, index, st

    def __getattr__(self, name: str) -> Any:
        return getattr(self._engines[self._index], name)

    @property
    def generate_responses(self) -> "_RoutedMethod":
        return _RoutedMethod(self)


class _RoutedMethod:
    def __init__(self, proxy: _RoutedEngine) -> None:
        self._p = proxy

    def remote(self, *args: Any, **kwargs: Any) -> Any:
        from ...ray.sharding import engine_for_problem

        p = self._p
        prompt = kwargs["prompt"] if "prompt" in kwargs else args[0]
        pid = problem_ids.resolve(prompt)
        index = engine_for_problem(pid, len(p._engines)) if p._st.sticky else p._index
        kwargs["problem_id"] = pid
        return p._engines[index].generate_responses.remote(*args, **kwargs)


# ---------------------------------------------------------------------- patched methods
CORE_METHODS = ("generate_samples", "_process_response_into_experience", "_dispatch_prompts_to_vllm")
"""``SamplesGenerator`` methods DAS wraps and cannot run without."""
PARTIAL_FEATURE = "openrlhf.partial_rollout"


def patch(cls: type) -> None:
    """Patch ``SamplesGenerator`` in place (idempotent); see the module docstring's version gate."""
    versions.require_attrs(cls, CORE_METHODS, "openrlhf.SamplesGenerator", ("openrlhf",))
    if getattr(cls.generate_samples, "__das_patched__", False):
        return
    _wrap(cls, "generate_samples", _generate_samples)
    _wrap(cls, "_process_response_into_experience", _process_response)
    _wrap(cls, "_dispatch_prompts_to_vllm", _dispatch)
    versions.optional_patch(PARTIAL_FEATURE, _wrap, cls, "_generate_vllm", _generate_vllm, components=("openrlhf",))


def partial_rollout_supported(cls: type) -> str | None:
    """None if ``--das.partial_rollout`` can run on ``SamplesGenerator`` class ``cls`` and the
    installed OpenRLHF, else why not: :func:`.partial.generate_vllm` replaces ``_generate_vllm``
    and calls ``_dispatch_prompts_to_vllm``, ``_process_response_into_experience`` and the
    module's ``_collect_prompt_batch``."""
    import sys

    why = versions.untested("openrlhf")
    module = sys.modules.get(cls.__module__)
    missing = [f"SamplesGenerator.{n}" for n in ("_generate_vllm", *CORE_METHODS[1:]) if not callable(getattr(cls, n, None))]
    if not callable(getattr(module, "_collect_prompt_batch", None)):
        missing.append(f"{cls.__module__}._collect_prompt_batch")
    if why is None and missing:
        why = f"OpenRLHF has no {', '.join(missing)} (installed {versions.installed('openrlhf').label})"
    return why


def _wrap(cls: type, name: str, make: Callable[[Callable], Callable]) -> None:
    original = getattr(cls, name)
    wrapped = make(original)
    wrapped.__name__ = original.__name__
    wrapped.__qualname__ = original.__qualname__
    wrapped.__doc__ = original.__doc__
    wrapped.__wrapped__ = original
    wrapped.__das_original__ = original
    wrapped.__das_patched__ = True
    setattr(cls, name, wrapped)


def _generate_samples(original: Callable) -> Callable:
    def generate_samples(self, **generate_kwargs):
        st = state_of(self)
        if st is None:
            return original(self, **generate_kwargs)
        st.before_generation()
        t0 = time.perf_counter()
        try:
            out = original(self, **generate_kwargs)
        finally:
            st.capturing = False
        step = st.step
        st.after_generation(time.perf_counter() - t0)
        if st.step != step:  # a step was recorded: its DAS scalars go into OpenRLHF's own logs
            tag_experiences([*out[0], *getattr(self, "_sample_buffer", [])], st.last_result)
        return out

    return generate_samples


LOGGED_METRICS = ("das/acceptance_rate", "das/accepted_per_step", "das/drafted", "das/accepted", "das/propose_seconds")
"""DAS scalars put into every experience's ``info`` (OpenRLHF averages ``info`` per step into its
wandb/TensorBoard logs, so they appear there as ``train/das/...``)."""


def tag_experiences(experiences: list[Any], result: dict[str, Any] | None) -> None:
    """Set :data:`LOGGED_METRICS` of the step ``result`` in each untagged experience's ``info``
    (0.0 where the step has no value: every experience of a DAS run has the same keys, which
    OpenRLHF's batching requires)."""
    import torch

    metrics = (result or {}).get("metrics") or {}
    for exp in experiences:
        info = getattr(exp, "info", None)
        if info is None or LOGGED_METRICS[0] in info:
            continue
        for key in LOGGED_METRICS:
            info[key] = torch.tensor([float(metrics.get(key, 0.0))])


def _process_response(original: Callable) -> Callable:
    def process_response_into_experience(self, response, **generate_kwargs):
        st = state_of(self)
        if st is not None and st.capturing:
            try:
                st.capture(response)
            except Exception:  # noqa: BLE001 - history is best effort; never break a rollout
                logger.exception("DAS: could not record a rollout")
        experience = original(self, response, **generate_kwargs)
        segments = response.get("das_weight_versions") if isinstance(response, dict) else None
        if segments is not None:  # partial rollouts: which weight version produced which tokens
            import torch

            from .partial import version_info

            experience.das_weight_versions = segments
            for key, value in version_info(segments).items():
                experience.info[key] = torch.tensor([value])
        return experience

    return process_response_into_experience


def _generate_vllm(original: Callable) -> Callable:
    def generate_vllm(self, dataloader_iter, num_prompts, dynamic_filtering, **generate_kwargs):
        st = state_of(self)
        current = settings.current()
        training = dataloader_iter is not None and dataloader_iter is getattr(self, "_dataloader_iter", None)
        if st is None or current is None or not current[1].partial_rollout or not training:
            return original(self, dataloader_iter, num_prompts, dynamic_filtering, **generate_kwargs)
        from .partial import generate_vllm as partial_generate

        return partial_generate(self, dataloader_iter, num_prompts, dynamic_filtering,
                                current[1].partial_max_staleness, **generate_kwargs)

    return generate_vllm


def _dispatch(original: Callable) -> Callable:
    def dispatch_prompts_to_vllm(self, prompts, labels, *args, **kwargs):
        st = state_of(self)
        if st is None:
            return original(self, prompts, labels, *args, **kwargs)
        engines = self.vllm_engines
        self.vllm_engines = [_RoutedEngine(engines, i, st) for i in range(len(engines))]
        try:
            return original(self, prompts, labels, *args, **kwargs)
        finally:
            self.vllm_engines = engines

    return dispatch_prompts_to_vllm
