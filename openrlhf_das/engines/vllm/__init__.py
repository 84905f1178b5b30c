"""vLLM V1 adapter: the DAS proposer plugin, worker RPCs and engine settings.

Importing this package imports vLLM. The plugin entry point is
``openrlhf_das.engines.vllm.plugin:register`` (declared in setup.py).
"""

from .factory import WORKER_EXTENSION, engine_kwargs, export_config, speculative_config, with_das_metadata

__all__ = ["WORKER_EXTENSION", "engine_kwargs", "export_config", "speculative_config", "with_das_metadata"]
