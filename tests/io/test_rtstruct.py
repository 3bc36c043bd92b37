"""RTSTRUCT polygons filled on a voxel grid (synthetic structure sets, then a real one)."""

from __future__ import annotations

import numpy as np
import pytest
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from medseg.errors import InputError
from medseg.io.rtstruct import roi_mask, roi_names


def _rtstruct(polygons_lps: list[np.ndarray], name: str = "GTV") -> Dataset:
    roi = Dataset()
    roi.ROINumber, roi.ROIName = 3, name
    other = Dataset()
    other.ROINumber, other.ROIName = 4, "OTHER"
    rc = Dataset()
    rc.ReferencedROINumber = 3
    contours = []
    for pts in polygons_lps:
        c = Dataset()
        c.ContourData = [float(v) for v in np.asarray(pts, float).ravel()]
        contours.append(c)
    rc.ContourSequence = Sequence(contours)
    ds = Dataset()
    ds.StructureSetROISequence = Sequence([roi, other])
    ds.ROIContourSequence = Sequence([rc])
    return ds


def test_square_lands_on_its_slice_in_a_flipped_grid():
    # LPS grid (RAS affine with negative x and y), 2 mm pixels, 5 mm slices, origin off zero
    affine = np.array([[-2.0, 0, 0, 40.0], [0, -2.0, 0, 30.0], [0, 0, 5.0, -10.0], [0, 0, 0, 1]])
    shape = (32, 24, 4)
    # a 20 x 10 mm square at RAS z = 0 (slice 2), x RAS 20..0 -> i 10..20, y RAS 20..10 -> j 5..10
    ras = np.array([[20.0, 20, 0], [0, 20, 0], [0, 10, 0], [20, 10, 0]])
    lps = ras * np.array([-1, -1, 1])
    mask = roi_mask(_rtstruct([lps]), "GTV", affine, shape)
    assert mask.shape == shape
    assert mask[:, :, [0, 1, 3]].sum() == 0
    ii, jj = np.nonzero(mask[:, :, 2])
    assert (ii.min(), ii.max(), jj.min(), jj.max()) == (10, 20, 5, 10)


def test_polygon_between_slices_is_skipped_and_unknown_roi_is_an_error():
    affine = np.diag([1.0, 1.0, 2.0, 1.0])
    off_plane = np.array([[0.0, 0, 1.0], [-5, 0, 1.0], [-5, -5, 1.0]])  # RAS z = 1 mm: between slices 0 and 1
    assert not roi_mask(_rtstruct([off_plane]), "GTV", affine, (8, 8, 3)).any()
    with pytest.raises(InputError, match="no ROI named 'BODY'.*GTV, OTHER"):
        roi_mask(_rtstruct([off_plane]), "BODY", affine, (8, 8, 3))
    assert roi_names(_rtstruct([])) == ["GTV", "OTHER"]


def test_real_body_contour(test_data):
    """dicompyler-core's planning CT slice and its structure set (cut to the contours on that slice in tests/data)."""
    import pydicom

    from medseg.io.rtstruct import dicom_slice_affine

    d = test_data / "ct" / "dicompyler_core"
    ct = pydicom.dcmread(d / "ct.0.dcm")
    affine = dicom_slice_affine(ct, thickness=3.0)
    body = roi_mask(d / "rtss.dcm", "BODY", affine, (int(ct.Columns), int(ct.Rows), 1))
    area_cm2 = body.sum() * float(ct.PixelSpacing[0]) * float(ct.PixelSpacing[1]) / 100
    assert 440 < area_cm2 < 500  # the README's 472 cm^2 for BODY on this slice
