"""vLLM V1 adapter: the DAS proposer plugin, worker RPCs and engine settings.

Importing this package imports vLLM. The plugin entry point is
``openrlhf_das.engines.vllm.plugin:register`` (declared in setup.py).
"""

from .factory import (
    ADDITIONAL_CONFIG_KEY,
    WORKER_EXTENSION,
    additional_config,
    config_from_vllm,
    engine_kwargs,
    speculative_config,
    with_das_metadata,
)

__all__ = ["ADDITIONAL_CONFIG_KEY", "WORKER_EXTENSION", "additional_config", "config_from_vllm", "engine_kwargs",
           "speculative_config", "with_das_metadata"]
