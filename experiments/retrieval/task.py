"""The image-caption retrieval task: order embeddings on COCO with a normalised GRU sentence encoder, Adam,
per-tensor gradient clipping, each training image once per epoch with one of its five captions, dev
validation on the first 1000 dev images, the best model (by dev image-retrieval recall sum) evaluated on the
five 1000-image test folds and on the full test set."""

from __future__ import annotations

import logging
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from omegaconf import MISSING, OmegaConf

from experiments.core.data.download import fetch
from experiments.core.data.generated import ensure_generated
from experiments.core.data.vocabulary import load_vocabulary, save_vocabulary
from experiments.core.errors import MissingData, UserError
from experiments.core.training import distributed
from experiments.core.training.adam import OrderEmbeddingAdam, torch_adam
from experiments.core.training.seeding import epoch_generator
from experiments.core.training.task import Task, TaskConfig
from experiments.retrieval import data as D
from experiments.retrieval.metrics import order_violation, retrieval_metrics
from experiments.retrieval.model import OrderEmbedding, contrastive_loss
from experiments.retrieval.synthetic import write_paired_folder

log = logging.getLogger(__name__)

# task.optim.adam: the order-embedding code's hand-written Adam (experiments/core/training/adam.py), or torch's
ADAMS = {"upstream": OrderEmbeddingAdam, "torch": torch_adam}

ARCHIVE_URL = "http://www.cs.toronto.edu/~vendrov/order/coco.zip"


@dataclass
class RetrievalModel:
    word_dim: int = MISSING
    dim: int = MISSING  # GRU and embedding space width
    image_dim: int = MISSING  # the width of the image features


@dataclass
class RetrievalOptim:
    lr: float = MISSING
    adam: str = MISSING  # upstream: the order-embedding code's Adam (no bias correction in effect); torch
    clip_norm: float = MISSING
    clip: str = MISSING  # each parameter tensor's gradient norm on its own, as upstream
    margin: float = MISSING


@dataclass
class GeneratedPairs:
    """The generated set's size and difficulty (experiments/retrieval/synthetic.py)."""

    sizes: dict[str, int] = MISSING  # split (train/dev/test) -> images
    concepts: int = MISSING  # latent concepts in all
    per_item: int = MISSING  # concepts an image shows
    synonyms: int = MISSING  # words that name one concept
    feature_noise: float = MISSING  # noise added to an image's feature, relative to one concept's direction


@dataclass
class RetrievalConfig(TaskConfig):
    synthetic: GeneratedPairs | None = MISSING
    min_count: int = MISSING  # a word enters the vocabulary when seen this often in train + dev captions
    dev_images: int = MISSING  # validation on the first N dev images
    fold_images: int = MISSING  # test folds of this many images (1000 in the paper, five of them)
    whole_test: bool = MISSING  # also the whole test set as one (`test5k_`...)
    model: RetrievalModel = MISSING
    optim: RetrievalOptim = MISSING


