"""A minimal stand-in for the ``flash_attn`` package, used only where flash-attn is missing.

Why: OpenRLHF 0.11.2 declares ``flash-attn==2.8.3`` (a CUDA source build, far longer than a
machine lease, impossible on CPU) and imports two of its *pure-PyTorch* helper modules at module
level (``openrlhf/models/ring_attn_utils.py``)::

    from flash_attn.bert_padding import index_first_axis, pad_input, rearrange, unpad_input
    from flash_attn.utils.distributed import all_gather

Every trainer process imports that file (``openrlhf.models`` → actor, critic, launcher), so
without flash-attn OpenRLHF cannot even start. The kernels themselves are used only with
``--ds.attn_implementation flash_attention_2`` (the default!) or ``--ds.packing_samples``
(which forces it); run with ``--ds.attn_implementation sdpa`` (or ``eager``) and without packing
on machines without flash-attn.

What: the directory :data:`SHIM_DIR` holds a package named ``flash_attn`` with exactly those
helpers, reimplemented with plain ``torch`` indexing (autograd-safe) and
``torch.distributed``. :func:`ensure_flash_attn` puts it on ``sys.path`` and ``PYTHONPATH``
**only when no real flash_attn is importable**, so a machine with flash-attn never sees it.
Anything else taken from the shim (``flash_attn_varlen_func``, ``flash_attn.ops...``) raises an
``ImportError`` that names the shim, so code that probes for flash-attn and falls back on
``ImportError`` (DeepSpeed, vLLM) still falls back. transformers does not consider the shim an
installed flash-attn (no ``flash-attn`` distribution metadata), so ``attn_implementation=
"flash_attention_2"`` fails with transformers' own clear message.

Known limit: code that only checks ``import flash_attn`` and later calls a kernel (vLLM's
Qwen2.5-Omni thinker) fails at that call on machines without flash-attn.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

SHIM_DIR = str(Path(__file__).resolve().parent)
"""Directory to put on ``sys.path``: it contains the ``flash_attn`` shim package."""


def real_flash_attn_available() -> bool:
    """True if a ``flash_attn`` other than this shim is importable."""
    spec = importlib.util.find_spec("flash_attn")
    return spec is not None and not str(spec.origin or "").startswith(SHIM_DIR)


def shim_active() -> bool:
    spec = importlib.util.find_spec("flash_attn")
    return spec is not None and str(spec.origin or "").startswith(SHIM_DIR)


def ensure_flash_attn() -> bool:
    """Make ``import flash_attn.bert_padding`` work: no-op when flash-attn is installed, else put
    the shim on ``sys.path`` (this process) and ``PYTHONPATH`` (processes started from here:
    a local Ray cluster's workers, vLLM engine processes). Returns True when the shim is in use.
    Idempotent."""
    if "flash_attn" in sys.modules:
        return shim_active()
    if importlib.util.find_spec("flash_attn") is not None:
        return shim_active()
    if SHIM_DIR not in sys.path:
        sys.path.append(SHIM_DIR)  # appended: never shadows anything else
    parts = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    if SHIM_DIR not in parts:
        os.environ["PYTHONPATH"] = os.pathsep.join([*parts, SHIM_DIR])
    importlib.invalidate_caches()
    return True
