"""The CUDA dispatch's logic, run on CPU tensors: torch's fused kernel for L2Norm, the measured choice with a
fake timer, the cache, the forced path, and what a run's summary is told."""

import subprocess
import sys

import pytest
import torch

from rmsnorm.kernels import cuda_paths, dispatch
from rmsnorm.reference import NormConfigError, l2_norm_reference, rms_norm_reference


def _all_grads(fn, x, w, b):
    y = fn(x, w, b)
    dy = torch.randn(y.shape, generator=torch.Generator().manual_seed(1), dtype=y.dtype)
    params = [t for t in (x, w, b) if t is not None]
    return (y, *torch.autograd.grad(y, params, dy))


def _inputs(rows, d, affine, dtype=torch.float64):
    g = torch.Generator().manual_seed(d)
    x = (torch.randn(rows, d, generator=g, dtype=dtype) * 2 + 0.3).requires_grad_()
    w = torch.randn(d, generator=g, dtype=dtype).requires_grad_() if affine else None
    b = torch.randn(d, generator=g, dtype=dtype).requires_grad_() if affine == "bias" else None
    return x, w, b


@pytest.mark.parametrize("affine", [None, "weight", "bias"])
@pytest.mark.parametrize("d", [1, 7, 64, 1000])
def test_l2norm_through_torch_rms_norm_equals_the_reference(affine, d):
    # x / sqrt(sum x^2 + eps) = rms_norm(x, w / sqrt(d), eps / d): outputs and every gradient
    x, w, b = _inputs(5, d, affine)
    got = _all_grads(lambda x, w, b: cuda_paths.IMPLEMENTATIONS["l2norm"]["torch"](x, w, b, 1e-6, d), x, w, b)
    want = _all_grads(lambda x, w, b: l2_norm_reference(x, w, b, 1e-6), x, w, b)
    for a, r in zip(got, want, strict=True):
        torch.testing.assert_close(a, r, atol=1e-12, rtol=1e-10)


@pytest.mark.parametrize("affine", [None, "weight", "bias"])
def test_rmsnorm_through_torch_rms_norm_equals_the_reference(affine):
    x, w, b = _inputs(6, 96, affine)
    got = _all_grads(lambda x, w, b: cuda_paths.IMPLEMENTATIONS["rmsnorm"]["torch"](x, w, b, 1e-6, 96), x, w, b)
    want = _all_grads(lambda x, w, b: rms_norm_reference(x, w, b, 1e-6), x, w, b)
    for a, r in zip(got, want, strict=True):
        torch.testing.assert_close(a, r, atol=1e-12, rtol=1e-10)


def test_l2norm_through_torch_in_float32_stays_close():
    x, w, b = _inputs(40, 1024, "bias", torch.float32)
    got = cuda_paths.IMPLEMENTATIONS["l2norm"]["torch"](x, w, b, 1e-8, 1024)
    torch.testing.assert_close(got, l2_norm_reference(x, w, b, 1e-8), atol=1e-5, rtol=1e-4)


@pytest.fixture
def fake_timer(monkeypatch):
    """A timer that says 'reference' is fastest, then 'torch', and counts its calls."""
    calls = []

    def timer(fns):
        calls.append(sorted(fns))
        for fn in fns.values():
            fn()  # the probe's functions must run
        return {name: {"reference": 1.0, "torch": 2.0, "ours": 3.0}[name] for name in fns}

    monkeypatch.setattr(cuda_paths, "timer", timer)
    monkeypatch.setattr(cuda_paths, "_forced", None)
    cuda_paths.clear()
    yield calls
    cuda_paths.clear()


def test_the_fastest_candidate_is_chosen_once_per_bucket_and_recorded(fake_timer, monkeypatch):
    x, w, _ = _inputs(8, 100, "weight", torch.float32)
    assert cuda_paths.choose("rmsnorm", x, w, None, 1e-6, 100) == "reference"
    assert cuda_paths.choose("rmsnorm", x[:, :99], w[:99], None, 1e-6, 99) == "reference"  # same width bucket
    assert len(fake_timer) == 1
    cuda_paths.choose("rmsnorm", torch.randn(2000, 100), w, None, 1e-6, 100)  # many rows: another bucket
    cuda_paths.choose("rmsnorm", torch.randn(8, 300), None, None, 1e-6, 300)  # another width
    assert len(fake_timer) == 3
    # pRMSNorm: no torch kernel among its candidates; without Triton (this machine) only the reference, which
    # needs no measurement
    monkeypatch.setattr(cuda_paths, "_usable", lambda norm, dtype=None, device=None: ("reference",))
    assert cuda_paths.choose("prmsnorm", x, w, None, 1e-6, 6) == "reference"
    assert len(fake_timer) == 3
    assert cuda_paths.choices() == {"rmsnorm/float32/d65-128/rows<=1024": "reference",
                                    "rmsnorm/float32/d65-128/rows>1024": "reference",
                                    "rmsnorm/float32/d257-512/rows<=1024": "reference",
                                    "prmsnorm/float32/d65-128/rows<=1024": "reference"}
    assert dispatch.describe()["cuda"] == cuda_paths.choices()


