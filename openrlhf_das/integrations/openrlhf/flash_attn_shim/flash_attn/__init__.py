"""openrlhf-das stand-in for flash-attn (see ``openrlhf_das.integrations.openrlhf.flash_attn_shim``).

Only ``flash_attn.bert_padding`` and ``flash_attn.utils.distributed`` exist here; there are no
attention kernels. Any other attribute raises ImportError naming this shim.
"""

OPENRLHF_DAS_SHIM = True


def __getattr__(name: str):
    if name.startswith("__"):
        raise AttributeError(name)
    raise ImportError(
        f"flash_attn.{name} is not available: this 'flash_attn' is the openrlhf-das shim (pure-PyTorch "
        "padding helpers only). Install flash-attn for its kernels, or run OpenRLHF with "
        "--ds.attn_implementation sdpa and without --ds.packing_samples."
    )
