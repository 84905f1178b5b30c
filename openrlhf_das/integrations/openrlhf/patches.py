"""Apply the DAS patches to OpenRLHF in this process: ``apply()``.

Called in the driver by ``openrlhf_das.cli.train`` and in **every Ray worker process** through
``ray.init(runtime_env={"worker_process_setup_hook":
"openrlhf_das.integrations.openrlhf.patches.apply"})`` — OpenRLHF's trainer, generator and
rollout actors are separate processes, and a class patched in the driver is not patched there:
Ray ships ``@ray.remote`` classes with cloudpickle, which pickles classes of importable modules
*by reference* (the worker re-imports the module and gets the unpatched class). Only classes
pickled by value (defined in ``__main__`` or inside functions) carry driver-side changes, and
only if made before ``.remote()``.

``apply()`` is cheap and imports nothing heavy: for each target module it patches at once if
the module is already imported, else installs a post-import hook (a ``sys.meta_path`` finder
whose loader runs the patch right after the module body), so workers that never import OpenRLHF
(the history actor, queues) pay nothing. Targets:

* ``openrlhf.datasets.prompts_dataset.preprocess_data`` → also registers each row's explicit
  problem id (:mod:`.problem_ids`);
* ``openrlhf.trainer.ppo_utils.samples_generator.SamplesGenerator`` → step boundary, rollout
  capture, DAS request routing (:mod:`.samples`);
* ``openrlhf.trainer.ray.vllm_engine.create_vllm_engines`` and its re-export in
  ``openrlhf.trainer.ray`` → DAS engines + history actor (:mod:`.engines`);
* ``openrlhf.trainer.ppo_trainer.BasePPOTrainer`` checkpoint save/load → the history actor
  checkpoints with the trainer and rewinds to a resumed trainer checkpoint (:mod:`.resume`).

It also makes ``flash_attn``'s helper modules importable where flash-attn is missing
(:mod:`.flash_attn_shim`). The patched code checks at call time whether DAS is on
(``OPENRLHF_DAS_CONFIG``); with DAS off it runs OpenRLHF's original code.

Version gate (:mod:`openrlhf_das.versions`): the engine factory and the samples generator are
core patches — outside the tested OpenRLHF versions, or when their site is missing, patching
raises :class:`~openrlhf_das.versions.UnsupportedVersionError` (at import of the target module,
i.e. when the job's actors start, never mid-rollout). The problem-id hook is optional
(``openrlhf.problem_ids``): switched off with one warning, problem ids then fall back to the
prompt hash. So is the checkpoint hook (``openrlhf.resume_history``): without it a resumed job
starts its engines with empty history.
"""

from __future__ import annotations

import logging
import sys
import threading
from typing import Any, Callable

from ... import versions
from .flash_attn_shim import ensure_flash_attn
from ...post_import import PostImportHook

logger = logging.getLogger(__name__)

_lock = threading.RLock()
_applied: dict[str, bool] = {}
"""target module → patched in this process."""
_installed = False


# ---------------------------------------------------------------------- patch functions
def _patch_prompts_dataset(mod: Any) -> None:
    original = mod.preprocess_data  # AttributeError: feature off (optional)
    if getattr(original, "__das_patched__", False):
        return

    def preprocess_data(data, *args, **kwargs):
        prompt, label = original(data, *args, **kwargs)
        if _das_on():
            from . import problem_ids

            problem_ids.register(data, prompt)
        return prompt, label

    _mark_patched(preprocess_data, original)
    mod.preprocess_data = preprocess_data


def _mark_patched(wrapper: Any, original: Any) -> None:
    """Give ``wrapper`` the original's docstring and the markers that make patching idempotent."""
    wrapper.__doc__ = original.__doc__
    wrapper.__wrapped__ = original
    wrapper.__das_original__ = original
    wrapper.__das_patched__ = True


def _patch_samples_generator(mod: Any) -> None:
    from . import samples

    samples.patch(mod.SamplesGenerator)


def _patch_vllm_engine(mod: Any) -> None:
    versions.require_attrs(mod, ["create_vllm_engines", "RolloutRayActor"], "openrlhf.create_vllm_engines",
                           ("openrlhf",))
    original = mod.create_vllm_engines
    if getattr(original, "__das_patched__", False):
        return

    def create_vllm_engines(*args, **kwargs):
        if not _das_on():
            return original(*args, **kwargs)
        from . import engines

        return engines.create_vllm_engines(*args, **kwargs)

    _mark_patched(create_vllm_engines, original)
    mod.create_vllm_engines = create_vllm_engines


def _patch_ppo_trainer(mod: Any) -> None:
    from . import resume

    resume.patch(mod)


def _patch_trainer_ray_pkg(mod: Any) -> None:
    # ``from .vllm_engine import create_vllm_engines`` ran after vllm_engine was patched, so the
    # package already holds the patched function; re-bind in case it was imported otherwise.
    engine_mod = sys.modules.get("openrlhf.trainer.ray.vllm_engine")
    if engine_mod is not None and hasattr(mod, "create_vllm_engines"):
        mod.create_vllm_engines = engine_mod.create_vllm_engines


TARGETS: dict[str, Callable[[Any], None]] = {
    "openrlhf.datasets.prompts_dataset": _patch_prompts_dataset,
    "openrlhf.trainer.ppo_utils.samples_generator": _patch_samples_generator,
    "openrlhf.trainer.ray.vllm_engine": _patch_vllm_engine,
    "openrlhf.trainer.ray": _patch_trainer_ray_pkg,
    "openrlhf.trainer.ppo_trainer": _patch_ppo_trainer,
}

OPTIONAL: dict[str, str] = {"openrlhf.datasets.prompts_dataset": "openrlhf.problem_ids",
                            "openrlhf.trainer.ppo_trainer": "openrlhf.resume_history"}
"""Targets whose patch is optional -> its feature name; every other target is core."""


def _das_on() -> bool:
    from . import settings

    return settings.current() is not None


# ---------------------------------------------------------------------- machinery
def _run_patch(name: str, module: Any) -> None:
    with _lock:
        if _applied.get(name):
            return
        if name in OPTIONAL:
            versions.optional_patch(OPTIONAL[name], TARGETS[name], module, components=("openrlhf",))
        else:
            versions.core_patch(f"patch of {name}", TARGETS[name], module, components=("openrlhf",))
        _applied[name] = True
    logger.debug("openrlhf-das: patched %s", name)


_FINDER = PostImportHook(TARGETS, _run_patch, wanted=lambda name: not _applied.get(name))


def apply() -> dict[str, bool]:
    """Patch OpenRLHF in this process now or when it gets imported (idempotent). Also the
    Ray ``worker_process_setup_hook``. Returns :func:`status`."""
    global _installed
    ensure_flash_attn()
    with _lock:
        if not _installed:
            _FINDER.install()
            _installed = True
        for name in TARGETS:
            module = sys.modules.get(name)
            if module is not None and not _applied.get(name):
                _run_patch(name, module)
    return status()


def status() -> dict[str, Any]:
    """What this process has: hook installed, which targets are patched, flash_attn shim."""
    from .flash_attn_shim import shim_active

    return {
        "hook_installed": _installed,
        "patched": {name: bool(_applied.get(name)) for name in TARGETS},
        "flash_attn_shim": shim_active(),
        "disabled_features": versions.disabled_features(),
    }
