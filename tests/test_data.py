"""Datasets: bundled ones load with disjoint splits; disk formats load; bad paths are named."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest

from nasforge.data import load_dataset
from nasforge.errors import DataError


@pytest.mark.parametrize(
    "name, shape", [("digits", (1, 8, 8)), ("mnist5k", (1, 28, 28)), ("mnist1d", (1, 40))]
)
def test_bundled_datasets(name: str, shape: tuple[int, ...]) -> None:
    d = load_dataset(name)
    assert d.input_shape == shape and d.num_classes == 10
    assert len(d.y_val) > 0 and len(d.y_test) > 0
    assert set(d.y_val.tolist()) == set(range(10))
    # the three splits share no example
    tr = {x.numpy().tobytes() for x in d.x_train[:300]}
    assert not tr & {x.numpy().tobytes() for x in d.x_val}
    assert not tr & {x.numpy().tobytes() for x in d.x_test}


def test_mnist1d_samples_sizes_the_splits() -> None:
    default = load_dataset("mnist1d")
    d = load_dataset("mnist1d", val_fraction=0.5, samples=2_500)
    # the generator makes 2,500: 2,000 train pool (halved into train / val) and 500 test
    assert len(d.y_test) == 500 and len(d.y_train) + len(d.y_val) == 2_000
    assert abs(len(d.y_val) - 1_000) <= 10 and set(d.y_val.tolist()) == set(range(10))
    assert len(default.y_train) + len(default.y_val) == 4_000  # the cache keys on samples
    # limit cuts the train pool before the validation split
    small = load_dataset("mnist1d", val_fraction=0.5, samples=2_500, limit=1_000)
    assert len(small.y_train) + len(small.y_val) == 1_000 and len(small.y_test) == 500


def test_samples_only_for_generated_datasets() -> None:
    with pytest.raises(DataError, match="data.samples"):
        load_dataset("digits", samples=1_000)
    with pytest.raises(DataError, match="data.samples"):
        load_dataset("mnist1d", samples=10)


def test_config_samples_reaches_the_generator() -> None:
    from nasforge.experiment.config import DataConfig, ExperimentConfig
    from nasforge.experiment.setup import make_dataset

    cfg = ExperimentConfig(data=DataConfig(name="mnist1d", samples=6_000, val_fraction=0.25))
    d = make_dataset(cfg)
    assert len(d.y_test) == 1_200 and len(d.y_train) + len(d.y_val) == 4_800
    from nasforge.errors import ConfigError
    from nasforge.experiment.config import parse_config

    # a config asking a fixed-size dataset for samples is refused when it is read, naming the field
    with pytest.raises(ConfigError, match=r"data\.samples: .*'digits' has a fixed size"):
        parse_config({"data": {"name": "digits", "samples": 1_000}})


def test_imagefolder(tmp_path: Path) -> None:
    from PIL import Image

    rng = np.random.default_rng(0)
    for c in ("cat", "dog"):
        (tmp_path / c).mkdir()
        for i in range(10):
            Image.fromarray(rng.integers(0, 255, (12, 12, 3), dtype=np.uint8)).save(
                tmp_path / c / f"{i}.png"
            )
    d = load_dataset("imagefolder", tmp_path, image_size=16, channels=3)
    assert d.input_shape == (3, 16, 16) and d.classes == ("cat", "dog")
    assert len(d.y_train) + len(d.y_val) + len(d.y_test) == 20
    (tmp_path / "dog" / "broken.png").write_bytes(b"not a png")
    with pytest.raises(DataError, match="broken.png: not a readable image"):
        load_dataset("imagefolder", tmp_path, image_size=15)


def test_cifar10_python_batches(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    for name in ("data_batch_1", "data_batch_2", "test_batch"):
        with (tmp_path / name).open("wb") as fh:
            pickle.dump(
                {
                    b"data": rng.integers(0, 255, (20, 3072), dtype=np.uint8),
                    b"labels": [i % 10 for i in range(20)],
                },
                fh,
            )
    d = load_dataset("cifar10", tmp_path)
    assert (
        d.input_shape == (3, 32, 32) and len(d.y_test) == 20 and len(d.y_train) + len(d.y_val) == 40
    )
    (tmp_path / "data_batch_3").write_bytes(b"garbage")
    with pytest.raises(DataError, match="data_batch_3: not a CIFAR-10 python batch"):
        load_dataset("cifar10", tmp_path, seed=1)


def test_missing_paths_are_named(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="needs a path"):
        load_dataset("cifar10")
    with pytest.raises(DataError, match="no data_batch_"):
        load_dataset("cifar10", tmp_path)
