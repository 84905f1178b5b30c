"""Padding helpers with flash-attn 2.8's ``flash_attn.bert_padding`` signatures (plain torch).

Tokens of a ``(batch, seqlen, ...)`` tensor are addressed by their flat index ``b * seqlen + s``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange, repeat  # noqa: F401 - re-exported like flash-attn does

__all__ = ["index_first_axis", "index_put_first_axis", "pad_input", "rearrange", "repeat", "unpad_input"]


def index_first_axis(input: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
    """``input[indices]`` along the first axis (differentiable)."""
    return input.index_select(0, indices)


def index_put_first_axis(values: torch.Tensor, indices: torch.Tensor, first_axis_dim: int) -> torch.Tensor:
    """A zero tensor of first dimension ``first_axis_dim`` with ``values`` at rows ``indices``."""
    out = values.new_zeros((first_axis_dim, *values.shape[1:]))
    return out.index_copy(0, indices, values)


def unpad_input(hidden_states: torch.Tensor, attention_mask: torch.Tensor, unused_mask: torch.Tensor | None = None):
    """Drop padded positions.

    Args:
        hidden_states: ``(batch, seqlen, ...)``.
        attention_mask: ``(batch, seqlen)``, 1/True = real token.
        unused_mask: optional ``(batch, seqlen)``: tokens kept (counted in ``cu_seqlens``) but
            not attended to.

    Returns:
        ``(tokens (nnz, ...), indices (nnz,), cu_seqlens (batch + 1,) int32, max_seqlen int,
        used_seqlens (batch,) int32)``.
    """
    kept = attention_mask.bool() if unused_mask is None else (attention_mask.bool() | unused_mask.bool())
    seqlens = kept.sum(dim=-1, dtype=torch.int32)
    used_seqlens = attention_mask.bool().sum(dim=-1, dtype=torch.int32)
    indices = torch.nonzero(kept.flatten(), as_tuple=False).flatten()
    max_seqlen = int(seqlens.max().item()) if seqlens.numel() else 0
    cu_seqlens = F.pad(torch.cumsum(seqlens, dim=0, dtype=torch.int32), (1, 0))
    flat = hidden_states.reshape(-1, *hidden_states.shape[2:])
    return index_first_axis(flat, indices), indices, cu_seqlens, max_seqlen, used_seqlens


def pad_input(hidden_states: torch.Tensor, indices: torch.Tensor, batch: int, seqlen: int) -> torch.Tensor:
    """Inverse of :func:`unpad_input`: ``(nnz, ...)`` back to ``(batch, seqlen, ...)``, zeros at
    padded positions."""
    out = index_put_first_axis(hidden_states, indices, batch * seqlen)
    return out.reshape(batch, seqlen, *hidden_states.shape[1:])
