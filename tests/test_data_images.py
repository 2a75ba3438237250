import gzip
import os
import pickle
import struct

import ml_collections
import numpy as np
import pytest
import torch
from PIL import Image

from scoresde import data


def get(name, **fields):
    return data.get_dataset(ml_collections.ConfigDict({"data": {"dataset": name, **fields}, "seed": 0}))


def stacked(dataset):
    x, y = zip(*(dataset[i] for i in range(len(dataset))))
    return torch.stack(x), torch.tensor(y)


def levels_of(x, info):
    """Model-space values back to levels k = (x - lo)/(hi - lo) * (n_bins - 1), as float64."""
    lo, hi = info.data_range
    return (x.double() - lo) / (hi - lo) * (info.n_bins - 1)


# --- digits ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("centered,lo", [(True, -1.0), (False, 0.0)])
def test_digits_split_range_and_17_level_grid(centered, lo):
    info = get("digits", centered=centered)
    assert (info.shape, info.n_bins, info.num_classes, info.is_image) == ((1, 8, 8), 17, 10, True)
    assert (len(info.train), len(info.test)) == (1500, 297)
    assert info.data_range == (lo, 1.0)
    x, y = stacked(info.train)
    assert x.dtype == torch.float32 and x.shape == (1500, 1, 8, 8)
    k = levels_of(x, info)
    # float32 rounding of lo + (hi - lo) k/16 is < 1e-7 relative; every value sits on the grid, all 17 occur.
    assert (k - k.round()).abs().max() < 1e-5
    assert set(k.round().long().unique().tolist()) == set(range(17))
    from sklearn.datasets import load_digits
    ref = load_digits()
    torch.testing.assert_close(k.round().squeeze(1), torch.from_numpy(ref.images[:1500]), rtol=0, atol=0,
                               check_dtype=False)
    assert y.tolist() == ref.target[:1500].tolist()
    x_test, y_test = stacked(info.test)
    assert y_test.tolist() == ref.target[1500:].tolist()
    # The scalers map [0, 1] exactly onto data_range and back.
    assert (info.scaler(0.0), info.scaler(1.0)) == info.data_range
    assert info.inverse_scaler(info.scaler(0.25)) == pytest.approx(0.25, abs=1e-15)


def test_digits_cannot_be_resized():
    with pytest.raises(ValueError, match="image_size = 8"):
        get("digits", image_size=32)


# --- mnist and cifar10 in torchvision's layout ------------------------------------------------------

def write_idx(path, array, compress):
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}i", *array.shape)
    with (gzip.open if compress else open)(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def fake_mnist(root, compress, n_train=7, n_test=3):
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    arrays = {}
    for split, n in (("train", n_train), ("t10k", n_test)):
        images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        labels = rng.integers(0, 10, n, dtype=np.uint8)
        suffix = ".gz" if compress else ""
        write_idx(raw / f"{split}-images-idx3-ubyte{suffix}", images, compress)
        write_idx(raw / f"{split}-labels-idx1-ubyte{suffix}", labels, compress)
        arrays[split] = images, labels
    return arrays


@pytest.mark.parametrize("compress", [False, True], ids=["raw", "gz"])
def test_mnist_reads_torchvision_idx_files(tmp_path, compress):
    arrays = fake_mnist(tmp_path, compress)
    info = get("mnist", path=str(tmp_path))
    assert (info.shape, info.n_bins, info.num_classes, info.data_range) == ((1, 28, 28), 256, 10, (-1.0, 1.0))
    assert (len(info.train), len(info.test)) == (7, 3)
    for dataset, (images, labels) in ((info.train, arrays["train"]), (info.test, arrays["t10k"])):
        x, y = stacked(dataset)
        assert x.dtype == torch.float32
        # Level k is stored as -1 + 2k/255 in float32 (error < 1e-7 relative): exact byte round trip.
        assert np.array_equal(levels_of(x, info).round().squeeze(1).numpy(), images)
        assert (levels_of(x, info) - levels_of(x, info).round()).abs().max() < 1e-4
        assert y.tolist() == labels.tolist()


def test_mnist_resized_to_rgb_32(tmp_path):
    fake_mnist(tmp_path, compress=False)
    info = get("mnist", path=str(tmp_path), image_size=32, num_channels=3, centered=False)
    x, _ = stacked(info.train)
    assert x.shape == (7, 3, 32, 32) and info.shape == (3, 32, 32) and info.data_range == (0.0, 1.0)
    assert x.min() >= 0 and x.max() <= 1
    # Grey converted to RGB has three equal channels; resized values stay 8-bit levels.
    assert torch.equal(x[:, 0], x[:, 1]) and torch.equal(x[:, 0], x[:, 2])
    assert (levels_of(x, info) - levels_of(x, info).round()).abs().max() < 1e-4


def test_mnist_truncated_file_is_reported(tmp_path):
    fake_mnist(tmp_path, compress=False)
    path = tmp_path / "MNIST" / "raw" / "train-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(ValueError, match="truncated"):
        get("mnist", path=str(tmp_path))


def fake_cifar10(root, n=4):
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(1)
    batches = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {"batch_label": name, "data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
                 "labels": rng.integers(0, 10, n).tolist(), "filenames": [f"{i}.png" for i in range(n)]}
        with open(folder / name, "wb") as f:
            pickle.dump(batch, f, protocol=2)
        batches[name] = batch
    return batches


def test_cifar10_reads_python_batches(tmp_path):
    batches = fake_cifar10(tmp_path)
    info = get("cifar10", path=str(tmp_path), random_flip=True)
    assert (info.shape, info.n_bins, info.num_classes) == ((3, 32, 32), 256, 10)
    assert (len(info.train), len(info.test)) == (20, 4)
    info.train.set_epoch(0)
    x, y = stacked(info.train)
    expected = np.concatenate([batches[f"data_batch_{i}"]["data"] for i in range(1, 6)]).reshape(-1, 3, 32, 32)
    k = levels_of(x, info).round().numpy()
    # Rows are the pickles' data in channel-major order, each item as it is or mirrored (random data are never
    # symmetric); with 20 fair flips, both kinds occur except with probability 2^-19.
    same = (k == expected).all(axis=(1, 2, 3))
    mirrored = (k == expected[..., ::-1]).all(axis=(1, 2, 3))
    assert (same | mirrored).all() and same.any() and mirrored.any()
    assert y.tolist() == sum((batches[f"data_batch_{i}"]["labels"] for i in range(1, 6)), [])
    # The test set is never flipped.
    x_test, _ = stacked(info.test)
    assert np.array_equal(levels_of(x_test, info).round().numpy(),
                          batches["test_batch"]["data"].reshape(-1, 3, 32, 32))


@pytest.mark.parametrize("name,where", [("mnist", "MNIST/raw"), ("cifar10", "cifar-10-batches-py")])
def test_missing_files_say_where_to_put_them(tmp_path, name, where):
    with pytest.raises(FileNotFoundError, match=f"{tmp_path}/{where}.*download"):
        get(name, path=str(tmp_path))
    with pytest.raises(ValueError, match="config.data.path"):
        get(name)


def test_download_without_torchvision_explains(tmp_path):
    try:
        import torchvision  # noqa: F401
        pytest.skip("torchvision is installed: download would go to the network")
    except ImportError:
        pass
    with pytest.raises(FileNotFoundError, match=r"torchvision.*scoresde\[vision\].*MNIST/raw"):
        get("mnist", path=str(tmp_path), download=True)


# --- image_folder -------------------------------------------------------------------------------------

def write_png(path, size, colour):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).save(path)


