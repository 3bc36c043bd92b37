"""`medseg view`'s reader options: a DICOM folder with two volumes opens both, or the one --series names."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from medseg.errors import InputError
from medseg.io import ReadOptions, read_volume
from medseg.viewer._reader import read_volumes

UIDS = (
    "1.3.6.1.4.1.5962.1.1.0.0.0.1194734704.16302.0.6",  # CT, 5 images
    "1.3.6.1.4.1.5962.1.1.0.0.0.1196530851.28319.0.2",  # CT, 4 images, one gap of 202.5 mm
)


@pytest.fixture(scope="module")
def two_series(test_data):
    return test_data / "dicom" / "pydicom_testfiles" / "dicomdirtests"


def test_read_volumes_gives_every_series_or_the_one_named(two_series):
    with pytest.raises(InputError, match="28319.0.2: slice spacing is not uniform .* --resample-irregular"):
        read_volumes(two_series)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        every = read_volumes(two_series, ReadOptions(resample_irregular=True))
        (one,) = read_volumes(two_series, ReadOptions(series=UIDS[0]))
    assert sorted(v.meta["dicom"]["series_instance_uid"] for v in every) == sorted(UIDS)
    assert all(v.meta["layer_name"].startswith("dicomdirtests ") for v in every)
    assert [v.meta["dicom"]["resampled"] for v in every if v.meta["dicom"]["series_instance_uid"] == UIDS[1]] == [
        "irregular spacing"
    ]
    reference = read_volume(two_series, ReadOptions(series=UIDS[0]))
    assert one.meta["dicom"]["series_instance_uid"] == UIDS[0]
    assert np.array_equal(one.array, reference.array) and np.array_equal(one.affine, reference.affine)


def test_open_viewer_passes_read_options_to_the_image_only(napari_mod, two_series, tmp_path):
    import nibabel as nib
    from napari.components import ViewerModel

    from medseg.viewer.launch import open_viewer
    from medseg.viewer.layers import source_meta_of

    viewer = ViewerModel()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        open_viewer(two_series, widget=False, viewer=viewer, read_options=ReadOptions(series=UIDS[0]))
    assert [source_meta_of(layer.metadata)["dicom"]["series_instance_uid"] for layer in viewer.layers] == [UIDS[0]]
    scan = tmp_path / "scan.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((4, 5, 6), np.int16), np.eye(4)), str(scan))
    with pytest.raises(InputError, match=r"scan\.nii\.gz: --series applies to DICOM input only"):
        open_viewer(scan, widget=False, viewer=ViewerModel(), read_options=ReadOptions(series="2"))
