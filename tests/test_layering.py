"""The core layers import no engine, cluster, trainer or tensor library (checked in a fresh
interpreter so that other tests' imports cannot hide a violation)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CORE = ["openrlhf_das.drafter", "openrlhf_das.policy", "openrlhf_das.config", "openrlhf_das.speculator"]
FORBIDDEN = {"vllm", "ray", "openrlhf", "torch"}

_PROBE = """
import importlib, json, sys
for name in {core!r}:
    importlib.import_module(name)
loaded = sorted({{m.split(".")[0] for m in sys.modules}})
print(json.dumps(loaded))
"""


def _loaded_top_level_modules(core: list[str]) -> set[str]:
    out = subprocess.run(
        [sys.executable, "-c", _PROBE.format(core=core)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return set(json.loads(out.stdout.strip().splitlines()[-1]))


def test_core_imports_no_heavy_frameworks() -> None:
    loaded = _loaded_top_level_modules(CORE)
    assert "openrlhf_das" in loaded and "arctic_inference" in loaded  # the probe really imported
    assert loaded & FORBIDDEN == set()


def test_probe_detects_a_forbidden_import() -> None:
    """The probe is able to fail: importing a module that pulls in torch is seen."""
    assert "torch" in _loaded_top_level_modules(["torch"])


def test_ray_package_pure_modules_import_without_ray() -> None:
    """``openrlhf_das.ray`` resolves its names lazily: the routing and record modules load without
    Ray (the GPU benchmark machine has none; ``engine_rollouts.py --engines N`` routes problems
    with ``engine_for_problem``), while the actor still needs it."""
    loaded = _loaded_top_level_modules(["openrlhf_das.ray.sharding", "openrlhf_das.ray.rollouts",
                                        "openrlhf_das.ray.persistence", "openrlhf_das.ray.history_store"])
    assert "openrlhf_das" in loaded and "ray" not in loaded
    import openrlhf_das.ray as das_ray

    assert das_ray.engine_for_problem("p", 2) in (0, 1)
    assert das_ray.create_history_actor.__module__ == "openrlhf_das.ray.history_actor"


def test_device_drafter_imports_no_engine_or_cluster() -> None:
    """``openrlhf_das.device`` (the GPU drafter) needs torch and suffix-gpu, nothing of vLLM, Ray
    or OpenRLHF: the engine adapter (``engines/vllm/device_proposer.py``) is the only caller
    that knows vLLM."""
    loaded = _loaded_top_level_modules(["openrlhf_das.device"])
    assert {"openrlhf_das", "torch", "suffix_gpu"} <= loaded
    assert loaded & {"vllm", "ray", "openrlhf"} == set()
