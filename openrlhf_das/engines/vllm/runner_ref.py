"""The model runner a DAS proposer belongs to, handed over explicitly.

vLLM builds the suffix proposer inside ``GPUModelRunner.__init__`` as
``SuffixDecodingProposer(self.vllm_config)``: no reference to the runner, whose ``requests``
the proposer needs (``SamplingParams.extra_args["das"]`` of each request, and which requests
vLLM forgot, so their trees are freed). :func:`install` wraps ``GPUModelRunner.__init__``
(``CPUModelRunner`` calls it through ``super()``) so that while a runner is being constructed,
this thread's :func:`constructing` returns it; the DAS proposer calls
:func:`runner_for` in its constructor and raises there (engine start, before any rollout) when
no runner, or another engine's, is under construction.

vLLM imports the runner module after plugins load, so :func:`install_when_imported` (called by
the plugin in every vLLM process) wraps the class right after the module executes, through a
post-import hook (:class:`~openrlhf_das.post_import.PostImportHook`, the
one the OpenRLHF patches use); if the module is already imported it wraps it at once.
Version gate: the wrap is a core patch of a private vLLM class; when the runner module lacks
``GPUModelRunner`` (a rename), nothing is wrapped, the import goes on, stock engines run, and
a DAS proposer refuses with :class:`~openrlhf_das.versions.UnsupportedVersionError` naming the
installed and tested versions.

Stdlib only (plus :mod:`openrlhf_das.versions` and the post-import hook): importing it imports
no vLLM.
"""

from __future__ import annotations

import functools
import logging
import sys
import threading
from typing import Any, Callable

from ... import versions
from ...post_import import PostImportHook  # stdlib only; shared with the OpenRLHF patches

logger = logging.getLogger(__name__)

RUNNER_MODULE = "vllm.v1.worker.gpu_model_runner"
RUNNER_CLASS = "GPUModelRunner"
FEATURE = "runner reference (GPUModelRunner.__init__)"
_MARK = "_das_runner_ref"

_local = threading.local()
_lock = threading.Lock()
_failure: str | None = None
"""Why the runner class could not be wrapped (DAS proposers then refuse at construction)."""


def constructing() -> Any:
    """The model runner whose ``__init__`` is running in this thread (innermost), or None."""
    stack = getattr(_local, "stack", None)
    return stack[-1] if stack else None


def runner_for(vllm_config: Any, what: str) -> Any:
    """The runner under construction that is building the proposer for ``vllm_config``.

    Raises :class:`~openrlhf_das.versions.UnsupportedVersionError` when the runner class could
    not be wrapped, and ``RuntimeError`` when no runner (or a runner of another engine) is
    being constructed in this thread, e.g. when the proposer is built outside vLLM's runner or
    the runner module was never imported after the plugin registered."""
    if _failure is not None:
        raise versions.UnsupportedVersionError(f"{what}: {_failure}")
    runner = constructing()
    if runner is None:
        raise RuntimeError(
            f"{what}: built outside a vLLM model runner's construction, so it has no runner (its "
            f"per-request metadata and freeing of finished requests need one). DAS proposers are built "
            f"by vLLM's {RUNNER_CLASS}.__init__ once the openrlhf_das plugin is registered "
            f"(entry point vllm.general_plugins; check VLLM_PLUGINS).")
    if getattr(runner, "vllm_config", None) is not vllm_config:
        raise RuntimeError(f"{what}: the model runner under construction belongs to another engine "
                           f"({type(runner).__name__} with a different vllm_config)")
    return runner


def _wrap(init: Callable[..., None]) -> Callable[..., None]:
    @functools.wraps(init)
    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        stack = _local.__dict__.setdefault("stack", [])
        stack.append(self)
        try:
            init(self, *args, **kwargs)
        finally:
            stack.pop()

    setattr(__init__, _MARK, True)
    return __init__


def install(runner_cls: Any) -> bool:
    """Wrap ``runner_cls.__init__`` (idempotent; True if it wrapped now)."""
    with _lock:
        current = vars(runner_cls)["__init__"]  # KeyError: no __init__ of its own (drift)
        if getattr(current, _MARK, False):
            return False
        runner_cls.__init__ = _wrap(current)
        return True


def _install_from(module: Any) -> None:
    """Wrap the class of the freshly imported runner ``module``; a drift is recorded (DAS
    proposers refuse later) and never raised into the import (stock engines must run)."""
    global _failure
    try:
        versions.core_patch(FEATURE, lambda: install(getattr(module, RUNNER_CLASS)))
    except versions.UnsupportedVersionError as exc:
        _failure = str(exc)
        logger.warning("openrlhf-das: %s; DAS engines will refuse to start", exc)


_HOOK = PostImportHook([RUNNER_MODULE], lambda name, module: _install_from(module))


def install_when_imported() -> None:
    """Wrap the runner class now if its module is imported, else right after its import."""
    module = sys.modules.get(RUNNER_MODULE)
    if module is not None:
        _install_from(module)
    else:
        _HOOK.install()


def _reset_for_tests() -> None:
    global _failure
    _failure = None
