import ml_collections
import numpy as np
import pytest
import torch

from scoresde import data
from scoresde.sde_lib import GaussianMixture


def get(path, **fields):
    return data.get_dataset(ml_collections.ConfigDict({"data": {"dataset": "array", "path": str(path), **fields}}))


def stacked(dataset):
    x, y = zip(*(dataset[i] for i in range(len(dataset))))
    return torch.stack(x), torch.tensor(y)


def test_float_npy_is_used_as_it_is(tmp_path):
    mix = GaussianMixture([0.5, 0.5], [[-2.0, 0.0, 1.0], [2.0, 1.0, 0.0]], 0.1)
    x = mix.sample(200, generator=torch.Generator().manual_seed(0)).numpy().astype(np.float32)
    np.save(tmp_path / "mix.npy", x)
    info = get(tmp_path / "mix.npy", centered=True, image_size=32)   # both ignored for continuous data
    assert (info.shape, info.n_bins, info.num_classes, info.is_image) == ((3,), None, None, False)
    # Default test_fraction 0.1: 20 of 200 held out by a fixed permutation; train + test is the array, exactly.
    assert (len(info.train), len(info.test)) == (180, 20)
    (train, y), (test, _) = stacked(info.train), stacked(info.test)
    assert train.dtype == torch.float32 and (y == data.NO_LABEL).all()
    together = torch.cat([train, test])
    assert torch.equal(together[together[:, 0].argsort()], torch.from_numpy(x[x[:, 0].argsort()]))
    assert info.data_range == (float(train.min()), float(train.max()))
    # The split is fixed: it does not depend on config.seed.
    other = data.get_dataset(ml_collections.ConfigDict(
        {"data": {"dataset": "array", "path": str(tmp_path / "mix.npy")}, "seed": 7}))
    assert torch.equal(stacked(other.test)[0], test)


def test_float_images_npz_with_labels_and_flips(tmp_path):
    x = np.random.default_rng(0).normal(size=(30, 1, 4, 4)).astype(np.float64)
    y = np.arange(30) % 3
    np.savez(tmp_path / "d.npz", x=x, y=y)
    info = get(tmp_path / "d.npz", random_flip=True, test_fraction=0.2)
    assert (info.shape, info.num_classes, info.is_image, len(info.test)) == ((1, 4, 4), 3, True, 6)
    info.train.set_epoch(3)
    xs, ys = stacked(info.train)
    assert xs.dtype == torch.float32
    # Every item is one of the array's rows, as it is or mirrored left-right, with that row's label; random
    # rows are never symmetric, and with 24 fair flips both kinds occur except with probability 2^-23.
    rows = torch.from_numpy(x.astype(np.float32))
    kinds = set()
    for xi, yi in zip(xs, ys.tolist()):
        matches = [(i, torch.equal(xi, r.flip(-1))) for i, r in enumerate(rows)
                   if torch.equal(xi, r) or torch.equal(xi, r.flip(-1))]
        assert len(matches) == 1 and y[matches[0][0]] == yi
        kinds.add(matches[0][1])
    assert kinds == {True, False}


@pytest.mark.parametrize("layout", ["NHW", "NHWC", "NCHW"])
def test_uint8_arrays_are_8bit_images(tmp_path, layout):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (20, 3, 6, 6), dtype=np.uint8)
    if layout == "NHW":
        images = images[:, 0]
        stored = images
    elif layout == "NHWC":
        stored = images.transpose(0, 2, 3, 1)
    else:
        stored = images
    np.save(tmp_path / "img.npy", stored)
    info = get(tmp_path / "img.npy")
    channels = 1 if layout == "NHW" else 3
    assert (info.shape, info.n_bins, info.data_range, info.is_image) == ((channels, 6, 6), 256, (-1.0, 1.0), True)
    assert (len(info.train), len(info.test)) == (18, 2)
    x, _ = stacked(info.train)
    k = (x.double() + 1) / 2 * 255
    # float32 storage of -1 + 2k/255: the levels come back to within 1e-4 of integers, equal to the bytes.
    assert (k - k.round()).abs().max() < 1e-4
    reference = images.reshape(20, channels, 6, 6).astype(np.float64)
    assert all(any(np.array_equal(ki, r) for r in reference) for ki in k.round().numpy())


def test_uint8_resized_and_converted(tmp_path):
    images = np.full((10, 8, 8, 3), 90, dtype=np.uint8)
    np.save(tmp_path / "img.npy", images)
    info = get(tmp_path / "img.npy", image_size=4, num_channels=1, centered=False)
    x, _ = stacked(info.train)
    assert x.shape == (9, 1, 4, 4)
    # Grey (90, 90, 90) converts to level 90 exactly (ITU-R 601 weights sum to 1), and resizing keeps constants.
    torch.testing.assert_close(x * 255, torch.full_like(x, 90.0), atol=1e-4, rtol=0)


def test_array_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no file"):
        get(tmp_path / "missing.npy")
    np.savez(tmp_path / "two.npz", a=np.zeros((4, 2)), b=np.zeros(4))
    with pytest.raises(ValueError, match="holds a, b; name the array 'x'"):
        get(tmp_path / "two.npz")
    np.save(tmp_path / "int.npy", np.zeros((4, 2), dtype=np.int64))
    with pytest.raises(ValueError, match="neither float.*nor uint8"):
        get(tmp_path / "int.npy")
    np.save(tmp_path / "u8vec.npy", np.zeros((4, 2), dtype=np.uint8))
    with pytest.raises(ValueError, match=r"\(N, H, W\)"):
        get(tmp_path / "u8vec.npy")
    np.savez(tmp_path / "badlabels.npz", x=np.zeros((4, 2)), y=np.array([0, 1, -1, 2]))
    with pytest.raises(ValueError, match="non-negative integers"):
        get(tmp_path / "badlabels.npz")
    np.savez(tmp_path / "shortlabels.npz", x=np.zeros((4, 2)), y=np.array([0, 1]))
    with pytest.raises(ValueError, match=r"shape \(4,\)"):
        get(tmp_path / "shortlabels.npz")
    np.save(tmp_path / "nan.npy", np.array([[0.0], [np.nan]]))
    with pytest.raises(ValueError, match="NaN"):
        get(tmp_path / "nan.npy")
    (tmp_path / "junk.npy").write_bytes(b"junk")
    with pytest.raises(ValueError, match=r"is not a NumPy file \(no .npy header, not an .npz archive\)"):
        get(tmp_path / "junk.npy")
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}, None], dtype=object))
    with pytest.raises(ValueError, match="cannot read"):
        get(tmp_path / "obj.npy")
