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


# ---------------------------------------------------------------------- product vs scaffolding
# Static checks (every ``import`` statement, including those inside functions, of every module in
# the package): what a fresh-interpreter probe cannot see because a lazy import never ran.
PACKAGE = ROOT / "openrlhf_das"
SCAFFOLDING_DIRS = [ROOT / "benchmarks", ROOT / "benchmarks" / "gpu", ROOT / "tests", ROOT / "scripts"]
BRINGUP_FILES = {"sitecustomize.py", "gpu_compat.py"}
"""File names of GPU bring-up hooks: they live in ``benchmarks/gpu`` (issue 23)."""
BENCHMARK_DRIVERS = {"epochs.py": "benchmarks/epochs.py"}
"""Benchmark drivers that were once in the package, and where they live now."""


def _imports(path: Path) -> list[str]:
    """Absolute module names imported by ``path`` (relative imports resolved against its package)."""
    import ast

    rel = path.relative_to(ROOT).with_suffix("")
    package = list(rel.parts[:-1])  # a module's package; for an __init__, the package itself
    names = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
                names += [mod] if node.module else [f"{mod}.{a.name}" for a in node.names]
            else:
                names.append(node.module or "")
    return names


def _package_modules(under: Path = PACKAGE) -> list[Path]:
    return sorted(p for p in under.rglob("*.py") if "__pycache__" not in p.parts)


def _scaffolding_module_names() -> set[str]:
    """Top-level names a script folder puts on ``sys.path`` (``import engine_rollouts``)."""
    names = {"benchmarks", "tests", "tools", "scripts"}
    for d in SCAFFOLDING_DIRS:
        names |= {p.stem for p in d.glob("*.py")}
    return names - {"__init__"}


def test_imports_helper_resolves_relative_imports() -> None:
    """The static checks below are able to fail: a relative import is seen with its full name."""
    mods = _imports(PACKAGE / "reports" / "render.py")
    assert "openrlhf_das.ray.run_dir" in mods and "openrlhf_das.ray.scalars" in mods


def test_ray_layer_does_not_import_reports() -> None:
    """The Ray layer records steps (``ray/run_dir.py``, ``ray/aggregate.py``, ``ray/scalars.py``);
    reports read them. No arrow from ``openrlhf_das.ray`` up to ``openrlhf_das.reports``."""
    upward = {str(p.relative_to(ROOT)): m for p in _package_modules(PACKAGE / "ray") for m in _imports(p)
              if m == "openrlhf_das.reports" or m.startswith("openrlhf_das.reports.")}
    assert upward == {}


def test_engine_layer_does_not_import_the_trainer_integration() -> None:
    """vLLM engines (``engines/``) run without OpenRLHF; the trainer integration
    (``integrations/``) builds on them, never the other way round (the post-import hook both
    use is the top-level ``openrlhf_das.post_import``)."""
    upward = {str(p.relative_to(ROOT)): m for p in _package_modules(PACKAGE / "engines") for m in _imports(p)
              if m == "openrlhf_das.integrations" or m.startswith("openrlhf_das.integrations.")}
    assert upward == {}


def test_product_does_not_import_scaffolding() -> None:
    """No package module imports benchmarks, tests, tools or a script folder's module (the names
    ``benchmarks/`` and ``benchmarks/gpu/`` put on ``sys.path``: ``epochs``, ``gpu_compat``...)."""
    forbidden = _scaffolding_module_names()
    assert {"epochs", "gpu_compat", "engine_rollouts", "ray_fixtures"} <= forbidden  # the check can fail
    bad = {str(p.relative_to(ROOT)): m for p in _package_modules() for m in _imports(p)
           if m.split(".")[0] in forbidden}
    assert bad == {}


def test_no_bringup_or_benchmark_modules_in_the_package() -> None:
    """GPU bring-up hooks (a ``sitecustomize`` injected through ``PYTHONPATH``, ``gpu_compat``)
    and benchmark drivers live in ``benchmarks/``; the package holds one partial-rollout
    implementation, the one ``--das.partial_rollout`` runs (``integrations/openrlhf/partial.py``)."""
    files = _package_modules()
    assert [p for p in files if p.name in BRINGUP_FILES] == []
    assert [p for p in files if p.name in BENCHMARK_DRIVERS] == []
    for name, where in BENCHMARK_DRIVERS.items():
        assert (ROOT / where).is_file(), where
    assert (ROOT / "benchmarks" / "gpu" / "gpu_compat.py").is_file()
    assert (ROOT / "benchmarks" / "gpu" / "gpu_compat_site" / "sitecustomize.py").is_file()
    partial = [str(p.relative_to(PACKAGE)) for p in files if p.stem == "partial"]
    assert partial == ["integrations/openrlhf/partial.py"]
    # changing PYTHONPATH for every process started later is what bring-up hooks do; the one module
    # that does it is the flash-attn stand-in, which OpenRLHF's imports need on any machine without
    # flash-attn, the CPU quick start included (product; docs/design.md "Product vs scaffolding")
    writers = [str(p.relative_to(PACKAGE)) for p in files if 'os.environ["PYTHONPATH"]' in p.read_text()]
    assert writers == ["integrations/openrlhf/flash_attn_shim/__init__.py"]
    # nothing in the engine adapter drives an engine itself (that is a benchmark's or a trainer's job)
    drivers = [str(p.relative_to(ROOT)) for p in _package_modules(PACKAGE / "engines")
               if "llm_engine.step(" in p.read_text() or ".llm_engine.add_request(" in p.read_text()]
    assert drivers == []
