"""Triton forward and backward for RMSNorm / pRMSNorm / L2Norm on CUDA tensors (fp32, bf16, fp16).

The designs of Liger-Kernel's rms_norm, quack and flash-attn's Triton layer norm:
- forward: each program normalises a tile of ROWS x BLOCK (several rows at once where rows are narrow, so a
  program still moves a few thousand elements), the whole row in registers, statistics in float32;
- backward: a persistent grid (a couple of programs per SM) in which each program walks its own run of row
  tiles, writes dx, and keeps the weight and bias gradients of its rows in float32 registers; one partial sum
  per program, which a second pass (torch's sum) reduces: no atomics, the same bits every run.
The pRMSNorm correction term applies to the first k features only, while the dot product it needs spans all d.

Row counts and loop lengths are marked `do_not_specialize`, so a new batch size never compiles a new kernel:
one compiled kernel per (dtype, width, k == d or not, affine) configuration.

Eager calls go through `TritonRowNorm` (a torch.autograd.Function): measured on this suite's CPU machine, a
`torch.library` custom op with registered autograd costs about 45 us of Python per call against about 5 us
for an autograd.Function, and a recurrent step pays that on every call. Under `torch.compile` the same
launchers run as `torch.library.triton_op`s (`rmsnorm::row_norm_forward` / `rmsnorm::row_norm_backward`), which
the compiler can see into.

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

MAX_FEATURES = 32768  # one row must fit a program's registers; wider rows take another path
TILE_ELEMENTS = 4096  # a forward program's tile: as many rows as fit this many elements (at most MAX_ROWS)
MAX_ROWS = 32


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


@functools.cache
def available() -> bool:
    return triton is not None and (torch.cuda.is_available() or _interpreting())


if triton is not None:

    @triton.jit(do_not_specialize=["rows"])
    def _forward_kernel(X, W, B, Y, RSTD, stride_x, stride_y, rows, d, k, inv_n, eps,
                        HAS_W: tl.constexpr, HAS_B: tl.constexpr, ROWS: tl.constexpr, BLOCK: tl.constexpr):
        tile = tl.program_id(0).to(tl.int64)
        r = tile * ROWS + tl.arange(0, ROWS)
        cols = tl.arange(0, BLOCK)
        row_ok = r < rows
        col_ok = cols < d
        mask = row_ok[:, None] & col_ok[None, :]
        x = tl.load(X + r[:, None] * stride_x + cols[None, :], mask=mask, other=0.0).to(tl.float32)
        xs = tl.where((cols < k)[None, :], x, 0.0)
        rstd = 1.0 / tl.sqrt(tl.sum(xs * xs, axis=1) * inv_n + eps)
        tl.store(RSTD + r, rstd, mask=row_ok)
        y = x * rstd[:, None]
        if HAS_W:
            y = y * tl.load(W + cols, mask=col_ok, other=0.0).to(tl.float32)[None, :]
        if HAS_B:
            y = y + tl.load(B + cols, mask=col_ok, other=0.0).to(tl.float32)[None, :]
        tl.store(Y + r[:, None] * stride_y + cols[None, :], y.to(Y.dtype.element_ty), mask=mask)

    @triton.jit(do_not_specialize=["rows", "tiles_per_program"])
    def _backward_kernel(DY, X, W, RSTD, DX, DW_PART, DB_PART, stride_dy, stride_x, stride_dx, rows, d, k, inv_n,
                         tiles_per_program, HAS_W: tl.constexpr, HAS_DW: tl.constexpr, HAS_DB: tl.constexpr,
                         ROWS: tl.constexpr, BLOCK: tl.constexpr):
        pid = tl.program_id(0)
        cols = tl.arange(0, BLOCK)
        col_ok = cols < d
        head = (cols < k)[None, :]
        if HAS_W:
            w = tl.load(W + cols, mask=col_ok, other=0.0).to(tl.float32)[None, :]
        dw_acc = tl.zeros([BLOCK], dtype=tl.float32)
        db_acc = tl.zeros([BLOCK], dtype=tl.float32)
        first = pid.to(tl.int64) * tiles_per_program
        for i in range(0, tiles_per_program):
            r = (first + i) * ROWS + tl.arange(0, ROWS)
            row_ok = r < rows
            mask = row_ok[:, None] & col_ok[None, :]
            x = tl.load(X + r[:, None] * stride_x + cols[None, :], mask=mask, other=0.0).to(tl.float32)
            dy = tl.load(DY + r[:, None] * stride_dy + cols[None, :], mask=mask, other=0.0).to(tl.float32)
            rstd = tl.load(RSTD + r, mask=row_ok, other=0.0)
            if HAS_W:  # noqa: SIM108 - a Triton constexpr branch: w exists only when HAS_W
                g = dy * w
            else:
                g = dy
            c = inv_n * rstd * rstd * rstd * tl.sum(g * x, axis=1)
            dx = rstd[:, None] * g - tl.where(head, c[:, None] * x, 0.0)
            tl.store(DX + r[:, None] * stride_dx + cols[None, :], dx.to(DX.dtype.element_ty), mask=mask)
            if HAS_DW:
                dw_acc += tl.sum(dy * x * rstd[:, None], axis=0)
            if HAS_DB:
                db_acc += tl.sum(dy, axis=0)
        if HAS_DW:
            tl.store(DW_PART + pid * d + cols, dw_acc, mask=col_ok)
        if HAS_DB:
            tl.store(DB_PART + pid * d + cols, db_acc, mask=col_ok)


def launch_config(d: int) -> tuple[int, int, int]:
    """(BLOCK, ROWS, num_warps) for rows of d features: the padded row, rows per tile, warps per program."""
    block = triton.next_power_of_2(d)
    rows = max(1, min(MAX_ROWS, TILE_ELEMENTS // block))
    tile = rows * block  # elements a program holds: 8-32 fp32 values per thread for x (Liger's warps per width)
    warps = 4 if tile <= 2048 else 8 if tile <= 8192 else 16
    return block, rows, warps


def _programs_for_backward(x: torch.Tensor, tiles: int) -> int:
    """About two programs per SM (persistent grid), never more than there are tiles."""
    if x.is_cuda:
        return max(1, min(tiles, 2 * _sm_count(x.device.index or 0)))
    return max(1, min(tiles, 4))


@functools.cache
def _sm_count(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


def _rows_view(t: torch.Tensor) -> torch.Tensor:
    """t as (rows, d) with unit column stride, copying only where the last dimension is not contiguous."""
    t2 = t.reshape(-1, t.shape[-1])
    return t2 if t2.stride(-1) == 1 or t2.shape[-1] == 1 else t2.contiguous()


def _eager(kernel):
    return kernel


def _forward(x: torch.Tensor, weight, bias, k: int, inv_n: float, eps: float, launch=_eager):
    rows, d = x.shape
    y = torch.empty((rows, d), device=x.device, dtype=x.dtype)
    rstd = torch.empty(rows, device=x.device, dtype=torch.float32)
    block, per_tile, warps = launch_config(d)
    launch(_forward_kernel)[(triton.cdiv(rows, per_tile),)](
        x, weight if weight is not None else x, bias if bias is not None else x, y, rstd,
        x.stride(0), y.stride(0), rows, d, k, inv_n, eps,
        HAS_W=weight is not None, HAS_B=bias is not None, ROWS=per_tile, BLOCK=block, num_warps=warps,
    )
    return y, rstd


def _backward(dy: torch.Tensor, x: torch.Tensor, weight, rstd: torch.Tensor, k: int, inv_n: float, want_dw: bool,
              want_db: bool, launch=_eager):
    rows, d = x.shape
    block, per_tile, warps = launch_config(d)
    tiles = triton.cdiv(rows, per_tile)
    programs = _programs_for_backward(x, tiles)
    dx = torch.empty((rows, d), device=x.device, dtype=x.dtype)
    # a gradient not wanted still needs a pointer: rstd in eager calls; an op's outputs may not alias its inputs
    unused = (lambda: rstd) if launch is _eager else (lambda: torch.empty(1, device=x.device, dtype=torch.float32))
    dw_part = torch.empty((programs, d), device=x.device, dtype=torch.float32) if want_dw else unused()
    db_part = torch.empty((programs, d), device=x.device, dtype=torch.float32) if want_db else unused()
    launch(_backward_kernel)[(programs,)](
        dy, x, weight if weight is not None else x, rstd, dx, dw_part, db_part,
        dy.stride(0), x.stride(0), dx.stride(0), rows, d, k, inv_n, triton.cdiv(tiles, programs),
        HAS_W=weight is not None, HAS_DW=want_dw, HAS_DB=want_db, ROWS=per_tile, BLOCK=block, num_warps=warps,
    )
    return dx, dw_part, db_part


class TritonRowNorm(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, k: int, inv_n: float, eps: float):
        y, rstd = _forward(x, weight, bias, k, inv_n, eps)
        ctx.save_for_backward(x, weight, rstd)
        ctx.k, ctx.inv_n, ctx.has_bias = k, inv_n, bias is not None
        return y

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, dy):
        x, weight, rstd = ctx.saved_tensors
        want_dw = weight is not None and ctx.needs_input_grad[1]
        want_db = ctx.has_bias and ctx.needs_input_grad[2]
        dx, dw_part, db_part = _backward(_rows_view(dy), x, weight, rstd, ctx.k, ctx.inv_n, want_dw, want_db)
        dw = dw_part.sum(0).to(weight.dtype) if want_dw else None
        db = db_part.sum(0).to(x.dtype) if want_db else None
        return dx, dw, db, None, None, None


_compiled_ops = None


def compiled_ops():
    """The launchers as `torch.library.triton_op`s with autograd, registered on first use (under torch.compile)."""
    global _compiled_ops
    if _compiled_ops is not None:
        return _compiled_ops
    from torch.library import triton_op, wrap_triton

    @triton_op("rmsnorm::row_norm_forward", mutates_args=())
    def row_norm_forward(x: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None, k: int,
                         inv_n: float, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
        return _forward(x, weight, bias, k, inv_n, eps, launch=wrap_triton)

    @triton_op("rmsnorm::row_norm_backward", mutates_args=())
    def row_norm_backward(dy: torch.Tensor, x: torch.Tensor, weight: torch.Tensor | None, rstd: torch.Tensor,
                          k: int, inv_n: float, want_dw: bool,
                          want_db: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return _backward(dy, x, weight, rstd, k, inv_n, want_dw, want_db, launch=wrap_triton)

    def setup_context(ctx, inputs, output):
        x, weight, bias, k, inv_n, _ = inputs
        ctx.save_for_backward(x, weight, output[1])
        ctx.k, ctx.inv_n, ctx.has_bias = k, inv_n, bias is not None

    def backward(ctx, dy, _drstd):
        x, weight, rstd = ctx.saved_tensors
        want_dw = weight is not None and ctx.needs_input_grad[1]
        want_db = ctx.has_bias and ctx.needs_input_grad[2]
        dx, dw_part, db_part = row_norm_backward(dy.contiguous(), x, weight, rstd, ctx.k, ctx.inv_n, want_dw,
                                                 want_db)
        dw = dw_part.sum(0).to(weight.dtype) if want_dw else None
        db = db_part.sum(0).to(x.dtype) if want_db else None
        return dx, dw, db, None, None, None

    row_norm_forward.register_autograd(backward, setup_context=setup_context)
    _compiled_ops = row_norm_forward
    return _compiled_ops


def row_norm(x: torch.Tensor, weight, bias, eps: float, k: int, inv_n: float,
             as_op: bool | None = None) -> torch.Tensor | None:
    """The Triton path, or None where it does not apply (a row wider than a program holds). `as_op` forces the
    torch.library op (default: only while torch.compile traces)."""
    shape = x.shape
    if shape[-1] > MAX_FEATURES:
        return None
    x2 = _rows_view(x)
    w = None if weight is None else weight.contiguous()
    b = None if bias is None else bias.contiguous()
    if as_op if as_op is not None else torch.compiler.is_compiling():
        y = compiled_ops()(x2, w, b, k, inv_n, eps)[0]
    else:
        y = TritonRowNorm.apply(x2, w, b, k, inv_n, eps)
    return y.view(shape)


def register_ops() -> None:
    """Register the torch.library ops now, outside any torch.compile trace (registering inside Dynamo's tracing
    is what torch warns against); `rmsnorm.kernels.cuda_paths` calls this at import on a machine with CUDA. A
    failure here only leaves the ops to be registered on first use, as before."""
    if not available():
        return
    import contextlib

    with contextlib.suppress(Exception):  # the eager path does not need the ops
        compiled_ops()
