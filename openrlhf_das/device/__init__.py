"""Device-side DAS drafting: suffix matching on the accelerator (``suffix-gpu``) over the
engine's token buffer, problem-keyed history and live siblings, and CUDA graphs per batch size.

Imports torch and ``suffix_gpu``; no vLLM, Ray or OpenRLHF (``tests/test_layering.py``).
"""

from .drafter import NO_SLOT, DeviceDrafter, DeviceDrafterSettings
from .graphs import BucketGraphs, bucket_sizes

__all__ = ["NO_SLOT", "BucketGraphs", "DeviceDrafter", "DeviceDrafterSettings", "bucket_sizes"]
