"""ReadOptions through read_volume: DICOM options reach the DICOM reader and are refused, by name, elsewhere."""

from __future__ import annotations

import dataclasses
import warnings

import nibabel as nib
import numpy as np
import pytest

from medseg.errors import InputError
from medseg.io import ReadOptions, read_volume
from medseg.io.dicom import DicomWarning, read_dicom

TWO_SERIES_UID = "1.3.6.1.4.1.5962.1.1.0.0.0.1194734704.16302.0.6"  # one of two CT volumes in dicomdirtests


@pytest.fixture(scope="module")
def failing(test_data):
    return test_data / "dicom" / "dicom2nifti" / "tests_data" / "failing"


def _quiet(fn, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DicomWarning)
        return fn(*args, **kwargs)


def _same(a, b) -> None:
    assert a.array.dtype == b.array.dtype
    np.testing.assert_array_equal(a.array, b.array)
    np.testing.assert_array_equal(a.affine, b.affine)
    assert a.meta["dicom"]["stack_id"] == b.meta["dicom"]["stack_id"]


def test_read_options_defaults_flags_and_dict():
    assert not ReadOptions().has_dicom_options and ReadOptions().dicom_flags == ()
    options = ReadOptions(series=7, keep_tilt=True)
    assert options.series == "7"  # a SeriesNumber may be given as an int
    assert options.dicom_flags == ("--series", "--keep-tilt") and options.has_dicom_options
    assert options.to_dict() == {"series": "7", "resample_irregular": False, "keep_tilt": True}
    assert ReadOptions(**options.to_dict()) == options
    with pytest.raises(dataclasses.FrozenInstanceError):
        options.series = "8"
    with pytest.raises(ValueError, match="series must not be empty"):
        ReadOptions(series="  ")


def test_series_through_read_volume_equals_read_dicom(test_data):
    root = test_data / "dicom" / "pydicom_testfiles" / "dicomdirtests"
    with pytest.raises(InputError, match="could be the scan; choose one with --series"):
        read_volume(root)
    volume = read_volume(root, ReadOptions(series=TWO_SERIES_UID))
    assert volume.meta["reader"] == "dicom" and volume.meta["dicom"]["series_instance_uid"] == TWO_SERIES_UID
    _same(volume, read_dicom(root, TWO_SERIES_UID))


def test_resample_irregular_through_read_volume_equals_read_dicom(failing):
    folder = failing / "sliceincrement" / "001"
    with pytest.raises(InputError, match="rerun with --resample-irregular"):
        read_volume(folder)
    volume = _quiet(read_volume, folder, ReadOptions(resample_irregular=True))
    assert volume.shape == (128, 128, 5) and volume.meta["dicom"]["resampled"] == "irregular spacing"
    _same(volume, _quiet(read_dicom, folder, resample_irregular=True))


def test_keep_tilt_through_read_volume_equals_read_dicom(failing):
    folder = failing / "gantrytilting" / "001"
    resampled = _quiet(read_volume, folder)
    assert resampled.meta["dicom"]["resampled"] == "gantry tilt"
    sheared = _quiet(read_volume, folder, ReadOptions(keep_tilt=True))
    assert sheared.meta["dicom"]["resampled"] is None and sheared.meta["dicom"]["on_source_grid"]
    _same(sheared, _quiet(read_dicom, folder, keep_tilt=True))


@pytest.mark.parametrize(
    ("options", "said"),
    [
        (ReadOptions(series="2"), "--series applies to DICOM input only"),
        (ReadOptions(resample_irregular=True), "--resample-irregular applies to DICOM input only"),
        (ReadOptions(resample_irregular=True, keep_tilt=True), "--resample-irregular, --keep-tilt apply to DICOM"),
    ],
)
@pytest.mark.parametrize("suffix", [".nii.gz", ".nrrd"])
def test_dicom_option_on_other_formats_is_a_clear_error_naming_the_file(tmp_path, options, said, suffix):
    path = tmp_path / f"scan{suffix}"
    data = np.arange(4 * 5 * 6, dtype=np.int16).reshape(4, 5, 6)
    if suffix == ".nrrd":
        import SimpleITK as sitk

        sitk.WriteImage(sitk.GetImageFromArray(data), str(path))
    else:
        nib.save(nib.Nifti1Image(data, np.eye(4)), str(path))
    assert read_volume(path).shape  # readable without options
    with pytest.raises(InputError) as info:
        read_volume(path, options)
    message = str(info.value)
    assert message.startswith(f"{path}: {said}") and message.endswith("this is not a DICOM file")
    assert "\n" not in message


@pytest.mark.parametrize("options", [None, ReadOptions(series="1")])
def test_folder_without_dicom_says_so_and_names_the_folder(tmp_path, options):
    """Every folder reaches the DICOM reader; its message is the one a user sees."""
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(InputError) as info:
        read_volume(empty, options)
    assert str(info.value) == f"{empty}: holds no readable image (the folder is empty)"
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "a.txt").write_text("hello")
    (notes / "b.txt").write_text("world")
    with pytest.raises(InputError) as info:
        read_volume(notes, options)
    message = str(info.value)
    assert message.startswith(f"{notes}: holds no readable image: none of its 2 file(s) is DICOM (a.txt, b.txt)")


def test_unsupported_file_and_missing_path(tmp_path):
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    with pytest.raises(InputError, match="not a supported image file"):
        read_volume(text, ReadOptions(series="1"))
    with pytest.raises(InputError, match="no such file or folder"):
        read_volume(tmp_path / "absent.nii.gz", ReadOptions(series="1"))