class RetrievalTask(Task):
    Config = RetrievalConfig
    batch_dims = (1, 1, 0)  # caption words, their mask (time-major), image features
    PAPER_TIME_UNIT = ("sec_per_100_steps", 100)  # Tables 6 and 8: seconds per 0.1k steps
    PAPER_CLOCK = "step"  # upstream timed f_grad_shared + f_update only (order-embedding train.py:139-142)
    lower_is_better = False
    selection_metric = "dev_image_rsum"  # order-embedding keeps the model of the best dev recall sum

    @classmethod
    def prepare_data(cls, cfg, root: Path, download: bool) -> None:
        if cfg.synthetic:
            wanted = {"generator": 2, "image_dim": cfg.model.image_dim,
                      **OmegaConf.to_container(cfg.synthetic, resolve=True)}
            ensure_generated(root, wanted, lambda: write_paired_folder(root, cfg.synthetic, cfg.model.image_dim),
                             complete=all(D.caption_path(root, s).exists() for s in D.SPLITS))
        elif download and not D.caption_path(root, "train").exists():
            cls._download(root, cfg.make_target)
        captions = {s: D.read_captions(root, s, cfg.make_target) for s in D.SPLITS}
        for split, caps in captions.items():  # features and captions must agree before anything is cached
            D.read_features(root, split, len(caps) // D.CAPTIONS_PER_IMAGE, cfg.model.image_dim, cfg.make_target)
        if (root / "vocab.json").exists() and D.ids_path(root, "train").exists():
            vocab = load_vocabulary(root, cfg.make_target)
        else:  # first preparation, or one by older code (its ids at another FORMAT: another tokenisation)
            # train + the dev captions validation uses, as upstream
            dev = captions["dev"][: cfg.dev_images * D.CAPTIONS_PER_IMAGE]
            vocab = D.build_vocabulary(captions["train"] + dev, cfg.min_count)
            save_vocabulary(root, vocab)
        for split, caps in captions.items():
            D.save_ids(root, split, D.encode(caps, vocab))

    @staticmethod
    def _download(root: Path, make_target: str) -> None:
        # no checksum is published for this archive; a damaged one fails to unzip, which says so
        path = fetch(ARCHIVE_URL, root.parent / "coco.zip", make_target, what="the order-embedding COCO archive")
        try:
            with zipfile.ZipFile(path) as archive:
                archive.extractall(root.parent)
        except zipfile.BadZipFile as exc:
            path.unlink()
            raise MissingData(f"{path} is not a complete zip archive ({exc}); it was removed, rerun `{make_target}`, "
                              f"or put the order-embedding data (train/val/test .txt, images/10crop/*.npy) into "
                              f"{root}") from exc

    def load_data(self) -> None:
        cfg = self.cfg
        self.vocab = load_vocabulary(self.root, cfg.make_target)
        self.captions, self.features = {}, {}
        for split in D.SPLITS:
            caps, feats = D.load_split(self.root, split, cfg.model.image_dim, cfg.make_target)
            self.captions[split], self.features[split] = caps, feats.to(self.device)
            if split == "train":
                self.train_features = feats  # on the CPU, where training batches are built
        self.n_train = len(self.features["train"])
        if self.n_train < self.batch_size:
            raise MissingData(f"{self.n_train} training images is less than one batch of {self.batch_size}")

    def assume_paper_data(self) -> None:
        self.vocab = ["<pad>"] * 11473  # about the COCO vocabulary of the order-embedding code

    def data_facts(self) -> dict:
        return {"vocabulary": len(self.vocab), **{f"{s}_images": len(f) for s, f in self.features.items()},
                "folder": str(self.root)}

    def build_model(self) -> None:
        m = self.cfg.model
        self.model = OrderEmbedding(len(self.vocab), m.word_dim, m.dim, m.image_dim, self.norm).to(self.device)
        if self.cfg.optim.adam not in ADAMS:
            raise UserError(f"task.optim.adam={self.cfg.optim.adam}: one of {', '.join(ADAMS)}")
        # betas 0.9/0.999 and eps 1e-8 in both, as upstream hard-codes them (optim.py:15-17)
        self.optimizer = ADAMS[self.cfg.optim.adam](self.model.parameters(), lr=self.cfg.optim.lr)
        self.best: dict = {"dev_image_rsum": None, "test": {}}

    # ---- training ------------------------------------------------------------------------------------------
    @property
    def steps_per_epoch(self) -> int:
        return max(1, self.n_train // self.batch_size)

    def batches(self, epoch: int, start: int) -> Iterator[tuple[torch.Tensor, ...]]:
        g = epoch_generator(self.seed, epoch)
        order = torch.randperm(self.n_train, generator=g)
        choice = torch.randint(0, D.CAPTIONS_PER_IMAGE, (self.n_train,), generator=g)  # one caption per image
        for i in range(start, self.steps_per_epoch):
            images = order[i * self.batch_size : (i + 1) * self.batch_size]
            words, mask = self.captions["train"].padded(images * D.CAPTIONS_PER_IMAGE + choice[images])
            # on the CPU (the trainer moves batches to the device; a loader worker may build them)
            yield words, mask, self.train_features[images]

    def synthetic_batch(self, scale: float, generator: torch.Generator):
        """Random ids and features at the paper's shape: batch 128, 12-word captions; `scale` shrinks both."""
        b, t = max(2, round(self.batch_size * scale)), max(2, round(12 * scale))
        words = torch.randint(2, len(self.vocab), (t, b), generator=generator).to(self.device)
        features = torch.randn(b, self.cfg.model.image_dim, generator=generator).to(self.device)
        return words, torch.ones(t, b, device=self.device), features

    def describe_batch(self, scale: float) -> str:
        return f"batch {max(2, round(self.batch_size * scale))} x {max(2, round(12 * scale))}-word captions"

    def loss(self, model, batch) -> torch.Tensor:
        words, mask, features = batch
        captions, images = model(words, mask, features)
        # under torchrun every caption meets every image of the global batch, as in one process
        group = distributed.current()
        captions, images = distributed.gather_with_grad(captions, group), distributed.gather_with_grad(images, group)
        return contrastive_loss(captions, images, self.cfg.optim.margin)

    # ---- evaluation ----------------------------------------------------------------------------------------
    def _embed(self, split: str, n_images: int) -> tuple[torch.Tensor, torch.Tensor]:
        caps, chunks = self.captions[split], []
        n_captions = n_images * D.CAPTIONS_PER_IMAGE
        for a in range(0, n_captions, 1000):
            words, mask = caps.padded(torch.arange(a, min(a + 1000, n_captions)))
            chunks.append(self.model.encode_captions(words.to(self.device), mask.to(self.device)))
        return torch.cat(chunks), self.model.encode_images(self.features[split][:n_images])

    def _metrics(self, s: torch.Tensor, v: torch.Tensor) -> dict[str, float]:
        return retrieval_metrics(lambda a, b: order_violation(s[a:b], v), len(v))

    def evaluate(self) -> dict[str, float]:
        n_dev = min(self.cfg.dev_images, len(self.features["dev"]))
        dev = self._metrics(*self._embed("dev", n_dev))
        if self.best["dev_image_rsum"] is None or dev["image_rsum"] > self.best["dev_image_rsum"]:
            self.best = {"dev_image_rsum": dev["image_rsum"], "test": self._test_metrics()}
        return {**{f"dev_{k}": v for k, v in dev.items()}, "best_dev_image_rsum": self.best["dev_image_rsum"],
                **self.best["test"]}

    def _test_metrics(self) -> dict[str, float]:
        """The average over test folds of fold_images images, and with `whole_test` the whole test set
        (`test5k_`...)."""
        s, v = self._embed("test", len(self.features["test"]))
        n, fold = len(v), min(self.cfg.fold_images, len(v))
        folds = [self._metrics(s[i * 5 * fold : (i + 1) * 5 * fold], v[i * fold : (i + 1) * fold])
                 for i in range(n // fold)]
        averaged = {k: sum(f[k] for f in folds) / len(folds) for k in folds[0]}
        return {**averaged, **{f"test5k_{k}": val for k, val in self._metrics(s, v).items()}} \
            if n > fold and self.cfg.whole_test else averaged

    def summary_extras(self) -> dict:
        fold = min(self.cfg.fold_images, len(self.features["test"]))
        # chance R@1 as a fraction: one of `fold` images, or the image's 5 of 5 * fold captions
        return {"baselines": {"caption_r1_chance": 1.0 / fold, "image_r1_chance": 1.0 / fold}}

    def state_dict(self) -> dict:
        return {**super().state_dict(), "best": self.best}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.best = state["best"]
