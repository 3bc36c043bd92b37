"""RTSTRUCT contours as voxel masks: a radiotherapy structure set becomes a reference label on a CT grid.

Radiotherapy planning systems store organs (``BODY``, ``Lt Lung``...) as closed planar polygons in
patient (LPS) millimetres. :func:`roi_mask` fills one ROI's polygons on any grid given by its affine
(voxel -> RAS+ mm) and shape, slice by slice: a polygon is drawn on the axial slice its points lie in
(less than half a voxel away), others are skipped. Polygons of one ROI are united (holes drawn as separate
polygons are not subtracted). Used to compare segmentations with clinical contours.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from medseg.errors import InputError

LPS_TO_RAS = np.array([-1.0, -1.0, 1.0])


def dicom_slice_affine(ds, thickness: float | None = None) -> np.ndarray:
    """voxel -> RAS+ affine of one DICOM image slice, indexed (column, row, slice) as medseg reads it."""
    from medseg.io.dicom_geometry import lps_affine, slice_normal

    orientation = np.asarray(ds.ImageOrientationPatient, float)
    step = slice_normal(orientation) * float(thickness or getattr(ds, "SliceThickness", None) or 1.0)
    spacing = tuple(float(v) for v in ds.PixelSpacing)
    lps = lps_affine(orientation, spacing, np.asarray(ds.ImagePositionPatient, float), step)
    return np.diag([*LPS_TO_RAS, 1.0]) @ lps


def roi_names(rtstruct) -> list[str]:
    return [str(r.ROIName) for r in rtstruct.StructureSetROISequence]


def roi_mask(rtstruct, roi_name: str, affine: np.ndarray, shape: tuple[int, int, int]) -> np.ndarray:
    """bool mask (``shape``) of the ROI called ``roi_name`` in an RTSTRUCT (path or pydicom dataset).

    Example:
        >>> body = roi_mask("rtss.dcm", "BODY", volume.affine, volume.shape)  # doctest: +SKIP
    """
    import pydicom
    from PIL import Image, ImageDraw

    source = rtstruct if isinstance(rtstruct, (str, Path)) else getattr(rtstruct, "filename", "RTSTRUCT")
    if isinstance(rtstruct, (str, Path)):
        rtstruct = pydicom.dcmread(rtstruct)
    numbers = [r.ROINumber for r in rtstruct.StructureSetROISequence if r.ROIName == roi_name]
    if not numbers:
        raise InputError(f"no ROI named {roi_name!r} (has: {', '.join(roi_names(rtstruct))})", source)
    to_voxel = np.linalg.inv(np.asarray(affine, float))
    slices = [Image.new("1", (shape[0], shape[1]), 0) for _ in range(shape[2])]
    for rc in rtstruct.ROIContourSequence:
        if rc.ReferencedROINumber != numbers[0]:
            continue
        for contour in getattr(rc, "ContourSequence", []):
            pts = np.asarray(contour.ContourData, float).reshape(-1, 3) * LPS_TO_RAS
            ijk = (to_voxel[:3, :3] @ pts.T).T + to_voxel[:3, 3]
            k = int(round(float(np.median(ijk[:, 2]))))
            if not 0 <= k < shape[2] or np.abs(ijk[:, 2] - k).max() >= 0.5 or len(pts) < 3:
                continue
            ImageDraw.Draw(slices[k]).polygon([(float(i), float(j)) for i, j in ijk[:, :2]], fill=1, outline=1)
    return np.stack([np.asarray(s).T for s in slices], axis=2)
