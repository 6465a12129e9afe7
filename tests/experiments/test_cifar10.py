"""CIFAR-10: the loader on real-format fixtures, ZCA, the model, and end-to-end runs for every norm."""

import json
import pickle

import numpy as np
import pytest
import torch

from experiments.cifar10 import data as cifar_data
from experiments.cifar10.data import fit_zca, load_cifar10, prepare_zca
from experiments.cifar10.model import ConvPoolCNNC, MaxPool2d
from experiments.cifar10.pickle_format import write_cifar_folder
from experiments.core.errors import MissingData
from experiments.core.records import read_metrics
from experiments.core.training.run import run_training
from rmsnorm import NormSpec
from tests.conftest import compose_cfg, prepare, tiny_cifar

SUMMARY_KEYS = {"task", "norm", "seed", "preset", "device", "status", "steps", "epochs", "primary_metric",
                "metrics", "timing", "config", "versions", "kernels"}


def test_loader_reads_the_real_format(cifar_dir):
    prepare_zca(cifar_dir / "cifar10", 1e-2, None, "make data-cifar10")
    data = load_cifar10(cifar_dir / "cifar10", 1e-2, None, None, "make data-cifar10")
    assert data.train_x.shape == (300, 3, 32, 32) and data.test_x.shape == (100, 3, 32, 32)
    assert data.train_x.dtype == torch.float32 and data.train_y.dtype == torch.int64
    assert set(data.train_y.tolist()) <= set(range(10))
    # the file holds CHW-flattened uint8 rows, as the real download does
    with open(cifar_dir / "cifar10" / "cifar-10-batches-py" / "data_batch_1", "rb") as f:
        batch = pickle.load(f, encoding="latin1")
    assert batch["data"].dtype == np.uint8 and batch["data"].shape[1] == 3072


def test_loaded_images_are_shared_until_their_files_change(tmp_path, rng):
    x = rng.integers(0, 255, (20, 32, 32, 3), dtype=np.uint8)
    y = np.arange(20) % 10
    write_cifar_folder(tmp_path, x, y, x, y)
    prepare_zca(tmp_path, 1e-2, None, "make data-cifar10")
    first = load_cifar10(tmp_path, 1e-2, None, None, "make data-cifar10")
    assert load_cifar10(tmp_path, 1e-2, None, None, "make data-cifar10") is first  # whitened once a process
    assert load_cifar10(tmp_path, 1e-2, None, 5, "make data-cifar10").test_x.shape[0] == 5  # other settings
    write_cifar_folder(tmp_path, x, y, x, y, replace=True)  # rewritten: read again
    again = load_cifar10(tmp_path, 1e-2, None, None, "make data-cifar10")
    assert again is not first and torch.equal(again.train_x, first.train_x)
    for zca in tmp_path.glob("zca-*"):
        zca.unlink()
    with pytest.raises(MissingData, match="no ZCA fitted"):
        load_cifar10(tmp_path, 1e-2, None, None, "make data-cifar10")


