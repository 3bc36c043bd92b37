"""NIfTI reading and label writing keep geometry exactly, on synthetic and real files."""

import nibabel as nib
import numpy as np
import pytest

from medseg.io import read_volume, write_labels
from tests.conftest import save_nifti

REAL_NIFTI = [
    "nifti/nibabel/tests_data/anatomical.nii",  # big-endian int16, LAS, qform = sform = 2
    "nifti/nibabel/tests_data/example_nifti2.nii.gz",  # NIfTI-2
    "nifti/nilearn_mni152/mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz",  # sform 2, qform 0 (a 48^3 block)
    "dicom/monai_testing_data/anatomical_label.nii.gz",  # qform only
    "dicom/monai_testing_data/reoriented_anat_moved.nii",  # big-endian float32, rotated
]


def _assert_same_geometry(out_path, src_path):
    out, src = nib.load(str(out_path)), nib.load(str(src_path))
    assert out.shape == src.shape
    assert np.array_equal(out.affine, src.affine)
    for code in ("qform_code", "sform_code"):
        assert int(out.header[code]) == int(src.header[code])
    assert np.array_equal(out.header.get_qform(), src.header.get_qform())
    assert np.array_equal(out.header.get_sform(), src.header.get_sform())
    assert np.array_equal(out.header["pixdim"][:4], src.header["pixdim"][:4])  # incl. qfac
    assert type(out) is type(src)


@pytest.mark.parametrize("rel", REAL_NIFTI)
def test_labels_written_on_real_files_keep_header_geometry(test_data, tmp_path, rel):
    src = test_data / rel
    vol = read_volume(src)
    if vol.array.ndim == 4:  # example_nifti2 is 4D; segmenting would refuse, writing a grid still works
        vol = vol.with_array(vol.array[..., 0])
        vol.meta["source_shape"] = vol.array.shape
    labels = (np.asarray(vol.array) > np.median(vol.array)).astype(np.uint8)
    out = write_labels(labels, vol, tmp_path / "labels.nii.gz")
    if vol.array.ndim == 3 and len(nib.load(str(src)).shape) == 3:
        _assert_same_geometry(out, src)
    img = nib.load(str(out))
    assert img.get_data_dtype() == np.uint8
    assert np.array_equal(np.asarray(img.dataobj).reshape(labels.shape), labels)


def test_big_endian_input_reads_native(test_data):
    vol = read_volume(test_data / "nifti/nibabel/tests_data/anatomical.nii")
    assert vol.array.dtype.byteorder in ("=", "|")
    assert vol.axcodes == ("L", "A", "S")


@pytest.mark.parametrize(
    "affine",
    [
        np.diag([1.5, 1.5, 5.0, 1.0]),  # RAS, anisotropic
        np.array([[-0.8, 0, 0, 90], [0, -0.8, 0, 120], [0, 0, 2.5, -60], [0, 0, 0, 1]]),  # LPS
        np.array([[0.7, -0.3, 0.1, 5], [0.3, 0.7, 0.0, -7], [0.0, 0.05, 3.0, 2], [0, 0, 0, 1]]),  # oblique
    ],
    ids=["ras-aniso", "lps", "oblique"],
)
def test_write_labels_keeps_affine_and_codes(tmp_path, affine):
    src = save_nifti(
        tmp_path / "img.nii.gz",
        np.random.default_rng(0).normal(size=(9, 8, 7)).astype(np.float32),
        affine,
        qform_code=1,
        sform_code=2,
    )
    vol = read_volume(src)
    out = write_labels(np.ones(vol.shape, np.uint8), vol, tmp_path / "lab.nii.gz")
    _assert_same_geometry(out, src)


