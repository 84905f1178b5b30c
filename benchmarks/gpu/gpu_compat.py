"""Compatibility shims for OpenRLHF 0.11.2 on the GPU bring-up stack (vLLM 0.26.0, DeepSpeed
0.19.6 built without ops, an image without the CUDA toolkit). Stdlib only; importing it changes
nothing. See docs/gpu.md, "Training stack". Bring-up scaffolding, not part of the
``openrlhf_das`` package (issue 23): import it with ``benchmarks/gpu`` on ``sys.path``
(``import gpu_compat``), or put ``benchmarks/gpu/gpu_compat_site`` on ``PYTHONPATH``.

What it changes, each only when its switch says so, and the same way in every process of a run
(driver, Ray actors, vLLM engine processes), so a DAS-on and a DAS-off run get the same shims:

1. **DeepSpeed's Adam** (``OPENRLHF_DAS_TORCH_ADAM``: ``1`` on, ``0`` off, unset/``auto``: on when
   no ``nvcc`` is found). OpenRLHF builds its DeepSpeed config with ``"optimizer": {"type":
   "AdamW", ...}``; DeepSpeed then creates ``FusedAdam``, whose CUDA op is JIT-compiled with
   ``nvcc`` at the first training step (the wheel is built with ``DS_BUILD_OPS=0``). Without a CUDA
   toolkit that fails (``MissingCUDAException``: CUDA_HOME does not exist). The shim adds
   ``"torch_adam": true`` to the optimizer params of every config OpenRLHF's
   ``get_train_ds_config`` returns (Adam/AdamW only, not with ``--ds.adam_offload``, not when
   the key is already there). DeepSpeed 0.19.6 (``DeepSpeedEngine.get_optimizer_configuration``)
   then uses ``torch.optim.AdamW(foreach=None)``, which ZeRO supports (``ZERO_SUPPORTED_OPTIMIZERS``).
   Same update rule as FusedAdam (AdamW, same lr/betas/eps/weight decay); numerics differ only in
   the order of floating-point operations. Nothing else on the GRPO path (ZeRO-2, bf16, no
   offload) builds an op: ZeRO-2 flattens with torch; DeepSpeed's import-time probe of every op
   tolerates a missing toolkit; the shared-memory comm op is CPU-accelerator only.

2. **vLLM engine arguments** (``OPENRLHF_DAS_VLLM_ENGINE_ARGS``: a JSON object, unset = nothing).
   OpenRLHF's ``create_vllm_engines`` passes a fixed set of engine arguments. On vLLM 0.26 the
   defaults with CUDA graphs on (``enforce_eager=False``: torch.compile + inductor, V1 runner)
   took minutes to start, and ``cudagraph_mode: FULL`` with ``mode: 0`` generated garbage
   (docs/gpu.md). Each key of the JSON object is set on every ``EngineArgs`` /
   ``AsyncEngineArgs`` right after its ``__post_init__``, **only where the caller left the
   field at its default**; ``compilation_config`` only when the caller set neither ``mode`` nor
   ``cudagraph_mode`` and ``enforce_eager`` is off (then the given keys are merged into the
   caller's config). Example (the measured GPU setting)::

       OPENRLHF_DAS_VLLM_ENGINE_ARGS='{"compilation_config": {"mode": 0, "cudagraph_mode": "FULL_DECODE_ONLY"}, "async_scheduling": false}'

Version gate (:mod:`openrlhf_das.versions`): each shim is an optional feature
(``gpu_compat.torch_adam``, ``gpu_compat.engine_args``); outside the tested OpenRLHF / vLLM
versions, when its patch raises, or when ``EngineArgs`` changed shape, it is switched off (one
message, ``versions.disabled_features()``) and the hooked import or engine goes on unpatched.

How it reaches every process: :func:`apply` patches the target modules in this process (now if
imported, else right after their import, through a ``sys.meta_path`` hook) and, with
``propagate=True``, appends :data:`SITE_DIR` to ``PYTHONPATH``. That folder holds a
``sitecustomize.py`` which Python imports at the start of every process that has the folder on
its path (Ray starts its workers, vLLM its engine processes, with the driver's environment):
it loads this file by path (no package imports) and calls :func:`apply`, then runs the next
``sitecustomize`` on ``sys.path``, if any. Putting :data:`SITE_DIR` on ``PYTHONPATH`` before the
driver starts (``benchmarks/gpu/grpo_compare.sh`` does) is the same as calling :func:`apply`
first thing in the driver.

How the GPU scripts use it: ``benchmarks/gpu/grpo_compare.sh`` puts :data:`SITE_DIR` on
``PYTHONPATH`` before the driver starts (both arms, every process); ``benchmarks/gpu/install.sh``
imports it for its import check. The product (``openrlhf_das.cli.train``) never imports it.
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import json
import logging
import os
import shutil
import sys
import threading
from typing import Any, Callable, Mapping

if __name__ != "_openrlhf_das_gpu_compat":
    from openrlhf_das import versions
    from openrlhf_das.post_import import PostImportHook
    from openrlhf_das.switches import switch
else:  # loaded by path from gpu_compat_site/sitecustomize.py at interpreter start: load the two
    # stdlib-only product modules it needs by path too, so no package ``__init__`` runs there

    def _load(name: str, path: str) -> Any:
        if name in sys.modules:
            return sys.modules[name]
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module  # before exec: dataclasses look their module up
        spec.loader.exec_module(module)
        return module

    _pkg = importlib.util.find_spec("openrlhf_das")  # a top-level find_spec runs no __init__
    if _pkg is None or not _pkg.submodule_search_locations:
        raise ImportError("gpu_compat: openrlhf_das is not importable (put the repository on PYTHONPATH)")
    _ROOT = list(_pkg.submodule_search_locations)[0]
    PostImportHook = _load("_openrlhf_das_post_import",
                           os.path.join(_ROOT, "post_import.py")).PostImportHook
    versions = _load("_openrlhf_das_versions", os.path.join(_ROOT, "versions.py"))
    switch = _load("_openrlhf_das_switches", os.path.join(_ROOT, "switches.py")).switch

logger = logging.getLogger("openrlhf_das.gpu_compat")

TORCH_ADAM_ENV = "OPENRLHF_DAS_TORCH_ADAM"
ENGINE_ARGS_ENV = "OPENRLHF_DAS_VLLM_ENGINE_ARGS"
SITE_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "gpu_compat_site")
"""Folder with the ``sitecustomize.py`` that applies these shims in every new process."""

_MARK = "__gpu_compat_patched__"
_lock = threading.RLock()
_said: set[str] = set()


# ---------------------------------------------------------------------- decisions (pure)
def find_nvcc(environ: Mapping[str, str] | None = None) -> str | None:
    """The ``nvcc`` torch's extension builder would use (CUDA_HOME / CUDA_PATH, else ``nvcc`` on
    PATH, else /usr/local/cuda), or None. Mirrors ``torch.utils.cpp_extension._find_cuda_home``
    without importing torch."""
    env = os.environ if environ is None else environ
    for var in ("CUDA_HOME", "CUDA_PATH"):
        home = env.get(var)
        if home:
            nvcc = os.path.join(home, "bin", "nvcc")
            return nvcc if os.access(nvcc, os.X_OK) else None
    found = shutil.which("nvcc", path=env.get("PATH", ""))
    if found:
        return found
    nvcc = "/usr/local/cuda/bin/nvcc"
    return nvcc if os.access(nvcc, os.X_OK) else None


def torch_adam_enabled(environ: Mapping[str, str] | None = None) -> bool:
    """Shim 1 on? ``OPENRLHF_DAS_TORCH_ADAM`` = 1/true/yes/on, 0/false/no/off, or unset/auto
    (on when :func:`find_nvcc` finds nothing)."""
    env = os.environ if environ is None else environ
    value = env.get(TORCH_ADAM_ENV, "auto").strip().lower()
    on = switch(value)
    if on is not None:
        return on
    if value not in ("", "auto"):
        raise ValueError(f"{TORCH_ADAM_ENV}={value!r}: use 1, 0 or auto")
    return find_nvcc(env) is None


def with_torch_adam(ds_config: dict[str, Any]) -> dict[str, Any]:
    """``ds_config`` with ``optimizer.params.torch_adam = True`` when its optimizer is Adam/AdamW,
    the optimizer is not offloaded (DeepSpeedCPUAdam serves that) and the key is not set yet;
    otherwise ``ds_config`` itself. The input is not modified (a copied dict is returned)."""
    opt = ds_config.get("optimizer") if isinstance(ds_config, dict) else None
    if not isinstance(opt, dict) or str(opt.get("type", "")).lower() not in ("adam", "adamw"):
        return ds_config
    params = opt.get("params") or {}
    if "torch_adam" in params:
        return ds_config
    offload = ((ds_config.get("zero_optimization") or {}).get("offload_optimizer") or {}).get("device")
    if str(offload).lower() in ("cpu", "nvme"):
        return ds_config
    return {**ds_config, "optimizer": {**opt, "params": {**params, "torch_adam": True}}}


def engine_args_overrides(environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The JSON object in ``OPENRLHF_DAS_VLLM_ENGINE_ARGS`` ({} when unset or empty)."""
    env = os.environ if environ is None else environ
    text = env.get(ENGINE_ARGS_ENV, "").strip()
    if not text:
        return {}
    value = json.loads(text)
    if not isinstance(value, dict):
        raise ValueError(f"{ENGINE_ARGS_ENV} must be a JSON object, got {type(value).__name__}")
    return value


