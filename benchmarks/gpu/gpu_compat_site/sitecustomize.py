"""Applies ``benchmarks/gpu/gpu_compat.py`` at the start of every Python process
whose ``sys.path`` holds this folder (``gpu_compat.apply()`` appends it to ``PYTHONPATH``).

gpu_compat.py is loaded by its path under a private module name, so no package ``__init__`` (and
nothing heavy) runs at interpreter start. Then the next ``sitecustomize`` on ``sys.path`` runs,
as it would have without this one. Never raises.
"""


def _run() -> None:
    import importlib.util
    import os
    import sys

    here = os.path.dirname(os.path.abspath(__file__))
    try:
        mod = sys.modules.get("_openrlhf_das_gpu_compat")
        if mod is None:
            path = os.path.join(os.path.dirname(here), "gpu_compat.py")
            spec = importlib.util.spec_from_file_location("_openrlhf_das_gpu_compat", path)
            mod = importlib.util.module_from_spec(spec)
            sys.modules["_openrlhf_das_gpu_compat"] = mod
            spec.loader.exec_module(mod)
        mod.apply(propagate=False)
        mod.run_next_sitecustomize(here)
    except Exception as exc:  # noqa: BLE001 - a startup hook must not stop the interpreter
        print(f"[openrlhf-das gpu_compat] sitecustomize failed: {exc!r}", file=sys.stderr)


_run()
del _run
