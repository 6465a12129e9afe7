"""The fused kernels against the exact reference: outputs, input gradients, weight and bias gradients."""

import os
import subprocess
import sys
import warnings

import pytest
import torch

import rmsnorm
from rmsnorm.kernels import cpu, dispatch
from rmsnorm.reference import l2_norm_reference, rms_norm_reference

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


SHAPES = [(1, 1), (1, 7), (3, 33), (17, 64), (5, 1000), (2, 4097), (64, 240)]


def _grads(fn, x, w, b, seed=7):
    y = fn(x, w, b)
    gy = torch.randn(y.shape, generator=torch.Generator().manual_seed(seed), dtype=y.dtype)
    params = [t for t in (x, w, b) if t is not None]
    return (y, *torch.autograd.grad(y, params, gy))


def _path(y: torch.Tensor) -> str:
    """Name of the autograd node that made y, looking through the reshape the kernels end with."""
    node = y.grad_fn
    while node is not None and node.name().startswith(("View", "Reshape")):
        node = node.next_functions[0][0]
    return node.name() if node is not None else ""


def _inputs(rows, d, dtype, affine, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = (torch.randn(rows, d, generator=g, dtype=dtype) * 3 + 0.5).requires_grad_()
    w = torch.randn(d, generator=g, dtype=dtype).requires_grad_() if affine else None
    b = torch.randn(d, generator=g, dtype=dtype).requires_grad_() if affine == "bias" else None
    return x, w, b


@pytest.mark.parametrize("rows, d", SHAPES)
@pytest.mark.parametrize("dtype, tol", [(torch.float32, 2e-5), (torch.float64, 1e-12)])
@pytest.mark.parametrize("affine", [None, "weight", "bias"])
@pytest.mark.parametrize("p", [1.0, 0.5, 0.0625])
def test_cpu_rms_norm_matches_reference(rows, d, dtype, tol, affine, p):
    k = max(1, int(d * p))
    x, w, b = _inputs(rows, d, dtype, affine)
    a = _grads(lambda x, w, b: cpu.row_norm(x, w, b, 1e-6, k, 1.0 / k), x, w, b)
    r = _grads(lambda x, w, b: rms_norm_reference(x, w, b, 1e-6, k), x, w, b)
    for got, want in zip(a, r, strict=True):
        torch.testing.assert_close(got, want, atol=tol * max(1, d**0.5), rtol=tol)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_cpu_l2_norm_matches_reference(dtype):
    x, w, b = _inputs(9, 130, dtype, "bias")
    a = _grads(lambda x, w, b: rmsnorm.l2_norm(x, w, b, 1e-8), x, w, b)
    r = _grads(lambda x, w, b: l2_norm_reference(x, w, b, 1e-8), x, w, b)
    for got, want in zip(a, r, strict=True):
        torch.testing.assert_close(got, want, atol=1e-4 if dtype == torch.float32 else 1e-12, rtol=1e-4)


@pytest.mark.parametrize("grain", [1, 1 << 30])  # every call parallel (partial sums per thread), or none
@pytest.mark.parametrize("rows, d, p", [(203, 100, 1.0), (203, 64, 0.0625), (37, 1000, 0.0625), (9, 600, 1.0)])
def test_cpu_backward_paths_match_reference(grain, rows, d, p, monkeypatch):
    # narrow rows sum the weight gradient per tile of rows (203 rows leave a partial tile in each thread's
    # share; 100 columns leave a partial 64-column block), wide rows per row in 256-column chunks with the
    # next row's dot taken in the same sweep
    module = cpu.load()
    before = module.parallel_grain()
    module.set_parallel_grain(grain)
    try:
        k = max(1, int(d * p))
        x, w, b = _inputs(rows, d, torch.float64, "bias")
        a = _grads(lambda x, w, b: cpu.row_norm(x, w, b, 1e-6, k, 1.0 / k), x, w, b)
        r = _grads(lambda x, w, b: rms_norm_reference(x, w, b, 1e-6, k), x, w, b)
    finally:
        module.set_parallel_grain(before)
    for got, want in zip(a, r, strict=True):
        torch.testing.assert_close(got, want, atol=1e-10, rtol=1e-10)


def test_cpu_backward_gives_the_same_bits_whatever_the_grain_and_thread_count():
    # the weight gradient's partial sums follow blocks fixed by the shape, so the measured grain (which differs
    # between processes) and the thread count cannot change the order of its additions
    module = cpu.load()
    before_grain, before_threads = module.parallel_grain(), torch.get_num_threads()
    x, w, b = _inputs(3000, 96, torch.float32, "bias")
    results = []
    try:
        for grain, threads in [(1, 2), (1 << 30, 2), (4096, 1), (100, 2)]:
            module.set_parallel_grain(grain)
            torch.set_num_threads(threads)
            results.append(_grads(lambda x, w, b: cpu.row_norm(x, w, b, 1e-6, 96, 1.0 / 96), x, w, b))
    finally:
        module.set_parallel_grain(before_grain)
        torch.set_num_threads(before_threads)
    for other in results[1:]:
        for got, want in zip(other, results[0], strict=True):
            assert torch.equal(got, want)


def test_every_header_the_sources_include_is_part_of_the_build_identity():
    """A header edited without changing the cache key would load a stale build (and one left out of the
    package data would not compile on a user's machine)."""
    import re

    included = {name for src in cpu._SOURCES for name in re.findall(r'#include "([^"]+)"', src.read_text())}
    assert included == {h.name for h in cpu._HEADERS}
    assert all(h.exists() for h in cpu._HEADERS)


def test_the_parallel_grain_is_measured_or_set(monkeypatch):
    assert cpu.parallel_grain() >= 1
    monkeypatch.setenv("RMSNORM_PARALLEL_GRAIN", "12345")
    module = cpu.load()
    before = module.parallel_grain()
    try:
        assert cpu._tune_parallel_grain(module) == 12345 == module.parallel_grain()
    finally:
        module.set_parallel_grain(before)


def test_measuring_the_grain_leaves_the_global_random_stream_alone(monkeypatch):
    # the kernel is first used inside a seeded run: its measurement must not move that run's random numbers
    monkeypatch.delenv("RMSNORM_PARALLEL_GRAIN", raising=False)
    module = cpu.load()
    before = module.parallel_grain()
    try:
        torch.manual_seed(3)
        cpu._tune_parallel_grain(module)
        after_tuning = torch.rand(4)
    finally:
        module.set_parallel_grain(before)
    torch.manual_seed(3)
    assert torch.equal(after_tuning, torch.rand(4))


def test_cpu_kernel_gradcheck_float64():
    for k in (12, 3):
        x, w, b = _inputs(4, 12, torch.float64, "bias")
        assert torch.autograd.gradcheck(lambda x, w, b, k=k: cpu.row_norm(x, w, b, 1e-6, k, 1.0 / k), (x, w, b))


def test_non_contiguous_and_3d_inputs():
    base = torch.randn(6, 40, 8, dtype=torch.float64)
    x = base.transpose(1, 2)[:, :, ::2].requires_grad_()  # (6, 8, 20), strided
    layer = rmsnorm.PartialRMSNorm(20, p=0.25).double()
    with torch.no_grad():
        layer.weight.normal_()
    y = layer(x)
    assert "RowNormFunction" in _path(y)
    torch.testing.assert_close(y, rms_norm_reference(x, layer.weight, None, layer.eps, 5))
    gx, gw = torch.autograd.grad(y.sum(), (x, layer.weight))
    rx, rw = torch.autograd.grad(rms_norm_reference(x, layer.weight, None, layer.eps, 5).sum(), (x, layer.weight))
    torch.testing.assert_close(gx, rx)
    torch.testing.assert_close(gw, rw)


def test_rows_of_a_wider_matrix_are_read_in_place():
    wide = torch.randn(7, 30, dtype=torch.float64, requires_grad=True)
    gates, cand = wide.split((20, 10), dim=-1)  # strided rows, as in the GRU cell
    w = torch.randn(20, dtype=torch.float64, requires_grad=True)
    y = cpu.row_norm(gates, w, None, 1e-6, 5, 1.0 / 5)
    torch.testing.assert_close(y, rms_norm_reference(gates, w, None, 1e-6, 5))
    got = torch.autograd.grad((y * torch.arange(20.0, dtype=torch.float64)).sum(), (wide, w))
    ref = rms_norm_reference(gates, w, None, 1e-6, 5)
    want = torch.autograd.grad((ref * torch.arange(20.0, dtype=torch.float64)).sum(), (wide, w))
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b)