def _field_default(cls: type, name: str) -> Any:
    import dataclasses

    for f in dataclasses.fields(cls):
        if f.name == name:
            if f.default is not dataclasses.MISSING:
                return f.default
            if f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
                return f.default_factory()  # type: ignore[misc]
    raise KeyError(name)


def _compilation_unset(cc: Any) -> bool:
    if cc is None:
        return True
    if isinstance(cc, dict):
        return cc.get("mode") is None and cc.get("cudagraph_mode") is None and cc.get("level") is None
    return getattr(cc, "mode", None) is None and getattr(cc, "cudagraph_mode", None) is None


def _merged_compilation(cc: Any, extra: dict[str, Any]) -> Any:
    """``extra`` merged into compilation config ``cc`` (dict or vLLM ``CompilationConfig``),
    keeping every field the caller changed from the defaults."""
    if cc is None or isinstance(cc, dict):
        return {**(cc or {}), **extra}
    import dataclasses

    cls = type(cc)
    fresh = cls()
    kept = {}
    for f in dataclasses.fields(cls):
        if f.init and f.name not in extra:
            value = getattr(cc, f.name, None)
            if value != getattr(fresh, f.name, None):
                kept[f.name] = value
    return cls(**kept, **extra)


def apply_engine_args_overrides(engine_args: Any, overrides: Mapping[str, Any]) -> list[str]:
    """Set each override on ``engine_args`` where the caller left the field at its default (see
    the module docstring); returns the keys set."""
    applied = []
    for key, value in overrides.items():
        if not hasattr(engine_args, key):
            _say(f"unknown-{key}", f"{ENGINE_ARGS_ENV}: this vLLM's EngineArgs has no field {key!r}; ignored")
            continue
        current = getattr(engine_args, key)
        if key == "compilation_config":
            if getattr(engine_args, "enforce_eager", False) or not _compilation_unset(current):
                continue
            if not isinstance(value, dict):
                raise ValueError(f"{ENGINE_ARGS_ENV}: compilation_config must be an object")
            engine_args.compilation_config = _merged_compilation(current, value)
        else:
            try:
                default = _field_default(type(engine_args), key)
            except (KeyError, TypeError):
                continue
            if current != default:
                continue
            setattr(engine_args, key, value)
        applied.append(key)
    return applied


