"""Triton forward and backward for RMSNorm / pRMSNorm / L2Norm on CUDA tensors (fp32, bf16, fp16).

One program normalises one row held in registers, statistics in float32. The backward gives each program a
contiguous block of rows, accumulates the weight and bias gradients of its block in registers, and writes
one partial sum per program, which torch then reduces: no atomics, deterministic. The pRMSNorm correction
term applies to the first k features only, while the dot product it needs spans all d.

Runs in Triton's interpreter on CPU tensors with TRITON_INTERPRET=1, which the tests use where no GPU is.
"""

from __future__ import annotations

import functools
import os

import torch

try:
    import triton
    import triton.language as tl
except ImportError:  # a CPU-only torch without triton
    triton = None

MAX_FEATURES = 32768  # one row must fit a program's registers; wider rows take the reference path


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


@functools.cache
def available() -> bool:
    return triton is not None and (torch.cuda.is_available() or _interpreting())


if triton is not None:

    @triton.jit
    def _forward_kernel(X, W, B, Y, RSTD, stride_x, stride_y, d, k, inv_n, eps,
                        HAS_W: tl.constexpr, HAS_B: tl.constexpr, BLOCK: tl.constexpr):
        row = tl.program_id(0).to(tl.int64)
        cols = tl.arange(0, BLOCK)
        mask = cols < d
        x = tl.load(X + row * stride_x + cols, mask=mask, other=0.0).to(tl.float32)
        xs = tl.where(cols < k, x, 0.0)
        r = 1.0 / tl.sqrt(tl.sum(xs * xs, axis=0) * inv_n + eps)
        tl.store(RSTD + row, r)
        y = x * r
        if HAS_W:
            y = y * tl.load(W + cols, mask=mask, other=0.0).to(tl.float32)
        if HAS_B:
            y = y + tl.load(B + cols, mask=mask, other=0.0).to(tl.float32)
        tl.store(Y + row * stride_y + cols, y.to(Y.dtype.element_ty), mask=mask)

    @triton.jit
    def _backward_kernel(DY, X, W, RSTD, DX, DW_PART, DB_PART, stride, rows, d, k, inv_n, rows_per_program,
                         HAS_W: tl.constexpr, HAS_DW: tl.constexpr, HAS_DB: tl.constexpr, BLOCK: tl.constexpr):
        pid = tl.program_id(0).to(tl.int64)
        cols = tl.arange(0, BLOCK)
        mask = cols < d
        head = cols < k
        if HAS_W:
            w = tl.load(W + cols, mask=mask, other=0.0).to(tl.float32)
        dw_acc = tl.zeros([BLOCK], dtype=tl.float32)
        db_acc = tl.zeros([BLOCK], dtype=tl.float32)
        start = pid * rows_per_program
        end = tl.minimum(start + rows_per_program, rows)
        for row in range(start, end):
            offset = row * stride  # row is int64: start is
            x = tl.load(X + offset + cols, mask=mask, other=0.0).to(tl.float32)
            dy = tl.load(DY + offset + cols, mask=mask, other=0.0).to(tl.float32)
            r = tl.load(RSTD + row)
            g = dy * w if HAS_W else dy
            c = inv_n * r * r * r * tl.sum(g * x, axis=0)
            dx = r * g - tl.where(head, c * x, 0.0)
            tl.store(DX + offset + cols, dx.to(DX.dtype.element_ty), mask=mask)
            if HAS_DW:
                dw_acc += dy * x * r
            if HAS_DB:
                db_acc += dy
        if HAS_DW:
            tl.store(DW_PART + pid * d + cols, dw_acc, mask=mask)
        if HAS_DB:
            tl.store(DB_PART + pid * d + cols, db_acc, mask=mask)


def _launch_config(d: int) -> tuple[int, int]:
    block = triton.next_power_of_2(d)
    warps = 4 if block <= 2048 else 8 if block <= 8192 else 16
    return block, warps


def _programs_for_backward(x: torch.Tensor, rows: int) -> int:
    if x.is_cuda:
        sms = torch.cuda.get_device_properties(x.device).multi_processor_count
        return max(1, min(rows, sms * 4))
    return max(1, min(rows, 4))


class TritonRowNorm(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, k: int, inv_n: float, eps: float):
        rows, d = x.shape
        y = torch.empty_like(x)
        rstd = torch.empty(rows, device=x.device, dtype=torch.float32)
        block, warps = _launch_config(d)
        _forward_kernel[(rows,)](
            x, weight if weight is not None else x, bias if bias is not None else x, y, rstd,
            x.stride(0), y.stride(0), d, k, inv_n, eps,
            HAS_W=weight is not None, HAS_B=bias is not None, BLOCK=block, num_warps=warps,
        )
        ctx.save_for_backward(x, weight, rstd)
        ctx.k, ctx.inv_n, ctx.has_bias = k, inv_n, bias is not None
        return y

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, dy):
        x, weight, rstd = ctx.saved_tensors
        dy = dy.contiguous()
        rows, d = x.shape
        want_dw = weight is not None and ctx.needs_input_grad[1]
        want_db = ctx.has_bias and ctx.needs_input_grad[2]
        programs = _programs_for_backward(x, rows)
        per_program = -(-rows // programs)
        dx = torch.empty_like(x)
        dw_part = torch.empty((programs, d), device=x.device, dtype=torch.float32) if want_dw else rstd
        db_part = torch.empty((programs, d), device=x.device, dtype=torch.float32) if want_db else rstd
        block, warps = _launch_config(d)
        _backward_kernel[(programs,)](
            dy, x, weight if weight is not None else x, rstd, dx, dw_part, db_part,
            x.stride(0), rows, d, ctx.k, ctx.inv_n, per_program,
            HAS_W=weight is not None, HAS_DW=want_dw, HAS_DB=want_db, BLOCK=block, num_warps=warps,
        )
        dw = dw_part.sum(0).to(weight.dtype) if want_dw else None
        db = db_part.sum(0).to(x.dtype) if want_db else None
        return dx, dw, db, None, None, None


def row_norm(x: torch.Tensor, weight, bias, eps: float, k: int, inv_n: float) -> torch.Tensor | None:
    """The Triton path, or None where it does not apply (a row wider than a program holds)."""
    if x.shape[-1] > MAX_FEATURES:
        return None
    shape = x.shape
    x2 = x.reshape(-1, shape[-1]).contiguous()
    w = None if weight is None else weight.contiguous()
    b = None if bias is None else bias.contiguous()
    return TritonRowNorm.apply(x2, w, b, k, inv_n, eps).view(shape)
