"""openrlhf-das flash-attn shim: ``flash_attn.utils`` (only ``distributed``)."""