# ---------------------------------------------------------------------- patches
def _say(key: str, msg: str) -> None:
    """Log once per process (and to stderr: Ray forwards workers' stderr to the driver)."""
    if key in _said:
        return
    _said.add(key)
    logger.info(msg)
    print(f"[openrlhf-das gpu_compat pid {os.getpid()}] {msg}", file=sys.stderr, flush=True)


def _patch_get_train_ds_config(mod: Any) -> None:
    original = getattr(mod, "get_train_ds_config", None)
    if original is None or getattr(original, _MARK, False):
        return

    def get_train_ds_config(*args: Any, **kwargs: Any) -> dict[str, Any]:
        config = original(*args, **kwargs)
        if torch_adam_enabled():
            new = with_torch_adam(config)
            if new is not config:
                why = "nvcc not found" if os.environ.get(TORCH_ADAM_ENV, "auto").lower() in ("", "auto") else f"{TORCH_ADAM_ENV}=1"
                _say("torch_adam", f"DeepSpeed optimizer {new['optimizer']['type']}: torch.optim.AdamW "
                                   f"instead of FusedAdam (torch_adam: true; {why})")
            return new
        return config

    get_train_ds_config.__doc__ = original.__doc__
    get_train_ds_config.__wrapped__ = original  # type: ignore[attr-defined]
    setattr(get_train_ds_config, _MARK, True)
    mod.get_train_ds_config = get_train_ds_config


