"""Fast kernels written with PyTorch's own operators: the CPU transposed convolution.

``ConvTranspose2d`` is ``nn.ConvTranspose2d`` (same parameters, same state_dict) whose 3x3 stride-2
layers run on the CPU through oneDNN's regular convolution kernels, 1.1-4x faster per layer than
its transposed-convolution kernels (benchmarks/RESULTS.md); outputs and gradients equal PyTorch's
within float rounding. Anything else takes PyTorch's own path.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def _conv_transpose_3x3_stride2(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, padding: int,
                                out_size: tuple[int, int]) -> torch.Tensor:
    """A 3x3 stride-2 transposed convolution computed with oneDNN's regular convolutions.

    Layers with 3 or more output channels: as four phases. Each output pixel of the uncropped
    result (size 2H+2) takes taps from a 2x2 window of the input, which ones depending only on the
    parity of its row and column; one 2x2 convolution with 4*C_out channels computes all four
    phases, and one copy interleaves them. Layers with one or two: as taps. Every input pixel's 3x3
    contribution is one row of ``x @ W`` ([B*H*W, C_in] @ [C_in, 9*C_out], run as a 1x1
    convolution), added into the output with nine strided adds (faster than the phases' copy of
    one-float runs; from 3 channels, for colour images, the phases are faster: 5.2 against 8.8 ms
    for 8 -> 3 channels, 32 -> 64 pixels, batch 128, forward and backward on 2 cores). Both are
    1.1-4x faster per layer than oneDNN's transposed convolution (benchmarks/RESULTS.md).
    Returns [B, C_out, *out_size], channels-last.
    """
    batch, c_in, height, width = x.shape
    c_out = weight.shape[1]
    x = x.contiguous(memory_format=torch.channels_last)
    if c_out >= 3:
        phases = F.conv2d(x, _phase_weights(weight), None if bias is None else bias.repeat(4), padding=1)
        full = (phases.permute(0, 2, 3, 1).view(batch, height + 1, width + 1, 2, 2, c_out).transpose(2, 3)
                .reshape(batch, 2 * height + 2, 2 * width + 2, c_out))
        out = full[:, padding: padding + out_size[0], padding: padding + out_size[1]].permute(0, 3, 1, 2)
        return out.contiguous(memory_format=torch.channels_last)
    # the product as a 1x1 convolution: oneDNN's kernel beats a matrix product of these thin shapes
    weight_1x1 = weight.permute(0, 2, 3, 1).reshape(c_in, 9 * c_out).t().contiguous().view(9 * c_out, c_in, 1, 1)
    taps = F.conv2d(x, weight_1x1)  # [B, 9*C_out, H, W]
    taps = taps.permute(0, 2, 3, 1).reshape(batch, height, width, 3, 3, c_out)
    full = x.new_zeros(batch, max(2 * height + 1, padding + out_size[0]), max(2 * width + 1, padding + out_size[1]),
                       c_out)
    for ky in range(3):
        for kx in range(3):
            full[:, ky: ky + 2 * height - 1: 2, kx: kx + 2 * width - 1: 2] += taps[:, :, :, ky, kx]
    out = full[:, padding: padding + out_size[0], padding: padding + out_size[1]].permute(0, 3, 1, 2)
    return out + bias.view(1, -1, 1, 1) if bias is not None else out.contiguous(memory_format=torch.channels_last)


# Uncropped output row 2o + parity takes input rows o-1 and o (the 2x2 window of a convolution with
# padding 1): parity 0 through the kernel's rows 2 and 0, parity 1 through row 1 alone (and nothing,
# index 3 below, from row o-1); columns alike. _PHASE_ROWS[parity, window row] is the kernel row.
_PHASE_ROWS = torch.tensor([[2, 0], [3, 1]])
_PHASE_INDEX = (_PHASE_ROWS[:, None, :, None] * 4 + _PHASE_ROWS[None, :, None, :]).flatten()  # into a 4x4 kernel


def _phase_weights(weight: torch.Tensor) -> torch.Tensor:
    """[C_in, C_out, 3, 3] transposed-convolution weights -> [4*C_out, C_in, 2, 2] convolution
    weights, output channels ordered (row parity, column parity, C_out)."""
    c_in, c_out = weight.shape[:2]
    padded = F.pad(weight, (0, 1, 0, 1)).reshape(c_in, c_out, 16)  # a zero row and column: index 3
    phases = padded[:, :, _PHASE_INDEX].view(c_in, c_out, 2, 2, 2, 2)  # [C_in, C_out, py, px, dy, dx]
    return phases.permute(2, 3, 1, 0, 4, 5).reshape(4 * c_out, c_in, 2, 2)


class _ConvTranspose3x3Stride2(torch.autograd.Function):
    """Forward: the phases or taps above. Backward: the input's gradient is the stride-2
    convolution of the output's gradient with the same weights, the weights' gradient that of a
    stride-2 convolution with the roles of input and output swapped; oneDNN's regular convolution
    kernels do both faster than its transposed-convolution backward (benchmarks/RESULTS.md)."""

    @staticmethod
    def forward(ctx, x, weight, bias, padding: int, out_size: tuple[int, int]):
        ctx.save_for_backward(x, weight)
        ctx.padding, ctx.has_bias = padding, bias is not None
        return _conv_transpose_3x3_stride2(x, weight, bias, padding, out_size)

    @staticmethod
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        padding = ctx.padding
        grad = grad.contiguous(memory_format=torch.channels_last)
        grad_x = F.conv2d(grad, weight, None, 2, padding) if ctx.needs_input_grad[0] else None
        grad_w = None
        if ctx.needs_input_grad[1]:
            grad_w = torch.ops.aten.convolution_backward(x, grad, weight, None, [2, 2], [padding, padding], [1, 1],
                                                         False, [0, 0], 1, [False, True, False])[1]
        grad_b = grad.sum((0, 2, 3)) if ctx.has_bias and ctx.needs_input_grad[2] else None
        return grad_x, grad_w, grad_b, None, None


class ConvTranspose2d(nn.ConvTranspose2d):
    """``nn.ConvTranspose2d`` (same parameters, same state_dict) with faster forward and backward
    passes for the 3x3 stride-2 layers on the CPU in fp32; anything else takes PyTorch's own path."""

    def forward(self, x: torch.Tensor, output_size: list[int] | None = None) -> torch.Tensor:
        fast = (output_size is None and x.device.type == "cpu" and x.dtype == torch.float32 and x.dim() == 4
                and self.kernel_size == (3, 3) and self.stride == (2, 2) and self.dilation == (1, 1)
                and self.groups == 1 and self.padding[0] == self.padding[1] and self.padding_mode == "zeros"
                and not torch.is_autocast_enabled("cpu"))
        if not fast:
            return super().forward(x, output_size)
        padding = self.padding[0]
        out_size = tuple((n - 1) * 2 - 2 * padding + 3 + extra for n, extra in zip(x.shape[2:], self.output_padding))
        return _ConvTranspose3x3Stride2.apply(x, self.weight, self.bias, padding, out_size)
