"""CIFAR-10 from the `cifar-10-batches-py` folder torchvision downloads, ZCA-whitened, as tensors in memory.

The loader is torchvision's; only its md5 check is replaced by a format check, so that the test fixtures
and the demo's generated images, written in the same pickle format, go through the very same code.
"""

from __future__ import annotations

import hashlib
import logging
import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torchvision.datasets import CIFAR10

from experiments.core.atomic import save_torch
from experiments.core.errors import MissingData

log = logging.getLogger(__name__)

FOLDER = "cifar-10-batches-py"


class _LocalCIFAR10(CIFAR10):
    def _check_integrity(self) -> bool:
        root = Path(self.root) / self.base_folder
        return all((root / name).is_file() for name, _ in self.train_list + self.test_list)

    def _load_meta(self) -> None:
        path = Path(self.root) / self.base_folder / self.meta["filename"]
        if not path.is_file():
            raise RuntimeError(f"{path} is missing")
        with path.open("rb") as f:
            self.classes = pickle.load(f, encoding="latin1")[self.meta["key"]]
        self.class_to_idx = {c: i for i, c in enumerate(self.classes)}


@dataclass
class Cifar10Arrays:
    train_x: torch.Tensor  # (N, 3, 32, 32) float32, ZCA-whitened
    train_y: torch.Tensor  # (N,) int64
    test_x: torch.Tensor
    test_y: torch.Tensor


def read_split(root: Path, train: bool, make_target: str) -> tuple[np.ndarray, np.ndarray]:
    folder = Path(root) / FOLDER
    try:
        ds = _LocalCIFAR10(str(root), train=train, download=False)
    except RuntimeError as exc:  # torchvision's "Dataset not found or corrupted"
        raise MissingData(
            f"no CIFAR-10 data in {folder} (expected data_batch_1..5, test_batch and batches.meta); "
            f"run `{make_target}`, or point data_dir at the folder that holds the data"
        ) from exc
    except (pickle.UnpicklingError, EOFError, KeyError, ValueError) as exc:
        raise MissingData(
            f"CIFAR-10 files in {folder} are corrupt ({exc!r}); delete them and run `{make_target}`"
        ) from exc
    x, y = np.asarray(ds.data), np.asarray(ds.targets)
    if x.ndim != 4 or x.shape[1:] != (32, 32, 3) or len(x) != len(y) or len(x) == 0:
        raise MissingData(f"CIFAR-10 files in {folder} hold data of shape {x.shape}; expected (N, 32, 32, 3)")
    if y.min() < 0 or y.max() > 9:
        raise MissingData(f"CIFAR-10 labels in {folder} lie outside 0..9; the files are corrupt, run `{make_target}`")
    return x, y


def scale(x: np.ndarray) -> np.ndarray:
    """uint8 HWC -> float64 CHW in about [-1, 1], as the weight-norm code scales it before ZCA."""
    return (x.transpose(0, 3, 1, 2).astype(np.float64) - 127.5) / 128.0


def fit_zca(x: np.ndarray, eps: float) -> tuple[np.ndarray, np.ndarray]:
    """Mean and ZCA matrix U diag(1/sqrt(S + eps)) U^T of the flattened training images."""
    flat = x.reshape(len(x), -1)
    mean = flat.mean(0)
    centred = torch.from_numpy(flat - mean)
    cov = centred.T @ centred / len(flat)
    s, u = torch.linalg.eigh(cov)
    s = s.clamp_min(0)
    zca = (u * torch.rsqrt(s + eps)) @ u.T
    return mean, zca.numpy()


def _images_key(raw: np.ndarray) -> str:
    return hashlib.sha1(raw.tobytes()).hexdigest()[:16]


def zca_path(root: Path, train_raw: np.ndarray, eps: float) -> Path:
    """Where the ZCA fitted on these exact training images with this eps is kept (keyed by their hash)."""
    return Path(root) / f"zca-{_images_key(train_raw)}-eps{eps:g}.pt"


def whitened_path(root: Path, train_raw: np.ndarray, test_raw: np.ndarray, eps: float) -> Path:
    """Where these exact training and test images, whitened with that ZCA, are kept: whitening every image (a
    3072 x 3072 matmul) cost each training process about 5 s of the demo's CPU time; reading this file costs
    none."""
    return Path(root) / f"whitened-{_images_key(train_raw)}-{_images_key(test_raw)}-eps{eps:g}.pt"


