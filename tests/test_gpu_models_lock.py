"""The GPU bring-up's model table (``benchmarks/gpu/prepare.py``), its lock
(``benchmarks/gpu/wheels.lock``) and the project's model registry name the same packages, files
and checksums: a model carried to the GPU machine is the model the CPU side materializes."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

from openrlhf_das.models.registry import MODELS as REGISTRY

GPU = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu"


@pytest.fixture(scope="module")
def prepare():
    sys.path.insert(0, str(GPU))  # prepare.py imports its sibling verify.py
    try:
        spec = importlib.util.spec_from_file_location("gpu_prepare", GPU / "prepare.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    finally:
        sys.path.remove(str(GPU))


def test_every_carried_model_matches_the_registry(prepare):
    assert set(prepare.MODELS) == set(REGISTRY)
    assert set(prepare.DEFAULT_MODELS) <= set(prepare.MODELS)
    for name, (pkgs, members, _gguf, prefix) in prepare.MODELS.items():
        spec = REGISTRY[name]
        assert pkgs == [f"{dist}=={spec.version}" for dist, _ in spec.parts], name
        assert [m for _, m in members] == [path for _, path in spec.parts], name
        assert spec.sha256.startswith(prefix), name


def test_the_lock_pins_each_model_to_the_registry_checksum(prepare):
    rows = prepare.read_lock()
    gguf = {r["name"]: r for r in rows if r["kind"] == "gguf"}
    assert set(gguf) == set(prepare.MODELS)  # every model can be carried without re-locking
    for name, row in gguf.items():
        assert row["sha256"] == REGISTRY[name].sha256, name
        assert row["file"] == prepare.MODELS[name][2]
    packages = {r["name"]: r["version"] for r in rows if r["kind"] == "modelpkg"}
    for name, (pkgs, *_rest) in prepare.MODELS.items():
        for pin in pkgs:
            dist, version = pin.split("==")
            assert packages.get(dist) == version, f"{name}: {pin} not locked"