def test_choosing_leaves_the_global_random_stream_alone(fake_timer):
    torch.manual_seed(5)
    cuda_paths.choose("l2norm", torch.ones(4, 32), None, None, 1e-6, 32)
    after = torch.rand(3)
    torch.manual_seed(5)
    torch.ones(4, 32)
    assert torch.equal(after, torch.rand(3))


def test_a_forced_path_skips_the_measurement(fake_timer):
    x = torch.randn(4, 32)
    with cuda_paths.forced("torch"):
        assert cuda_paths.choose("rmsnorm", x, None, None, 1e-6, 32) == "torch"
        # pRMSNorm has no torch kernel: the first of its candidates
        assert cuda_paths.choose("prmsnorm", x, None, None, 1e-6, 4) == cuda_paths._usable("prmsnorm")[0]
        torch.testing.assert_close(cuda_paths.row_norm("l2norm", x, None, None, 1e-6, 32),
                                   l2_norm_reference(x, eps=1e-6))
    assert fake_timer == []
    assert cuda_paths.forced_path() is None
    with pytest.raises(NormConfigError, match="one of torch, ours, reference"), cuda_paths.forced("fast"):
        pass


def test_the_forced_path_comes_from_the_environment():
    code = "from rmsnorm.kernels import cuda_paths; print(cuda_paths.forced_path())"
    ok = subprocess.run([sys.executable, "-c", code], env={"RMSNORM_CUDA_PATH": "torch", "PATH": ""},
                        capture_output=True, text=True)
    assert ok.stdout.strip().endswith("torch"), ok.stderr
    bad = subprocess.run([sys.executable, "-c", code], env={"RMSNORM_CUDA_PATH": "fastest", "PATH": ""},
                         capture_output=True, text=True)
    assert bad.returncode != 0 and "RMSNORM_CUDA_PATH='fastest' is not a path" in bad.stderr


def test_width_buckets():
    assert [cuda_paths.width_bucket(d) for d in (1, 2, 3, 64, 65, 1024, 1025, 4096)] == [
        "d1-1", "d2-2", "d3-4", "d33-64", "d65-128", "d513-1024", "d1025-2048", "d2049-4096"]


def test_a_candidate_that_raises_is_skipped_with_its_reason_and_the_others_still_compete(fake_timer, monkeypatch):
    def broken(x, w, b, eps, k):
        raise RuntimeError("donated buffer reused\nsecond line")

    impls = dict(cuda_paths.IMPLEMENTATIONS["rmsnorm"], torch=broken)
    monkeypatch.setitem(cuda_paths.IMPLEMENTATIONS, "rmsnorm", impls)
    monkeypatch.setattr(cuda_paths, "_usable", lambda norm, dtype=None, device=None: ("torch", "reference"))
    x, w, _ = _inputs(8, 100, "weight", torch.float32)
    assert cuda_paths.choose("rmsnorm", x, w, None, 1e-6, 100) == "reference"
    reason = {"torch": "RuntimeError: donated buffer reused"}
    assert cuda_paths.skipped() == {"rmsnorm/float32/d65-128/rows<=1024": reason}
    assert dispatch.describe()["cuda_skipped"] == cuda_paths.skipped()
    assert fake_timer == []  # one candidate left: nothing to time


def test_a_first_call_under_inference_mode_measures_as_any_other(fake_timer):
    x, w, _ = _inputs(8, 100, "weight", torch.float32)
    with torch.inference_mode():
        assert cuda_paths.choose("rmsnorm", x.detach(), w.detach(), None, 1e-6, 100) == "reference"
    assert len(fake_timer) == 1 and cuda_paths.skipped() == {}


def test_under_several_processes_every_rank_takes_the_first_candidate_without_measuring(fake_timer, monkeypatch):
    monkeypatch.setattr(cuda_paths, "_distributed", lambda: True)
    x, w, _ = _inputs(8, 100, "weight", torch.float32)
    first = cuda_paths._usable("rmsnorm")[0]
    assert cuda_paths.choose("rmsnorm", x, w, None, 1e-6, 100) == first
    assert cuda_paths.choose("rmsnorm", torch.randn(3000, 100), w, None, 1e-6, 100) == first  # any shape alike
    assert fake_timer == []