def prepare_zca(root: Path, eps: float, train_limit: int | None, make_target: str) -> Path:
    """Fit the ZCA of the (first train_limit) training images unless it is there already; atomic write."""
    train_raw, _ = read_split(root, True, make_target)
    train_raw = train_raw[:train_limit]
    path = zca_path(root, train_raw, eps)
    if not path.exists():
        log.info("fitting ZCA on %d training images into %s", len(train_raw), path)
        dims = int(np.prod(train_raw.shape[1:]))
        if len(train_raw) <= dims:
            # the covariance is then rank-deficient: directions the training images never span get the full
            # 1/sqrt(eps) gain, test images do have them, and their whitened statistics differ from training's
            log.warning("ZCA fitted on %d images of %d dimensions: test images will be whitened to a larger scale "
                        "than training images (use more than %d training images)", len(train_raw), dims, dims)
        mean, zca = fit_zca(scale(train_raw), eps)
        save_torch({"mean": torch.from_numpy(mean), "zca": torch.from_numpy(zca)}, path)
    test_raw, _ = read_split(root, False, make_target)
    white = whitened_path(root, train_raw, test_raw, eps)
    if not white.exists():
        cached = torch.load(path, weights_only=True)
        mean, zca = cached["mean"].numpy(), cached["zca"].numpy()
        save_torch({"train_x": whiten(train_raw, mean, zca), "test_x": whiten(test_raw, mean, zca)}, white)
    return path


def whiten(raw: np.ndarray, mean: np.ndarray, zca: np.ndarray) -> torch.Tensor:
    flat = scale(raw).reshape(len(raw), -1) - mean
    out = torch.from_numpy(flat).float() @ torch.from_numpy(zca).float()
    return out.view(len(raw), 3, 32, 32)


# the last arrays loaded, by what they were made from: a sweep runs every norm in one process
_LOADED: dict[tuple, Cifar10Arrays] = {}


def _files_key(root: Path) -> tuple:
    """Name, time and size of every file of the images and of the fitted ZCAs beside them."""
    files = [*Path(root).iterdir(), *(Path(root) / FOLDER).iterdir()]
    stats = ((str(p), p.stat()) for p in sorted(files) if p.is_file())
    return tuple((name, st.st_mtime_ns, st.st_size) for name, st in stats)


def load_cifar10(root: Path, zca_eps: float, train_limit: int | None, test_limit: int | None,
                 make_target: str) -> Cifar10Arrays:
    """The images, whitened with the ZCA that preparation fitted; reads only. The tensors are shared between
    calls with the same files and settings: callers must not write into them."""
    try:
        key = (str(Path(root).resolve()), float(zca_eps), train_limit, test_limit, _files_key(root))
    except OSError:
        key = None  # no folder: the loader below says what is missing
    if key is not None and key in _LOADED:
        return _LOADED[key]
    arrays = _load_cifar10(root, zca_eps, train_limit, test_limit, make_target)
    _LOADED.clear()
    if key is not None:
        _LOADED[key] = arrays
    return arrays


def _load_cifar10(root: Path, zca_eps: float, train_limit: int | None, test_limit: int | None,
                  make_target: str) -> Cifar10Arrays:
    train_raw, train_y = read_split(root, True, make_target)
    test_raw, test_y = read_split(root, False, make_target)
    train_raw, train_y = train_raw[:train_limit], train_y[:train_limit]
    path = zca_path(root, train_raw, zca_eps)
    if not path.exists():
        raise MissingData(f"no ZCA fitted for these {len(train_raw)} training images with zca_eps={zca_eps:g} "
                          f"({path}); run `{make_target}` first")
    train_y, test_y = torch.from_numpy(train_y).long(), torch.from_numpy(test_y[:test_limit]).long()
    white = whitened_path(root, train_raw, test_raw, zca_eps)
    if white.exists():  # whitening is per image: the first test_limit rows are those images whitened
        # mmap: the pages are read as the batches touch them, and processes on one machine share them
        cached = torch.load(white, weights_only=True, mmap=True)
        return Cifar10Arrays(cached["train_x"], train_y, cached["test_x"][:test_limit], test_y)
    cached = torch.load(path, weights_only=True)  # prepared before the whitened images were kept
    mean, zca = cached["mean"].numpy(), cached["zca"].numpy()
    return Cifar10Arrays(whiten(train_raw, mean, zca), train_y, whiten(test_raw[:test_limit], mean, zca), test_y)
