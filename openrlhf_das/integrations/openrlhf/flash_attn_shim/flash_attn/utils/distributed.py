"""``flash_attn.utils.distributed.all_gather`` with flash-attn's semantics (plain torch.distributed).

``all_gather(x, group)`` concatenates every rank's ``x`` along dim 0; its gradient is the
reduce-scatter of the output gradient (each rank gets the summed gradient of its own slice).
"""

from __future__ import annotations

import torch
import torch.distributed as dist

__all__ = ["all_gather", "all_gather_raw", "reduce_scatter_raw"]


def all_gather_raw(input_: torch.Tensor, process_group, async_op: bool = False):
    world_size = dist.get_world_size(process_group)
    output = torch.empty((world_size * input_.shape[0], *input_.shape[1:]), dtype=input_.dtype, device=input_.device)
    handle = dist.all_gather_into_tensor(output, input_.contiguous(), group=process_group, async_op=async_op)
    return output, handle


def reduce_scatter_raw(input_: torch.Tensor, process_group, async_op: bool = False):
    world_size = dist.get_world_size(process_group)
    assert input_.shape[0] % world_size == 0, "first dimension must be divisible by the world size"
    output = torch.empty((input_.shape[0] // world_size, *input_.shape[1:]), dtype=input_.dtype, device=input_.device)
    handle = dist.reduce_scatter_tensor(output, input_.contiguous(), group=process_group, async_op=async_op)
    return output, handle


class _AllGather(torch.autograd.Function):
    @staticmethod
    def forward(ctx, input_: torch.Tensor, process_group) -> torch.Tensor:
        ctx.process_group = process_group
        output, _ = all_gather_raw(input_, process_group)
        return output

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor):
        grad_input, _ = reduce_scatter_raw(grad_output, ctx.process_group)
        return grad_input, None


def all_gather(input_: torch.Tensor, process_group) -> torch.Tensor:
    """Concatenation over ranks of ``process_group`` along dim 0 (differentiable)."""
    return _AllGather.apply(input_, process_group)
