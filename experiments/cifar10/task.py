"""The CIFAR-10 task: data in memory, ConvPool-CNN-C, Adam with the paper's per-norm learning rates, linear
decay to zero over the second half and beta1 0.9 -> 0.5 at half-way, test error as the metric."""

from __future__ import annotations

import logging
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from omegaconf import MISSING, OmegaConf

from experiments.cifar10.data import FOLDER, load_cifar10, prepare_zca
from experiments.cifar10.model import ConvPoolCNNC
from experiments.cifar10.pickle_format import write_cifar_folder
from experiments.cifar10.synthetic import make_images
from experiments.core.data.download import fetch
from experiments.core.data.generated import ensure_generated
from experiments.core.errors import UserError
from experiments.core.training.adam import RootEpsAdam, torch_adam
from experiments.core.training.seeding import epoch_generator
from experiments.core.training.task import Task, TaskConfig

log = logging.getLogger(__name__)
# the archive torchvision and the weight-norm code read, and the md5 its authors publish
CIFAR_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR_MD5 = "c58f30108f718f92721af3b95e74349a"


@dataclass
class Cifar10Model:
    widths: list[int] = MISSING  # channels of the 3x3 blocks: (96, 192) in the paper
    dropout: float = MISSING
    noise_std: float = MISSING  # Gaussian input noise
    leaky_slope: float = MISSING
    init_batch: int = MISSING  # weightnorm: images for the data-dependent initialisation (0: none)
    normalise_logits: bool = MISSING  # the norm on the 10 logits too, as the reference wraps its final layer
    bn_wn_init_std: float | None = MISSING  # std of the normal init of batch-/weight-norm layers; null: Glorot
    baseline_data_init: bool = MISSING  # the reference's baseline: W = g * V, g fixed after the data-dependent init


@dataclass
class Cifar10Optim:
    lr_by_norm: dict[str, float] = MISSING  # a norm's learning rate, or `default`'s
    beta1: float = MISSING
    beta1_late: float = MISSING  # from half-way
    beta2: float = MISSING
    eps: float = MISSING
    eps_inside_root: bool = MISSING  # the reference's Adam: m / sqrt(v + eps); false: torch's m / (sqrt(v) + eps)


@dataclass
class GeneratedImages:
    """The generated set's size and difficulty (experiments/cifar10/synthetic.py)."""

    n_train: int = MISSING
    n_test: int = MISSING
    colour_jitter: float = MISSING  # spread of an object's colour around its warm or cool centre
    noise: float = MISSING  # pixel noise
    distractors: int = MISSING  # grey shapes beside the object
    sizes: list[int] = MISSING  # the objects' sizes in pixels


@dataclass
class Cifar10Config(TaskConfig):
    synthetic: GeneratedImages | None = MISSING  # generate an image set of these sizes instead of CIFAR-10
    train_limit: int | None = MISSING  # only the first N training images
    test_limit: int | None = MISSING
    zca_eps: float = MISSING
    schedule_epochs: float = MISSING  # the epochs the learning-rate and beta1 schedule spans
    model: Cifar10Model = MISSING
    optim: Cifar10Optim = MISSING


