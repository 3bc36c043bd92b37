"""Bad input gets a clear one-line error naming the file."""

import gzip

import numpy as np
import pytest

from medseg.errors import InputError
from medseg.io import read_volume
from tests.conftest import save_nifti


def _err(path) -> str:
    with pytest.raises(InputError) as info:
        read_volume(path)
    msg = str(info.value)
    assert "\n" not in msg and str(path) in msg
    return msg


def test_missing_file(tmp_path):
    assert "no such file" in _err(tmp_path / "nope.nii.gz")


def test_folder_without_images(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    assert "no readable image" in _err(tmp_path)


def test_non_image_file(tmp_path):
    p = tmp_path / "scan.nii.gz"
    p.write_text("this is not an image")
    assert "not a readable NIfTI" in _err(p) or "truncated" in _err(p)
    q = tmp_path / "report.pdf"
    q.write_bytes(b"%PDF-1.4")
    assert "not a supported image file" in _err(q)


def test_truncated_gzip(tmp_path):
    p = save_nifti(
        tmp_path / "full.nii.gz", np.random.default_rng(0).normal(size=(40, 40, 40)).astype(np.float32), np.eye(4)
    )
    data = p.read_bytes()
    cut = tmp_path / "cut.nii.gz"
    cut.write_bytes(data[: len(data) // 2])
    assert "truncated" in _err(cut)


def test_2d_image(tmp_path):
    assert "2D image" in _err(save_nifti(tmp_path / "x.nii.gz", np.zeros((10, 10), np.int16), np.eye(4)))


def test_4d_is_read_as_channels(tmp_path):
    vol = read_volume(save_nifti(tmp_path / "x.nii.gz", np.zeros((5, 5, 5, 3), np.int16), np.eye(4)))
    assert vol.array.shape == (5, 5, 5, 3)


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_nan_or_inf_voxels(tmp_path, bad):
    data = np.zeros((6, 6, 6), np.float32)
    data[1, 2, 3] = bad
    assert "1 " in _err(save_nifti(tmp_path / "x.nii.gz", data, np.eye(4)))


def test_zero_size_dimension(tmp_path):
    assert "zero-size" in _err(save_nifti(tmp_path / "x.nii.gz", np.zeros((5, 0, 5), np.int16), np.eye(4)))


def test_gzip_of_garbage(tmp_path):
    p = tmp_path / "x.nii.gz"
    p.write_bytes(gzip.compress(b"\x00" * 400))
    _err(p)


@pytest.mark.parametrize("suffix", [".nii", ".nii.gz"])
def test_header_that_declares_more_than_the_file_holds(tmp_path, suffix):
    """30000^3 voxels declared with 1 KB of data: "truncated or corrupt", checked before allocating."""
    import nibabel as nib

    header = nib.Nifti1Header()
    header.set_data_dtype(np.int16)
    header.set_data_shape((30000, 30000, 30000))
    payload = header.binaryblock + bytes(4) + bytes(1024)
    p = tmp_path / f"liar{suffix}"
    p.write_bytes(gzip.compress(payload) if suffix.endswith(".gz") else payload)
    msg = _err(p)
    assert "truncated or corrupt" in msg and "30000x30000x30000" in msg


def test_float64_values_beyond_float32_are_refused(tmp_path):
    """They would become Inf in the float32 every model computes in (and a silently empty result)."""
    data = np.zeros((6, 6, 6), np.float64)
    data[2, 2, 2] = 1e39
    assert "beyond the float32 range" in _err(save_nifti(tmp_path / "x.nii.gz", data, np.eye(4)))
    data[2, 2, 2] = 3e38  # still a float32
    assert read_volume(save_nifti(tmp_path / "ok.nii.gz", data, np.eye(4))).array.max() == 3e38


@pytest.mark.parametrize(
    "affine, expected",
    [
        (np.diag([1.0, 1.0, 1e30, 1.0]), "has an implausible affine (a voxel size or origin of 1e+30 mm)"),
        (np.array([[1.0, 0, 0, 0], [0, 1, 0, -3e8], [0, 0, 1, 0], [0, 0, 0, 1]]), "origin of 3e+08 mm"),
        # axes 0 and 1 parallel to 1e-16: not singular (det 1e2), but no orientation can be read from it
        (np.array([[1e6, 1e6, 0, 0], [0, 1e-10, 0, 0], [0, 0, 1e6, 0], [0, 0, 0, 1]]), "has a degenerate affine"),
    ],
    ids=["huge-voxel", "huge-origin", "degenerate"],
)
def test_implausible_or_degenerate_affine(tmp_path, affine, expected):
    """Found by the reader fuzz: a 1e30 srow entry passed the checks (finite, non-singular) and then
    failed inside the model with "unexpected ValueError"; a 1e300 DICOM position gave a label file
    whose origin float32 stores as -inf."""
    path = save_nifti(tmp_path / "odd.nii.gz", np.zeros((4, 4, 4), np.int16), affine)
    assert expected in _err(path)
