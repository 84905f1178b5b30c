"""Models for tests, demos and benchmarks without hub access.

* :func:`materialize` – real small models (GGUF shipped in PyPI packages) → cached HF folders.
* :func:`build_tiny_model` – a random 2-layer Llama with a small vocabulary for fast engine tests.
"""

from openrlhf_das.models.registry import (
    MODELS,
    ChecksumMismatchError,
    ModelNotInstalledError,
    ModelSpec,
    default_cache_dir,
    materialize,
)
from openrlhf_das.models.tiny import build_tiny_model, build_tiny_tokenizer

__all__ = [
    "MODELS",
    "ChecksumMismatchError",
    "ModelNotInstalledError",
    "ModelSpec",
    "build_tiny_model",
    "build_tiny_tokenizer",
    "default_cache_dir",
    "materialize",
]