def test_image_folder_with_classes_resize_and_crop(tmp_path):
    for i in range(6):
        write_png(tmp_path / "cats" / f"{i}.png", (40, 20), (200, 10, 10))
        write_png(tmp_path / "dogs" / "sub" / f"{i}.png", (20, 30), (10, 10, 200))
    info = get("image_folder", path=str(tmp_path), image_size=16)
    assert (info.shape, info.n_bins, info.num_classes, info.classes) == ((3, 16, 16), 256, 2, ["cats", "dogs"])
    # 12 images, test_fraction 0.1: round(1.2) = 1 held out.
    assert (len(info.train), len(info.test)) == (11, 1)
    x, y = stacked(info.train)
    assert x.dtype == torch.float32 and x.min() >= -1 and x.max() <= 1
    # Constant images stay constant under resize and crop: cats are exactly (200, 10, 10), dogs (10, 10, 200).
    colours = {0: (200, 10, 10), 1: (10, 10, 200)}
    for xi, yi in zip(x, y.tolist()):
        expected = torch.tensor(colours[yi], dtype=torch.float64)[:, None, None].expand(3, 16, 16)
        torch.testing.assert_close(levels_of(xi, info), expected, atol=1e-4, rtol=0)


def test_image_folder_unlabelled_grey(tmp_path):
    for i in range(10):
        write_png(tmp_path / f"{i}.png", (8, 8), (i * 20, i * 20, i * 20))
    info = get("image_folder", path=str(tmp_path), image_size=8, num_channels=1, centered=False)
    assert (info.shape, info.num_classes, info.data_range) == ((1, 8, 8), None, (0.0, 1.0))
    (x, y), (x_test, _) = stacked(info.train), stacked(info.test)
    assert (y == data.NO_LABEL).all() and len(info.test) == 1
    grey = sorted(levels_of(torch.cat([x, x_test]), info).round().amax(dim=(1, 2, 3)).tolist())
    assert grey == [i * 20 for i in range(10)]


def test_image_folder_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a directory"):
        get("image_folder", path=str(tmp_path / "nope"), image_size=8)
    with pytest.raises(FileNotFoundError, match="no images"):
        get("image_folder", path=str(tmp_path), image_size=8)
    write_png(tmp_path / "a.png", (8, 8), (0, 0, 0))
    write_png(tmp_path / "b.png", (8, 8), (0, 0, 0))
    with pytest.raises(ValueError, match="image_size"):
        get("image_folder", path=str(tmp_path))
    (tmp_path / "c.png").write_bytes(b"not a png")
    with pytest.raises(ValueError, match="c.png"):
        get("image_folder", path=str(tmp_path), image_size=8)
    os.remove(tmp_path / "c.png")
    write_png(tmp_path / "cls" / "d.png", (8, 8), (0, 0, 0))
    with pytest.raises(ValueError, match="both images and class sub-folders"):
        get("image_folder", path=str(tmp_path), image_size=8)
