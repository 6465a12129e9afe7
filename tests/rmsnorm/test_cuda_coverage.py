"""What users run, on every device: bias and no-weight, L2Norm and pRMSNorm, non-contiguous and strided inputs,
torch.compile, inference mode, CUDA graphs and the DDP choice. Each check runs on the CPU here and on CUDA where
a GPU is (`scripts/gpu_checks.sh` runs the CUDA ones); CUDA-only checks skip here, saying why."""

import os
import tempfile

import pytest
import torch

import rmsnorm
from rmsnorm import PartialRMSNorm, RMSNorm
from rmsnorm.reference import l2_norm_reference, rms_norm_reference

CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (scripts/gpu_checks.sh runs it on a GPU)")
DEVICES = ["cpu", pytest.param("cuda", marks=[pytest.mark.cuda, CUDA])]


def _ref(norm, x, w, b, eps, k):
    return l2_norm_reference(x, w, b, eps) if norm == "l2norm" else rms_norm_reference(x, w, b, eps, k)


def _ours(norm, x, w, b, eps, k):
    return rmsnorm.l2_norm(x, w, b, eps) if norm == "l2norm" else rmsnorm.rms_norm(x, w, b, eps, k)


def _check(norm, x, w, b, k, tol=1e-5):
    params = [t for t in (x, w, b) if t is not None]
    got = _ours(norm, x, w, b, 1e-6, k)
    want = _ref(norm, x, w, b, 1e-6, k)
    torch.testing.assert_close(got, want, atol=tol, rtol=tol)
    dy = torch.randn_like(want)
    for a, c in zip(torch.autograd.grad(got, params, dy), torch.autograd.grad(want, params, dy), strict=True):
        torch.testing.assert_close(a, c, atol=tol * 10, rtol=tol * 10)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("norm, k", [("rmsnorm", 96), ("prmsnorm", 6), ("l2norm", 96)])
@pytest.mark.parametrize("weight, bias", [(True, True), (False, True), (False, False)])
def test_bias_and_no_weight_match_the_reference(device, norm, k, weight, bias):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(40, 96, generator=g).to(device).requires_grad_()
    w = torch.randn(96, generator=g).to(device).requires_grad_() if weight else None
    b = torch.randn(96, generator=g).to(device).requires_grad_() if bias else None
    _check(norm, x, w, b, k)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("view", ["transposed", "strided last dim", "strided rows", "expanded batch"])
@pytest.mark.parametrize("norm, k", [("rmsnorm", 64), ("prmsnorm", 4), ("l2norm", 64)])
def test_non_contiguous_and_strided_inputs_match_the_reference(device, view, norm, k):
    g = torch.Generator().manual_seed(1)
    base = torch.randn(64, 128, generator=g).to(device)
    x = {"transposed": lambda: base[:, :64].t(), "strided last dim": lambda: base[:, ::2],
         "strided rows": lambda: base[::2, :64], "expanded batch": lambda: base[:1, :64].expand(5, 64)}[view]()
    assert not x.is_contiguous()
    x = x.detach().requires_grad_()
    w = torch.randn(64, generator=g).to(device).requires_grad_()
    _check(norm, x, w, None, k)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("layer", ["rmsnorm", "prmsnorm"])
def test_a_compiled_layer_matches_eager(device, layer):
    torch._dynamo.reset()
    module = (RMSNorm(256) if layer == "rmsnorm" else PartialRMSNorm(256, p=0.0625)).to(device)
    with torch.no_grad():
        module.weight.copy_(torch.linspace(0.5, 1.5, 256))
    # inductor on a GPU; on the CPU Dynamo's tracing with the eager backend (no minute of C++ compile)
    compiled = torch.compile(module, backend="inductor" if device == "cuda" else "aot_eager", fullgraph=False)
    x = torch.randn(32, 256, device=device, requires_grad=True)
    y, y_ref = compiled(x), module(x)
    torch.testing.assert_close(y, y_ref, atol=1e-5, rtol=1e-5)
    gx, = torch.autograd.grad(y.sum(), x)
    gx_ref, = torch.autograd.grad(y_ref.sum(), x)
    torch.testing.assert_close(gx, gx_ref, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("device", DEVICES)
def test_inference_mode_from_the_first_call(device):
    from rmsnorm.kernels import cuda_paths

    cuda_paths.clear()  # on CUDA the first call measures the paths: it must do so under inference mode too
    layer = RMSNorm(200).to(device)
    x = torch.randn(16, 200, device=device)
    with torch.inference_mode():
        y = layer(x)
    torch.testing.assert_close(y, rms_norm_reference(x, layer.weight.detach(), None, layer.eps), atol=1e-5, rtol=1e-5)


@pytest.mark.cuda
@CUDA
def test_a_cuda_graph_replays_the_norm():
    layer = RMSNorm(512).cuda()
    static_x = torch.randn(64, 512, device="cuda")
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream), torch.no_grad():
        for _ in range(3):  # warm-up, and the path's choice, outside the capture
            layer(static_x)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph), torch.no_grad():
        static_y = layer(static_x)
    static_x.copy_(torch.randn(64, 512, device="cuda"))
    graph.replay()
    torch.cuda.synchronize()
    torch.testing.assert_close(static_y, rms_norm_reference(static_x, layer.weight.detach(), None, layer.eps),
                               atol=1e-5, rtol=1e-5)


def _ddp_rank(rank: int, world: int, store: str, out: str) -> None:
    import json

    import torch.distributed as dist

    from rmsnorm.kernels import cuda_paths

    torch.cuda.set_device(rank)
    dist.init_process_group("nccl", init_method=f"file://{store}", rank=rank, world_size=world)
    cuda_paths.clear()
    rows = 100 if rank == 0 else 3000  # ranks meet different shapes, as with ragged batches
    rmsnorm.rms_norm(torch.randn(rows, 1024, device="cuda"), torch.ones(1024, device="cuda"), None, 1e-6, 1024)
    with open(os.path.join(out, f"rank{rank}.json"), "w") as f:
        json.dump({"choices": cuda_paths.choices(), "first": cuda_paths._usable("rmsnorm", torch.float32,
                                                                                 torch.device("cuda", rank))[0]}, f)
    dist.destroy_process_group()


@pytest.mark.cuda
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two GPUs (one is lent here at most)")
def test_ddp_ranks_take_the_same_path_without_a_collective():
    import json

    import torch.multiprocessing as mp

    with tempfile.TemporaryDirectory() as out:
        mp.spawn(_ddp_rank, args=(2, os.path.join(out, "store"), out), nprocs=2, join=True)
        ranks = []
        for r in range(2):
            with open(os.path.join(out, f"rank{r}.json")) as f:
                ranks.append(json.load(f))
    for rank in ranks:
        assert set(rank["choices"].values()) == {rank["first"]}
    assert ranks[0]["first"] == ranks[1]["first"]