class Cifar10Task(Task):
    Config = Cifar10Config
    lower_is_better = True
    PAPER_TIME_UNIT = ("sec_per_epoch", 500)  # Table 10: an epoch of 50k images at batch 100

    @classmethod
    def prepare_data(cls, cfg, root: Path, download: bool) -> None:
        if cfg.synthetic:
            # what was generated is recorded beside it, so a preset that asks for other sizes regenerates
            # instead of silently training on the old set
            gen = OmegaConf.to_container(cfg.synthetic, resolve=True)
            knobs = {k: v for k, v in gen.items() if k not in ("n_train", "n_test")}
            knobs["sizes"] = tuple(knobs["sizes"])
            def write() -> None:
                train_x, train_y = make_images(gen["n_train"], seed=1, **knobs)
                test_x, test_y = make_images(gen["n_test"], seed=2, **knobs)
                write_cifar_folder(root, train_x, train_y, test_x, test_y, replace=True)

            ensure_generated(root, {"generator": 2, "seeds": [1, 2], **gen}, write,
                             complete=(root / FOLDER / "test_batch").exists())
        elif download and not (root / FOLDER / "test_batch").exists():
            archive = fetch(CIFAR_URL, root / "cifar-10-python.tar.gz", cfg.make_target, {"md5": CIFAR_MD5},
                            "CIFAR-10")
            with tarfile.open(archive) as tar:
                tar.extractall(root, filter="data")
        prepare_zca(root, cfg.zca_eps, cfg.train_limit, cfg.make_target)

    def load_data(self) -> None:
        cfg = self.cfg
        if cfg.loader_workers:
            raise UserError(f"task.loader_workers={cfg.loader_workers}: CIFAR-10's batches are cut from images "
                            "already on the device, with nothing to build beside the model; keep 0")
        data = load_cifar10(self.root, cfg.zca_eps, cfg.train_limit, cfg.test_limit, cfg.make_target)
        self.train_x, self.train_y = data.train_x.to(self.device), data.train_y.to(self.device)
        self.test_x, self.test_y = data.test_x.to(self.device), data.test_y.to(self.device)
        if len(self.train_x) < self.batch_size:
            raise UserError(f"{len(self.train_x)} training images is less than one batch of {self.batch_size}")

    def data_facts(self) -> dict:
        return {"train_images": len(self.train_x), "test_images": len(self.test_x), "folder": str(self.root)}

    def summary_extras(self) -> dict:
        # the model-free baseline: always answer the test set's most frequent class
        counts = torch.bincount(self.test_y.cpu().long(), minlength=10)
        return {"baselines": {"test_error_most_frequent_class": round(1 - float(counts.max()) / len(self.test_y), 4)}}

    def build_model(self) -> None:
        cfg, norm = self.cfg, self.norm
        m = cfg.model
        self.model = ConvPoolCNNC(norm, tuple(m.widths), 10, m.dropout, m.noise_std, m.leaky_slope,
                                  m.normalise_logits, m.bn_wn_init_std, m.baseline_data_init).to(self.device)
        if self.model.weight_norm_layers() and m.init_batch and hasattr(self, "train_x"):
            # a fixed batch of (seed-dependent) training images, as the weight-norm code initialises
            pick = torch.randperm(len(self.train_x), generator=torch.Generator().manual_seed(self.seed))
            self.model.data_dependent_init(self.train_x[pick[: m.init_batch].to(self.train_x.device)])
        lrs = cfg.optim.lr_by_norm
        self.base_lr = float(lrs.get(norm.name, lrs["default"]))
        adam = RootEpsAdam if cfg.optim.eps_inside_root else torch_adam
        self.optimizer = adam(self.model.parameters(), lr=self.base_lr, betas=(cfg.optim.beta1, cfg.optim.beta2),
                              eps=cfg.optim.eps)
        self.total_epochs = float(cfg.schedule_epochs)

    def synthetic_batch(self, scale: float, generator: torch.Generator):
        """A batch of the paper's shape (batch x 3 x 32 x 32); `scale` shrinks the batch only."""
        n = max(1, round(self.batch_size * scale))
        x = torch.randn(n, 3, 32, 32, generator=generator).to(self.device)
        return x, torch.randint(0, 10, (n,), generator=generator).to(self.device)

    def describe_batch(self, scale: float) -> str:
        return f"batch {max(1, round(self.batch_size * scale))} x 3 x 32 x 32"

    @property
    def steps_per_epoch(self) -> int:
        return len(self.train_x) // self.batch_size  # the reference drops the last partial batch

    def paper_time_unit(self, batch_scale: float = 1.0) -> tuple[str, float]:
        """The paper's epoch, CIFAR-10's 50k training images, at the batch actually timed: one definition for
        runs on any data (the demo's generated set is smaller), bench-tasks and the report."""
        return ("sec_per_epoch", 50_000 / max(1.0, self.batch_size * batch_scale))

    def on_epoch_start(self, epoch: int) -> None:
        half = self.total_epochs / 2
        lr = self.base_lr * min(2.0 - epoch / half, 1.0)
        beta1 = self.cfg.optim.beta1 if epoch < half else self.cfg.optim.beta1_late
        for group in self.optimizer.param_groups:
            group["lr"] = max(lr, 0.0)
            group["betas"] = (beta1, group["betas"][1])

    def batches(self, epoch: int, start: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        order = torch.randperm(len(self.train_x), generator=epoch_generator(self.seed, epoch)).to(self.device)
        for i in range(start, self.steps_per_epoch):
            idx = order[i * self.batch_size : (i + 1) * self.batch_size]
            yield self.train_x[idx], self.train_y[idx]

    def loss(self, model, batch) -> torch.Tensor:
        x, y = batch
        return F.cross_entropy(model(x), y)

    def evaluate(self) -> dict[str, float]:
        errors, loss = 0, 0.0
        for i in range(0, len(self.test_x), 500):
            logits = self.model(self.test_x[i : i + 500])
            y = self.test_y[i : i + 500]
            errors += (logits.argmax(1) != y).sum().item()
            loss += F.cross_entropy(logits, y, reduction="sum").item()
        n = len(self.test_x)
        return {"test_error": errors / n, "test_loss": loss / n}