def test_preparation_keeps_the_whitened_images_the_loader_would_compute(tmp_path, rng, monkeypatch):
    x = rng.integers(0, 255, (40, 32, 32, 3), dtype=np.uint8)
    y = np.arange(40) % 10
    write_cifar_folder(tmp_path, x, y, x[:12], y[:12])
    prepare_zca(tmp_path, 1e-2, 30, "make data-cifar10")
    with monkeypatch.context() as m:  # a training process reads them, it does not whiten
        m.setattr(cifar_data, "whiten", lambda *a: pytest.fail("whitened again"))
        kept = load_cifar10(tmp_path, 1e-2, 30, 5, "make data-cifar10")
    [first] = tmp_path.glob("whitened-*")
    first.unlink()  # without the file the loader whitens in the process: the same images
    computed = load_cifar10(tmp_path, 1e-2, 30, 5, "make data-cifar10")
    assert kept.train_x.shape == (30, 3, 32, 32) and kept.test_x.shape == (5, 3, 32, 32)
    # equal up to the matmul's rounding, which depends on how many rows it is given
    torch.testing.assert_close(kept.train_x, computed.train_x, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(kept.test_x, computed.test_x, rtol=1e-4, atol=1e-4)
    assert torch.equal(kept.test_y, computed.test_y) and torch.equal(kept.train_y, computed.train_y)
    # other test images beside the same training images: a file of their own, never the first one's
    write_cifar_folder(tmp_path, x, y, x[12:24], y[12:24], replace=True)
    prepare_zca(tmp_path, 1e-2, 30, "make data-cifar10")
    [second] = tmp_path.glob("whitened-*")
    assert second.name != first.name
    other = load_cifar10(tmp_path, 1e-2, 30, None, "make data-cifar10")
    torch.testing.assert_close(other.train_x, kept.train_x)
    assert not torch.allclose(other.test_x[:5], kept.test_x)


def test_zca_whitens(rng):
    mixing = rng.normal(size=(12, 12)) + 3 * np.eye(12)
    x = (rng.normal(size=(2000, 12)) @ mixing).reshape(2000, 3, 2, 2) + 0.7  # correlated, offset
    cov = np.cov(x.reshape(2000, -1).T, bias=True)
    assert np.abs(cov - np.diag(np.diag(cov))).max() > 1.0  # the features really are correlated
    mean, zca = fit_zca(x, eps=0.0)
    white = (x.reshape(2000, -1) - mean) @ zca
    np.testing.assert_allclose(np.cov(white.T, bias=True), np.eye(12), atol=1e-6)
    np.testing.assert_allclose(zca, zca.T, atol=1e-10)  # ZCA, not just any whitening: symmetric


def test_missing_data_names_the_make_target(tmp_path):
    with pytest.raises(MissingData, match="make data-cifar10"):
        load_cifar10(tmp_path, 1e-5, None, None, "make data-cifar10")


def test_training_reads_only_and_names_the_prepare_command(tmp_path, rng):
    x = rng.integers(0, 255, (20, 32, 32, 3), dtype=np.uint8)
    write_cifar_folder(tmp_path, x, np.arange(20) % 10, x, np.arange(20) % 10)
    with pytest.raises(MissingData, match="no ZCA fitted.*run `make data-cifar10` first"):
        load_cifar10(tmp_path, 1e-5, None, None, "make data-cifar10")
    assert not list(tmp_path.glob("zca-*"))  # loading wrote nothing


def test_corrupt_data_is_a_clear_error(tmp_path, rng):
    x = rng.integers(0, 255, (20, 32, 32, 3), dtype=np.uint8)
    write_cifar_folder(tmp_path, x, np.arange(20) % 10, x, np.arange(20) % 10)
    (tmp_path / "cifar-10-batches-py" / "data_batch_3").write_bytes(b"not a pickle")
    with pytest.raises(MissingData, match="corrupt"):
        load_cifar10(tmp_path, 1e-5, None, None, "make data-cifar10")


@pytest.mark.parametrize("norm", ["none", "batchnorm", "weightnorm", "layernorm", "rmsnorm", "prmsnorm"])
def test_model_shapes_and_gradients(norm):
    model = ConvPoolCNNC(NormSpec(norm, p=0.125), widths=(4, 8))
    out = model(torch.randn(3, 3, 32, 32))
    assert out.shape == (3, 10)
    out.sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters() if p.requires_grad)


def test_prmsnorm_takes_the_logits_statistic_over_all_ten():
    # 12.5% of 10 logits would be one logit; the logits are shorter than pRMSNorm's minimum, so all 10 count
    logit_norm = ConvPoolCNNC(NormSpec("prmsnorm", p=0.125), widths=(4, 8)).classifier[1]
    assert logit_norm.k == 10


