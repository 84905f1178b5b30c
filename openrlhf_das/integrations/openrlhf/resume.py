"""Resumed OpenRLHF jobs keep the DAS history (``--ckpt.load_enable``).

Two methods of OpenRLHF's ``BasePPOTrainer`` (the sync ``PPOTrainer`` and the async
``TrainingActor`` both inherit them) are wrapped:

* ``save_logs_and_checkpoints(global_step, ...)``: after OpenRLHF's own save, when it saved a
  checkpoint (``global_step % ckpt.save_steps == 0``), the history actor checkpoints the history
  of that global step (``RolloutHistoryActor.save_for_global_step``: DAS steps ``<= G - 1``);
* ``init_checkpoint_states()``: when OpenRLHF resumes (its states carry ``global_step`` G > 0),
  the history actor rewinds to G (``RolloutHistoryActor.resume_at``): that checkpoint's history,
  step records of later steps set aside, the restored snapshot built for the engines. The
  trainer side's step counter (``samples.GeneratorState``, created at the first generation, i.e.
  after this call) then starts at DAS step G, and its first generation pushes the restored
  snapshot, so the first resumed step drafts from the history the job had at G.

Numbering (:mod:`openrlhf_das.ray.resume`): DAS step ``s`` is the rollout of global step ``s + 1``.
A failure here is logged and never stops training (DAS only speeds rollouts up). With DAS off in
the process, or no history actor, OpenRLHF's methods run alone.
"""

from __future__ import annotations

import logging
from typing import Any, Callable

from . import settings

logger = logging.getLogger(__name__)

FEATURE = "openrlhf.resume_history"
METHODS = ("init_checkpoint_states", "save_logs_and_checkpoints")


def patch(module: Any) -> None:
    """Wrap ``module.BasePPOTrainer``'s :data:`METHODS` in place (idempotent)."""
    cls = module.BasePPOTrainer  # AttributeError: feature off (optional patch)
    for name in METHODS:
        getattr(cls, name)
    for name, make in (("init_checkpoint_states", _init_checkpoint_states),
                       ("save_logs_and_checkpoints", _save_logs_and_checkpoints)):
        original = getattr(cls, name)
        if getattr(original, "__das_patched__", False):
            continue
        wrapped = make(original)
        wrapped.__name__, wrapped.__qualname__, wrapped.__doc__ = original.__name__, original.__qualname__, original.__doc__
        wrapped.__wrapped__ = wrapped.__das_original__ = original
        wrapped.__das_patched__ = True
        setattr(cls, name, wrapped)


def _history() -> Any | None:
    current = settings.current()
    if current is None:
        return None
    import ray

    try:
        return ray.get_actor(current[1].history_actor_name)
    except ValueError:
        return None


def _init_checkpoint_states(original: Callable) -> Callable:
    def init_checkpoint_states(self):
        states = original(self)
        global_step = int((states or {}).get("global_step") or 0)
        if global_step > 0:
            history = _history()
            if history is not None:
                import ray

                try:
                    res = ray.get(history.resume_at.remote(global_step))
                except Exception:  # noqa: BLE001 - DAS only speeds rollouts up: never stop training
                    logger.exception("DAS: could not rewind the history to global step %d", global_step)
                else:
                    logger.info("DAS: resumed at global step %d with history from %s (%s rollouts, %s tokens); "
                                "%d step records set aside", global_step, res["source"],
                                res["history"]["rollouts"], res["history"]["tokens"], res["rewound_records"])
        return states

    return init_checkpoint_states


def _save_logs_and_checkpoints(original: Callable) -> Callable:
    def save_logs_and_checkpoints(self, global_step, logs_dict=None, client_states=None):
        out = original(self, global_step, logs_dict, client_states)
        save_steps = getattr(getattr(self.args, "ckpt", None), "save_steps", None)
        if isinstance(save_steps, (int, float)) and save_steps > 0 and global_step % save_steps == 0:
            history = _history()
            if history is not None:
                import ray

                try:
                    ray.get(history.save_for_global_step.remote(int(global_step)))
                except Exception:  # noqa: BLE001 - DAS only speeds rollouts up: never stop training
                    logger.exception("DAS: could not checkpoint the history at global step %d", global_step)
        return out

    return save_logs_and_checkpoints