def test_modules_take_the_fused_path_on_cpu_and_the_reference_when_asked():
    x = torch.randn(4, 32, requires_grad=True)
    assert "RowNormFunction" in _path(rmsnorm.RMSNorm(32)(x))
    assert "RowNormFunction" in _path(rmsnorm.L2Norm(32)(x))
    with dispatch.reference_only():
        assert "RowNormFunction" not in _path(rmsnorm.RMSNorm(32)(x))
    # half precision on CPU takes the reference, with its statistic in float32 inside
    xb = x.detach().bfloat16()
    yb = rmsnorm.RMSNorm(32)(xb)
    assert yb.dtype == torch.bfloat16
    torch.testing.assert_close(yb, rms_norm_reference(xb.float(), eps=1e-8).bfloat16(), atol=0, rtol=0)


def test_a_kernel_that_cannot_build_warns_once_and_falls_back(monkeypatch):
    import torch.utils.cpp_extension as ext

    monkeypatch.setattr(cpu, "_module", None)
    monkeypatch.setattr(cpu, "_failed", False)
    monkeypatch.setattr(ext, "load", lambda **kw: (_ for _ in ()).throw(OSError("no compiler")))
    x = torch.randn(3, 16)
    with pytest.warns(RuntimeWarning, match="could not be built.*reference"):
        y = dispatch.rms_norm(x, None, None, 1e-8, None)
    torch.testing.assert_close(y, rms_norm_reference(x))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        dispatch.rms_norm(x, None, None, 1e-8, None)  # no second warning