@pytest.mark.parametrize("norm", ["none", "batchnorm", "weightnorm", "layernorm", "rmsnorm", "prmsnorm"])
def test_end_to_end_every_norm(cifar_dir, tmp_path, norm):
    cfg = compose_cfg(tiny_cifar(cifar_dir, f"norm={norm}"))
    summary = run_training(cfg, tmp_path)
    assert summary.keys() >= SUMMARY_KEYS
    assert json.loads((tmp_path / "summary.json").read_text())["metrics"] == summary["metrics"]
    assert summary["task"] == "cifar10" and summary["norm"] == norm and summary["preset"] == "paper"
    assert summary["steps"] == 6 and summary["epochs"] == 2.0
    # the implementation the norms took is on record (here the CPU kernel; CUDA choices stay empty on the CPU)
    assert summary["kernels"]["cpu"] in ("fused C++ kernel", "not used") and summary["kernels"]["cuda"] == {}
    assert 0.0 <= summary["metrics"]["test_error"] <= 1.0
    timing = summary["timing"]
    assert timing["timed_steps"] == 5  # 6 steps less 1 warm-up
    assert timing["sec_per_1k_steps"] > 0
    # the paper's unit: an epoch of CIFAR-10's 50k images at the run's batch, whatever the data's size
    batch = summary["config"]["task"]["batch_size"]
    assert timing["sec_per_epoch"] == pytest.approx(timing["sec_per_1k_steps"] * 50_000 / batch / 1000)
    curve = read_metrics(tmp_path)
    assert [m["step"] for m in curve] == [1, 2, 3, 4, 5, 6]
    assert all(np.isfinite(m["train_loss"]) for m in curve)
    assert "eval/test_error" in curve[2] and "eval/test_error" in curve[5]
    assert summary["config"]["norm"]["name"] == norm


def test_demo_preset_learns_on_generated_images(tmp_path):
    """The demo's model on its generator, smaller and at the generator's easy setting: the error must fall well
    below chance (90%)."""
    overrides = ["task=cifar10", "norm=rmsnorm", "preset=demo", f"data_dir={tmp_path / 'data'}", "logger=none",
                 "train.progress=false", "task.synthetic.n_train=1000", "task.synthetic.n_test=300", "train.epochs=8",
                 "task.synthetic.colour_jitter=0.08", "task.synthetic.noise=0.06", "task.synthetic.distractors=0",
                 "task.synthetic.sizes=[11,13,15]"]
    prepare(overrides)
    summary = run_training(compose_cfg(overrides), tmp_path / "run")
    assert summary["metrics"]["test_error"] < 0.78
    assert (tmp_path / "data" / "cifar10-demo" / "cifar-10-batches-py" / "test_batch").exists()


def test_generated_data_is_regenerated_when_the_preset_asks_for_other_sizes(tmp_path):
    from experiments.cifar10.data import read_split

    base = ["task=cifar10", "norm=rmsnorm", "preset=smoke", f"data_dir={tmp_path}"]
    root = prepare([*base, "task.synthetic.n_train=200", "task.synthetic.n_test=50"])
    assert len(read_split(root, True, "")[0]) == 200
    root = prepare([*base, "task.synthetic.n_train=300", "task.synthetic.n_test=50"])
    assert len(read_split(root, True, "")[0]) == 300 and len(read_split(root, False, "")[0]) == 50
    assert len(list(root.glob("zca-*.pt"))) == 1  # the ZCA of the replaced images is gone


def test_a_norm_outside_the_papers_rows_runs_and_one_without_a_map_form_is_a_clear_error(cifar_dir, tmp_path):
    summary = run_training(compose_cfg(tiny_cifar(cifar_dir, "norm=l2norm", "train.epochs=1")), tmp_path / "l2")
    assert summary["norm"] == "l2norm"  # not a row of Table 10, but it has a map form

    from rmsnorm import NormConfigError, NormInfo, register_norm, unregister_norm

    register_norm(NormInfo("featuresonly", "F", features=lambda d, **_: torch.nn.Identity()))
    try:
        from experiments.core.training.config import register_norm_configs

        register_norm_configs()
        with pytest.raises(NormConfigError, match="norm 'featuresonly' has no form for .N, C, H, W. maps"):
            run_training(compose_cfg(tiny_cifar(cifar_dir, "norm=featuresonly")), tmp_path / "f")
    finally:
        unregister_norm("featuresonly")


def test_weight_norm_data_dependent_init_standardises_every_layer():
    torch.manual_seed(0)
    model = ConvPoolCNNC(NormSpec("weightnorm"), widths=(4, 8))
    x = torch.randn(64, 3, 32, 32) * 3 + 1
    layers = model.weight_norm_layers()
    assert len(layers) == 10  # nine conv/NIN layers and the classifier
    model.data_dependent_init(x)
    model.eval()
    for layer in layers:  # each layer's pre-activations on the init batch: mean 0, std 1 per channel
        y = model._output_of(layer, x)
        dims = [d for d in range(y.dim()) if d != 1]
        torch.testing.assert_close(y.mean(dims), torch.zeros(y.shape[1]), atol=1e-4, rtol=0)
        torch.testing.assert_close(y.std(dims), torch.ones(y.shape[1]), atol=1e-3, rtol=0)
    assert ConvPoolCNNC(NormSpec("rmsnorm"), widths=(4, 8)).weight_norm_layers() == []


