"""The norm library's structure: imports point one way, the kernels know no layer, and the registry is the
one place a norm is declared."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import rmsnorm
from rmsnorm import BlockNorm, NormInfo, NormSpec, register_norm, unregister_norm
from rmsnorm.kernels import dispatch
from rmsnorm.reference import rms_norm_reference

LIB = Path(rmsnorm.__file__).parent
MODULES = sorted(
    ".".join(p.relative_to(LIB.parent).with_suffix("").parts).removesuffix(".__init__") for p in LIB.rglob("*.py")
)


def _imports(module: str) -> set[str]:
    """rmsnorm modules a module imports, at any depth of its source (function-level imports too)."""
    path = LIB.parent / (module.replace(".", "/") + ".py")
    if not path.exists():
        path = LIB.parent / module.replace(".", "/") / "__init__.py"
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("rmsnorm"):
            for alias in node.names:
                sub = f"{node.module}.{alias.name}"
                found.add(sub if sub in MODULES else node.module)
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("rmsnorm")}
    found.discard(module)
    return found


def test_the_import_graph_has_no_cycle_and_kernels_know_no_layer():
    graph = {m: _imports(m) - {"rmsnorm"} for m in MODULES if m != "rmsnorm"}
    state: dict[str, str] = {}

    def visit(m, path):
        if state.get(m) == "open":
            raise AssertionError(f"import cycle: {' -> '.join([*path, m])}")
        if state.get(m) == "done":
            return
        state[m] = "open"
        for dep in graph.get(m, ()):
            visit(dep, [*path, m])
        state[m] = "done"

    for m in graph:
        visit(m, [])
    for m in graph:
        if m.startswith("rmsnorm.kernels"):
            outside = {d for d in graph[m] if not d.startswith("rmsnorm.kernels")}
            assert outside <= {"rmsnorm.reference"}, f"{m} imports {outside}"
    assert graph["rmsnorm.reference"] == set()


@pytest.mark.parametrize("module", MODULES)
def test_every_module_imports_alone_in_a_fresh_interpreter(module):
    r = subprocess.run([sys.executable, "-c", f"import {module}"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]


class ScaleNorm(torch.nn.Module):
    """A toy norm: x / ||x|| * g with one scalar gain (Nguyen & Salazar's ScaleNorm)."""

    def __init__(self, d, eps=1e-5, **_):
        super().__init__()
        self.eps = eps
        self.g = torch.nn.Parameter(torch.tensor(float(d) ** 0.5))

    def forward(self, x):
        dims = (-1,) if x.dim() != 4 else (-2, -1)
        return self.g * x * torch.rsqrt(x.pow(2).sum(dims, keepdim=True) + self.eps)


def register_toy(name="scalenorm"):
    return register_norm(NormInfo(name, "ScaleNorm", features=lambda d, eps, **_: ScaleNorm(d, eps),
                                  maps=lambda c, eps, **_: ScaleNorm(c, eps), eps=1e-5))


def test_a_registered_norm_builds_everywhere_and_unknown_names_list_it():
    register_toy()
    try:
        assert "scalenorm" in rmsnorm.norm_names()
        spec = NormSpec("scalenorm")
        assert spec.eps == 1e-5 and isinstance(spec.build(8), ScaleNorm)
        cell = rmsnorm.NormGRUCell(4, 6, spec)
        assert cell(torch.randn(2, 4)).shape == (2, 6)
        with pytest.raises(rmsnorm.NormConfigError, match="registered already"):
            register_toy()
    finally:
        unregister_norm("scalenorm")
    with pytest.raises(rmsnorm.NormConfigError, match="valid norms are: none, batchnorm, bn_everywhere"):
        NormSpec("scalenorm")


def test_recurrent_cells_refuse_batch_statistics_and_name_the_norms_that_fit():
    with pytest.raises(rmsnorm.NormConfigError, match="no place inside this recurrent cell; use one of none, layer"):
        rmsnorm.NormGRUCell(4, 6, "batchnorm")


def test_batchnorm_honours_the_eps_it_is_given():
    assert NormSpec("batchnorm").build(4).eps == 1e-5  # torch's default when none is given
    assert NormSpec("batchnorm", eps=1e-8).build2d(4).eps == 1e-8


@pytest.mark.parametrize("norm", ["rmsnorm", "prmsnorm", "l2norm", "layernorm", "none"])
@pytest.mark.parametrize("sizes", [(12,), (8, 4), (5, 9, 4, 7)])
def test_block_norm_equals_one_norm_per_block(norm, sizes):
    torch.manual_seed(0)
    block = BlockNorm(NormSpec(norm, p=0.25, eps=1e-6), sizes).double()
    with torch.no_grad():
        for p in block.parameters():
            p.normal_()
    assert (block._fused is not None) == (norm in ("rmsnorm", "prmsnorm", "l2norm"))
    x = torch.randn(6, sum(sizes), dtype=torch.float64, requires_grad=True)
    weights = [p for p in block.parameters()]

    def run():
        out = torch.cat(block(x), -1)
        grads = torch.autograd.grad((out * torch.arange(out.shape[-1], dtype=out.dtype)).sum(), [x, *weights])
        return (out, *grads)

    fused = run()
    if norm == "rmsnorm":  # the blocks against the paper's formula, block by block
        want = torch.cat([rms_norm_reference(part, n.weight, None, 1e-6)
                          for n, part in zip(block.norms, x.split(sizes, -1), strict=True)], -1)
        torch.testing.assert_close(fused[0], want)
    with dispatch.reference_only():
        reference = run()
    for a, b in zip(fused, reference, strict=True):
        torch.testing.assert_close(a, b)