def test_trailing_singleton_dimension_is_kept(tmp_path):
    src = save_nifti(tmp_path / "img.nii.gz", np.zeros((5, 6, 7, 1), np.int16), np.diag([2, 2, 2, 1.0]))
    vol = read_volume(src)
    assert vol.shape == (5, 6, 7) and vol.array.ndim == 3
    out = write_labels(np.zeros(vol.shape, np.uint8), vol, tmp_path / "lab.nii.gz")
    assert nib.load(str(out)).shape == (5, 6, 7, 1)


def test_many_labels_use_uint16(tmp_path):
    src = save_nifti(tmp_path / "img.nii.gz", np.zeros((4, 4, 4), np.int16), np.eye(4))
    vol = read_volume(src)
    labels = np.arange(64, dtype=np.uint16).reshape(4, 4, 4) * 5
    out = write_labels(labels, vol, tmp_path / "lab.nii.gz")
    img = nib.load(str(out))
    assert img.get_data_dtype() == np.uint16
    assert np.array_equal(np.asarray(img.dataobj), labels)


def test_nrrd_reader_converts_lps_to_ras(tmp_path):
    import SimpleITK as sitk

    arr = np.arange(4 * 5 * 6, dtype=np.int16).reshape(6, 5, 4)  # sitk (z, y, x)
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing((0.5, 0.7, 2.0))
    img.SetOrigin((10.0, 20.0, 30.0))
    sitk.WriteImage(img, str(tmp_path / "x.nrrd"))
    vol = read_volume(tmp_path / "x.nrrd")
    assert vol.shape == (4, 5, 6)
    assert vol.array[1, 2, 3] == arr[3, 2, 1]
    assert np.allclose(vol.affine[:3, 3], [-10.0, -20.0, 30.0])
    assert vol.axcodes == ("L", "P", "S")


# --- found by the reader fuzz (tests/io/test_fuzz_readers.py) ------------------------------------


def _patch(path, offset: int, fmt: str, value):
    """Overwrite one NIfTI-1 header field in place (byte offsets from the NIfTI-1 standard)."""
    import struct

    blob = bytearray(path.read_bytes())
    blob[offset : offset + struct.calcsize(fmt)] = struct.pack(fmt, value)
    path.write_bytes(bytes(blob))


@pytest.mark.parametrize(
    "patches, expected",
    [
        ([(70, "<h", 0)], "data code 0 not supported"),  # datatype 0
        ([(70, "<h", 9999)], "data code 9999 not recognized"),
        ([(108, "<f", -1.0)], "vox offset -1 too low"),  # vox_offset inside the header
        ([(112, "<f", 2.0), (116, "<f", float("nan"))], "invalid intercept nan"),  # scl_slope, scl_inter
    ],
    ids=["datatype-0", "datatype-unknown", "vox-offset-negative", "slope-without-intercept"],
)
def test_header_fields_nibabel_refuses_are_one_line_input_errors(tmp_path, patches, expected):
    """Before: nibabel's HeaderDataError escaped read_nifti ("unexpected HeaderDataError", no file named)."""
    from medseg.errors import InputError

    path = save_nifti(tmp_path / "scan.nii", np.zeros((4, 4, 4), np.int16), np.eye(4))
    for offset, fmt, value in patches:
        _patch(path, offset, fmt, value)
    with pytest.raises(InputError) as info:
        read_volume(path)
    message = str(info.value)
    assert message.startswith(f"{path}: has an invalid NIfTI header (") and expected in message


@pytest.mark.parametrize("shape", [(37, 5, 19), (3, 70, 9, 2), (1, 1, 1), (64, 8, 3)])
def test_blocked_order_copies_equal_numpys(shape):
    """The blocked column-major <-> C-order copies of reading and writing give numpy's arrays exactly."""
    from medseg.io.nifti import c_order, f_order

    data = np.arange(int(np.prod(shape)), dtype=np.int16).reshape(shape)
    fortran = np.asfortranarray(data)
    c, f = c_order(fortran), f_order(data)
    assert c.flags.c_contiguous and np.array_equal(c, data)
    assert f.flags.f_contiguous and np.array_equal(f, data)
