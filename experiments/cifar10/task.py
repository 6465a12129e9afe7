"""The CIFAR-10 task: data in memory, ConvPool-CNN-C, Adam with the paper's per-norm learning rates, linear
decay to zero over the second half and beta1 0.9 -> 0.5 at half-way, test error as the metric."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import torch
import torch.nn.functional as F
from omegaconf import DictConfig

from experiments.cifar10.data import FOLDER, load_cifar10
from experiments.cifar10.model import ConvPoolCNNC
from experiments.cifar10.pickle_format import write_cifar_folder
from experiments.cifar10.synthetic import make_images
from experiments.core.seeding import epoch_generator
from experiments.core.task import Task
from rmsnorm import NormSpec

log = logging.getLogger(__name__)


def ensure_synthetic(root: Path, n_train: int, n_test: int) -> None:
    """Generate the demo's image set in the real on-disk format unless it is there already."""
    if (Path(root) / FOLDER / "test_batch").exists():
        return
    log.info("writing %d + %d generated demo images to %s", n_train, n_test, root)
    train_x, train_y = make_images(n_train, seed=1)
    test_x, test_y = make_images(n_test, seed=2)
    write_cifar_folder(root, train_x, train_y, test_x, test_y)


class Cifar10Task(Task):
    primary_metric = "test_error"
    lower_is_better = True

    def __init__(self, cfg: DictConfig, norm: NormSpec, data_dir: Path, device: torch.device, seed: int):
        self.cfg, self.norm, self.device, self.seed = cfg, norm, device, seed
        root = Path(data_dir) / cfg.data_subdir
        if cfg.synthetic:
            ensure_synthetic(root, cfg.synthetic.n_train, cfg.synthetic.n_test)
        data = load_cifar10(root, cfg.zca_eps, cfg.train_limit, cfg.test_limit)
        self.train_x, self.train_y = data.train_x.to(device), data.train_y.to(device)
        self.test_x, self.test_y = data.test_x.to(device), data.test_y.to(device)
        self.batch_size = int(cfg.batch_size)
        if len(self.train_x) < self.batch_size:
            raise ValueError(f"{len(self.train_x)} training images is less than one batch of {self.batch_size}")

        self.build_model()

    def build_model(self) -> None:
        """The model and optimiser from the config and the norm alone (no data): `make bench-tasks` uses it."""
        cfg, norm, device = self.cfg, self.norm, self.device
        self.batch_size = int(cfg.batch_size)
        self.model = ConvPoolCNNC(norm, tuple(cfg.model.widths), 10, cfg.model.dropout, cfg.model.noise_std,
                                  cfg.model.leaky_slope).to(device)
        lrs = cfg.optim.lr_by_norm
        self.base_lr = float(lrs.get(norm.name, lrs.default))
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=self.base_lr,
                                          betas=(cfg.optim.beta1, cfg.optim.beta2))
        self.total_epochs = float(cfg.schedule_epochs)

    @classmethod
    def for_timing(cls, cfg: DictConfig, norm: NormSpec, device: torch.device, seed: int) -> Cifar10Task:
        task = cls.__new__(cls)
        task.cfg, task.norm, task.device, task.seed = cfg, norm, device, seed
        task.build_model()
        return task

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

    def paper_time_unit(self) -> tuple[str, float]:
        return ("sec_per_epoch", self.steps_per_epoch)

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

    def train_step(self, batch) -> torch.Tensor:
        x, y = batch
        loss = F.cross_entropy(self.model(x), y)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return loss.detach()

    def evaluate(self) -> dict[str, float]:
        errors, loss = 0, 0.0
        for i in range(0, len(self.test_x), 500):
            logits = self.model(self.test_x[i : i + 500])
            y = self.test_y[i : i + 500]
            errors += (logits.argmax(1) != y).sum().item()
            loss += F.cross_entropy(logits, y, reduction="sum").item()
        n = len(self.test_x)
        return {"test_error": errors / n, "test_loss": loss / n}

    def describe_shrinks(self) -> list[str]:
        return list(self.cfg.get("shrinks", []))