TRITON_CHECK = r"""
import torch
from rmsnorm.kernels import cuda_paths, triton_kernels as T
from rmsnorm.reference import l2_norm_reference, rms_norm_reference
assert T.available()
TOL = {torch.float32: 1e-4, torch.float16: 4e-3, torch.bfloat16: 3e-2}


def reference(x, w, b, k, inv_n):
    if inv_n == 1.0:
        return l2_norm_reference(x, w, b, 1e-6) if k == x.shape[-1] else None
    return rms_norm_reference(x, w, b, 1e-6, k)


# odd widths, one row and many (several tiles per backward program), k < d, every affine form
cases = [(1, 1, 1, "none"), (5, 7, 7, "bias"), (9, 64, 4, "weight"), (3, 1000, 62, "bias"), (70, 33, 33, "bias"),
         (301, 24, 3, "weight"), (2, 4097, 4097, "weight")]
for dtype, tol in TOL.items():
    for rows, d, k, affine in cases:
        for inv_n in (1.0 / k, 1.0):
            for as_op in (False, True):
                g = torch.Generator().manual_seed(d)
                base = torch.randn(rows, d + 3, generator=g).to(dtype)
                x = base[:, 1:d + 1].detach().requires_grad_()  # rows of a wider matrix: strided, read in place
                w = torch.randn(d, generator=g).to(dtype).requires_grad_() if affine != "none" else None
                b = torch.randn(d, generator=g).to(dtype).requires_grad_() if affine == "bias" else None
                params = [t for t in (x, w, b) if t is not None]
                dy = torch.randn(rows, d, generator=g).to(dtype)
                ref = reference(*(t.float() if t is not None else None for t in (x, w, b)), k, inv_n)
                if ref is None:
                    continue
                y = T.row_norm(x, w, b, 1e-6, k, inv_n, as_op=as_op)
                assert y.dtype == dtype and y.shape == x.shape
                torch.testing.assert_close(y.float(), ref, atol=tol * 4, rtol=tol)
                want = torch.autograd.grad(ref, params, dy.float())
                for got, ref_grad in zip(torch.autograd.grad(y, params, dy), want):
                    ref_grad = ref_grad.float()
                    scale = ref_grad.abs().max().item() + 1
                    torch.testing.assert_close(got.float(), ref_grad, atol=tol * scale * 4, rtol=tol)
# the dispatch's 'ours' path for each norm: prmsnorm and l2norm reach the kernel through cuda_paths
with cuda_paths.forced("ours"):
    x = torch.randn(6, 48, dtype=torch.float32, requires_grad=True)
    for norm, k, ref in [("prmsnorm", 3, rms_norm_reference(x, None, None, 1e-6, 3)),
                         ("l2norm", 48, l2_norm_reference(x, None, None, 1e-6))]:
        y = cuda_paths.row_norm(norm, x, None, None, 1e-6, k)
        assert y.grad_fn.name().startswith("View") or "Triton" in y.grad_fn.name(), y.grad_fn.name()
        torch.testing.assert_close(y, ref, atol=1e-5, rtol=1e-5)
print("triton ok")
"""