def _patch_engine_args(mod: Any) -> None:
    cls = getattr(mod, "EngineArgs", None)
    if cls is None or getattr(cls.__post_init__, _MARK, False):
        return
    original = cls.__post_init__

    def __post_init__(self: Any) -> None:
        original(self)
        overrides = engine_args_overrides()
        if overrides and versions.enabled("gpu_compat.engine_args"):
            try:
                applied = apply_engine_args_overrides(self, overrides)
            except versions.DRIFT as exc:  # EngineArgs changed shape: leave the caller's arguments
                versions.disable("gpu_compat.engine_args", f"EngineArgs overrides failed: {exc!r}")
                _say("engine_args-drift", f"{ENGINE_ARGS_ENV} not applied: {exc!r}")
                return
            if applied:
                _say("engine_args", f"vLLM engine arguments from {ENGINE_ARGS_ENV}: "
                                    + ", ".join(f"{k}={overrides[k]!r}" for k in applied))

    __post_init__.__wrapped__ = original  # type: ignore[attr-defined]
    setattr(__post_init__, _MARK, True)
    cls.__post_init__ = __post_init__


TARGETS: dict[str, Callable[[Any], None]] = {
    "openrlhf.utils.deepspeed.deepspeed_utils": _patch_get_train_ds_config,
    "openrlhf.utils.deepspeed.deepspeed": _patch_get_train_ds_config,
    "vllm.engine.arg_utils": _patch_engine_args,
}


COMPONENT: dict[str, str] = {
    "openrlhf.utils.deepspeed.deepspeed_utils": "openrlhf",
    "openrlhf.utils.deepspeed.deepspeed": "openrlhf",
    "vllm.engine.arg_utils": "vllm",
}
"""Target -> the component whose tested versions the shim was written for (``versions.TESTED``)."""


def feature_of(name: str) -> str:
    """The feature name of target ``name`` in ``versions.disabled_features()``."""
    return "gpu_compat.engine_args" if COMPONENT[name] == "vllm" else "gpu_compat.torch_adam"


def _run_patch(name: str, module: Any) -> None:
    feature = feature_of(name)
    with _lock:
        if not versions.optional(feature, COMPONENT[name]):
            _say(f"off-{name}", f"not patching {name}: {versions.disabled_features().get(feature)}")
            return
        try:
            TARGETS[name](module)
        except Exception as exc:  # noqa: BLE001 - a shim must never break the import it hooks
            versions.disable(feature, f"could not patch {name}: {exc!r}")
            _say(f"fail-{name}", f"could not patch {name}: {exc!r}")


_HOOK = PostImportHook(TARGETS, _run_patch)


def apply(propagate: bool = True) -> dict[str, Any]:
    """Install the shims in this process (idempotent; cheap, imports nothing) and, with
    ``propagate``, in the processes it starts (appends :data:`SITE_DIR` to ``PYTHONPATH``).
    Returns :func:`status`."""
    with _lock:
        _HOOK.install()
        for name in TARGETS:
            module = sys.modules.get(name)
            if module is not None:
                _run_patch(name, module)
    if propagate:
        parts = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
        if SITE_DIR not in parts:
            os.environ["PYTHONPATH"] = os.pathsep.join([*parts, SITE_DIR])
    return status()


def status() -> dict[str, Any]:
    """What applies in this process."""
    try:
        adam: Any = torch_adam_enabled()
    except ValueError as exc:
        adam = str(exc)
    try:
        engine: Any = engine_args_overrides()
    except ValueError as exc:
        engine = str(exc)
    return {
        "torch_adam": adam,
        "nvcc": find_nvcc(),
        "engine_args": engine,
        "hook_installed": _HOOK.installed,
        "propagated": SITE_DIR in os.environ.get("PYTHONPATH", "").split(os.pathsep),
        "disabled": {k: v for k, v in versions.disabled_features().items() if k.startswith("gpu_compat.")},
    }


def run_next_sitecustomize(this_dir: str) -> None:
    """Execute the first ``sitecustomize.py`` on ``sys.path`` outside ``this_dir`` (ours shadows
    it, e.g. Debian's in /usr/lib/python3.X)."""
    here = os.path.realpath(this_dir)
    for entry in sys.path:
        if not entry or os.path.realpath(entry) == here:
            continue
        candidate = os.path.join(entry, "sitecustomize.py")
        if os.path.isfile(candidate):
            spec = importlib.util.spec_from_file_location("_next_sitecustomize", candidate)
            if spec is None or spec.loader is None:
                return
            module = importlib.util.module_from_spec(spec)
            try:
                spec.loader.exec_module(module)
            except Exception as exc:  # noqa: BLE001 - as Python itself does for sitecustomize
                print(f"Error in sitecustomize ({candidate}): {exc!r}", file=sys.stderr)
            return
