"""The generic helpers: the reader of users' .npy/.npz arrays."""
import pickle

import numpy as np
import pytest

from scoresde.utils import UsageError, read_array

EXPECTED = "an array of points"


def test_read_array_takes_an_npy_or_the_keyed_or_only_array_of_an_npz(tmp_path):
    x, y = np.arange(6.0).reshape(3, 2), np.array([0, 1, 0])
    np.save(tmp_path / "x.npy", x)
    got, arrays = read_array(tmp_path / "x.npy", "x", expected=EXPECTED)
    assert np.array_equal(got, x) and got.dtype == x.dtype and arrays == {}
    np.savez(tmp_path / "xy.npz", x=x, y=y)
    got, arrays = read_array(tmp_path / "xy.npz", "x", expected=EXPECTED)
    assert np.array_equal(got, x) and sorted(arrays) == ["x", "y"] and np.array_equal(arrays["y"], y)
    np.savez(tmp_path / "one.npz", points=x)
    assert np.array_equal(read_array(tmp_path / "one.npz", "x", expected=EXPECTED)[0], x)
    with pytest.raises(UsageError, match=f"holds points; name the array 'x'. Expected {EXPECTED}$"):
        read_array(tmp_path / "one.npz", "x", expected=EXPECTED, only_array=False)
    with pytest.raises(UsageError, match="holds x, y; name the array 'z'"):
        read_array(tmp_path / "xy.npz", "z", expected=EXPECTED)


def _pickled(path):
    with open(path, "wb") as f:
        pickle.dump({"x": [1, 2]}, f)


def _object_npy(path):
    with open(path, "wb") as f:     # np.save would add .npy to the name
        np.save(f, np.array([{"a": 1}, None], dtype=object))


def _object_in_npz(path):
    np.savez(path, x=np.zeros(3), y=np.array([{"a": 1}], dtype=object))


def _cut_npz(path):
    np.savez(path, x=np.zeros(1000))
    path.write_bytes(path.read_bytes()[:200])


def _text(path):
    path.write_text("1 2 3\n")


@pytest.mark.parametrize("write, message", [
    (_pickled, r"is not a NumPy file \(no .npy header, not an .npz archive\)"),
    (_text, r"is not a NumPy file \(no .npy header, not an .npz archive\)"),
    (_object_npy, "cannot read .*: it holds pickled objects or is damaged"),
    (_object_in_npz, "cannot read .*: it holds pickled objects or is damaged"),
    (_cut_npz, "cannot read .*: it holds pickled objects or is damaged"),
])
def test_an_unusable_file_is_one_usage_error_line_saying_what_it_must_be(tmp_path, write, message):
    path = tmp_path / "bad.npz"
    write(path)
    with pytest.raises(UsageError) as caught:
        read_array(path, "x", expected=EXPECTED)
    text = str(caught.value)
    # One line naming the file and what it must be; numpy's advice to set allow_pickle=True is never passed on.
    assert "\n" not in text and "allow_pickle" not in text and str(path) in text and EXPECTED in text
    assert caught.match(message)


def test_a_missing_file_is_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError, match=f"no file {tmp_path / 'none.npy'}; expected {EXPECTED}"):
        read_array(tmp_path / "none.npy", expected=EXPECTED)
