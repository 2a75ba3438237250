"""main.py's helpers in process: what sample/inpaint write."""
import numpy as np
import pytest
import torch
from PIL import Image

import main


def test_vector_samples_without_a_picture_write_only_the_npz(tmp_path):
    x = torch.randn(5, 3)
    written = main._write_samples(tmp_path / "s", x, False, "hint")
    assert written == [tmp_path / "s.npz"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.npz"]
    np.testing.assert_array_equal(np.load(tmp_path / "s.npz")["samples"], x.numpy())


def test_points_and_images_also_get_a_png(tmp_path):
    assert main._write_samples(tmp_path / "p", torch.randn(5, 2), False, "hint") == [tmp_path / "p.png",
                                                                                     tmp_path / "p.npz"]
    written = main._write_samples(tmp_path / "i", torch.rand(4, 1, 8, 8), True, "hint", mask=np.ones((1, 8, 8)))
    assert written == [tmp_path / "i.png", tmp_path / "i.npz"]
    assert Image.open(tmp_path / "i.png").mode == "L"
    assert np.load(tmp_path / "i.npz")["mask"].shape == (1, 8, 8)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_samples_raise_and_write_nothing(tmp_path, bad):
    x = torch.rand(4, 1, 8, 8)
    x[2, 0, 3, 3] = bad
    with pytest.raises(ValueError, match=r"the samples contain NaN/inf \(nothing written\); try more --steps"):
        main._write_samples(tmp_path / "out" / "s", x, True, "try more --steps")
    assert not (tmp_path / "out").exists()