def test_triton_kernels_in_the_interpreter():
    """The Triton source itself, run by Triton's CPU interpreter: the same kernels a GPU compiles, through the
    eager autograd.Function and through the torch.library ops torch.compile sees; fp32, fp16, bf16."""
    pytest.importorskip("triton")
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    r = subprocess.run([sys.executable, "-c", TRITON_CHECK], cwd=REPO, env=env, capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0 and "triton ok" in r.stdout, r.stderr[-3000:]


def test_row_counts_never_compile_a_new_kernel():
    # Triton compiles a kernel per specialisation of its integer arguments (1, multiples of 16, others): the row
    # count and loop length change from call to call, so neither may be specialised
    triton_kernels = pytest.importorskip("rmsnorm.kernels.triton_kernels")
    pytest.importorskip("triton")
    if os.environ.get("TRITON_INTERPRET") == "1":
        pytest.skip("the interpreter has no compiled kernels")
    assert set(triton_kernels._forward_kernel.do_not_specialize) == {"rows"}
    assert set(triton_kernels._backward_kernel.do_not_specialize) == {"rows", "tiles_per_program"}


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_kernel_cache_holds_one_entry_per_configuration():
    from rmsnorm.kernels import triton_kernels as T

    device = torch.cuda.current_device()
    w = torch.ones(1000, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    for rows in (1, 7, 16, 33, 1000, 4097):
        x = torch.randn(rows, 1000, device="cuda", dtype=torch.bfloat16, requires_grad=True)
        T.row_norm(x, w, None, 1e-6, 1000, 1e-3).sum().backward()
    for kernel in (T._forward_kernel, T._backward_kernel):
        assert len(kernel.device_caches[device][0]) == 1


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("path", ["ours", "torch", None])
@pytest.mark.parametrize("dtype, tol", [(torch.float32, 1e-5), (torch.bfloat16, 2e-2), (torch.float16, 5e-3)])
@pytest.mark.parametrize("rows, d", [(1, 1), (3, 33), (512, 1024), (80, 4097)])
@pytest.mark.parametrize("p", [1.0, 0.0625])
def test_cuda_matches_reference(path, dtype, tol, rows, d, p):
    from rmsnorm.kernels import cuda_paths

    k = max(1, int(d * p))
    g = torch.Generator(device="cuda").manual_seed(0)
    x = torch.randn(rows, d, device="cuda", generator=g).to(dtype).requires_grad_()
    w = torch.randn(d, device="cuda", generator=g).to(dtype).requires_grad_()
    with cuda_paths.forced(path):
        layer_out = rmsnorm.rms_norm(x, w, None, 1e-6, k)
    if path == "ours":
        assert _path(layer_out).startswith("TritonRowNorm")
    ref = rms_norm_reference(x.float(), w.float(), None, 1e-6, k)
    torch.testing.assert_close(layer_out.float(), ref, atol=tol, rtol=tol)
    dy = torch.randn_like(ref)
    got = torch.autograd.grad(layer_out, (x, w), dy.to(dtype))
    want = torch.autograd.grad(ref, (x, w), dy)
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a.float(), b.float(), atol=tol * 10 * (1 + b.abs().max().item()), rtol=tol * 10)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_choice_is_measured_once_and_recorded():
    from rmsnorm.kernels import cuda_paths

    cuda_paths.clear()
    x = torch.randn(4000, 1024, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    w = torch.ones(1024, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    for k in (1024, 64):
        rmsnorm.rms_norm(x, w, None, 1e-6, k)
    rmsnorm.l2_norm(x, w, None, 1e-6)
    chosen = dispatch.describe()["cuda"]
    assert set(chosen) == {"rmsnorm/bfloat16/d513-1024/rows>1024", "prmsnorm/bfloat16/d513-1024/rows>1024",
                           "l2norm/bfloat16/d513-1024/rows>1024"}
    assert chosen["prmsnorm/bfloat16/d513-1024/rows>1024"] in ("ours", "reference")


def test_without_a_compiler_or_ninja_the_kernels_fallback_names_what_to_install(monkeypatch):
    import builtins
    import shutil

    from rmsnorm.kernels import cpu

    real_import = builtins.__import__

    def no_ninja(name, *args, **kwargs):
        if name == "ninja":
            raise ImportError("no ninja here")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(shutil, "which", lambda name: None)
    monkeypatch.setattr(builtins, "__import__", no_ninja)
    message = cpu.fallback_message(RuntimeError("Ninja is required to load C++ extensions\nmore detail"))
    assert "\n" not in message and "reference path" in message
    assert "apt-get install g++" in message and "pip install ninja" in message
    monkeypatch.undo()
    other = cpu.fallback_message(RuntimeError("error: some compiler failure\nline two"))
    assert "\n" not in other
    if not cpu.missing_tools():  # both present here: the reason is the build's own first line
        assert "some compiler failure" in other and "--verbose" in other


def test_each_checkout_builds_the_cpu_kernel_in_a_cache_of_its_own(tmp_path):
    here = cpu.build_dir()
    assert cpu.build_dir(cpu._SOURCES[0].parent) == here
    assert cpu.build_dir(tmp_path) != here and cpu.build_dir(tmp_path).parent == here.parent
