"""The words that turn a switch on or off, for command-line flags (``--das on``) and environment
variables (``OPENRLHF_DAS_ALLOW_UNTESTED=1``, the GPU bring-up's ``OPENRLHF_DAS_TORCH_ADAM``).
Stdlib only: ``benchmarks/gpu/gpu_compat.py`` loads it by path at interpreter start."""

from __future__ import annotations

ON = frozenset({"1", "true", "yes", "on"})
OFF = frozenset({"0", "false", "no", "off"})


def switch(value: str | None) -> bool | None:
    """True for an :data:`ON` word, False for an :data:`OFF` word (case and surrounding spaces
    ignored), None for anything else (unset, empty, ``auto``, a typo: the caller decides)."""
    word = (value or "").strip().lower()
    if word in ON:
        return True
    if word in OFF:
        return False
    return None