@pytest.mark.parametrize("norm", ["rmsnorm", "layernorm", "batchnorm", "weightnorm", "none"])
def test_the_logits_are_normalised_as_the_reference_wraps_the_final_layer(norm):
    torch.manual_seed(0)
    model = ConvPoolCNNC(NormSpec(norm), widths=(4, 8)).eval()
    logits = model(torch.randn(6, 3, 32, 32) * 2 + 0.5)
    if norm == "rmsnorm":  # gain 1, shift 0: unit RMS over each example's 10 logits
        torch.testing.assert_close(logits.pow(2).mean(1).sqrt(), torch.ones(6), atol=1e-5, rtol=0)
    if norm == "layernorm":
        torch.testing.assert_close(logits.mean(1), torch.zeros(6), atol=1e-5, rtol=0)
        torch.testing.assert_close(logits.var(1, unbiased=False), torch.ones(6), atol=1e-3, rtol=0)
    last = model.classifier[-1]
    assert type(last).__name__ == {"rmsnorm": "RMSNorm", "layernorm": "LayerNorm", "batchnorm": "BatchNorm1d",
                                   "weightnorm": "Identity", "none": "Identity"}[norm]
    # the norm's shift replaces the dense layer's bias; without a norm the layer keeps its own
    assert (model.classifier[0].bias is None) == (norm in ("rmsnorm", "layernorm", "batchnorm"))
    plain = ConvPoolCNNC(NormSpec(norm), widths=(4, 8), normalise_logits=False)
    assert isinstance(plain.classifier[-1], torch.nn.Identity) and plain.classifier[0].bias is not None


def test_the_upstream_init_draws_batch_and_weight_norm_layers_from_n_0_0_05_and_fixes_the_baselines_gain():
    torch.manual_seed(0)
    bn = ConvPoolCNNC(NormSpec("batchnorm"), widths=(32, 64))
    assert abs(bn.features[1][0].weight.std().item() - 0.05) < 0.005  # Glorot for 3 -> 32 would be 0.11
    rms = ConvPoolCNNC(NormSpec("rmsnorm"), widths=(32, 64))
    assert abs(rms.features[1][0].weight.std().item() - (2 / (27 + 288)) ** 0.5) < 0.01  # Glorot
    base = ConvPoolCNNC(NormSpec("none"), widths=(4, 8))
    layers = base.weight_norm_layers()
    assert len(layers) == 10 and all(not layer.parametrizations.weight[0].g.requires_grad for layer in layers)
    x = torch.randn(64, 3, 32, 32) * 3 + 1
    base.data_dependent_init(x)
    base.eval()
    for layer in layers:  # zero mean, unit variance per unit on the init batch, as for weight norm
        y = base._output_of(layer, x)
        dims = [d for d in range(y.dim()) if d != 1]
        torch.testing.assert_close(y.mean(dims), torch.zeros(y.shape[1]), atol=1e-4, rtol=0)
        torch.testing.assert_close(y.std(dims), torch.ones(y.shape[1]), atol=1e-3, rtol=0)
    # the gains are buffers: the optimiser trains V and the biases only
    trained = {n for n, _ in base.named_parameters()}
    assert not any(n.endswith(".g") for n in trained) and any("original" in n for n in trained)
    plain = ConvPoolCNNC(NormSpec("none"), widths=(4, 8), baseline_data_init=False)
    assert plain.weight_norm_layers() == []


def test_channels_last_max_pool_gives_torch_pool_values_and_gradients():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 4, 8, 6, generator=g, dtype=torch.float64, requires_grad=True)
    upstream = torch.randn(3, 4, 4, 3, generator=g, dtype=torch.float64)
    ours, theirs = MaxPool2d(2)(x), torch.nn.MaxPool2d(2)(x)
    assert ours.is_contiguous() and torch.equal(ours, theirs)
    (g_ours,) = torch.autograd.grad(ours, x, upstream)
    (g_theirs,) = torch.autograd.grad(theirs, x, upstream)
    assert torch.equal(g_ours, g_theirs)
