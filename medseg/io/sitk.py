"""Other formats SimpleITK reads (.nrrd, .mha, .mhd): converted from LPS (z, y, x) once, here."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from medseg.errors import InputError
from medseg.volume import LPS_TO_RAS, Volume

SITK_SUFFIXES = (".nrrd", ".nhdr", ".mha", ".mhd")


def is_sitk_image(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in SITK_SUFFIXES


def sitk_to_volume(image, source: str = "<memory>") -> Volume:
    """SimpleITK image -> Volume: array transposed to (i, j, k), affine converted LPS -> RAS."""
    import SimpleITK as sitk  # on use: only .nrrd/.mha/.mhd need it

    dim = image.GetDimension()
    arr = sitk.GetArrayFromImage(image)  # (k, j, i[, c])
    if image.GetNumberOfComponentsPerPixel() > 1:
        arr = np.moveaxis(arr, -1, 0)
        arr = np.transpose(arr, (0,) + tuple(range(arr.ndim - 1, 0, -1)))
        arr = np.moveaxis(arr, 0, -1)
    else:
        arr = np.transpose(arr, tuple(range(arr.ndim - 1, -1, -1)))
    if dim != 3:
        return Volume(arr, np.eye(4), {"source": source})
    direction = np.asarray(image.GetDirection(), dtype=np.float64).reshape(3, 3)
    affine = np.eye(4)
    flip = LPS_TO_RAS[:3, :3]
    affine[:3, :3] = flip @ direction @ np.diag(image.GetSpacing())
    affine[:3, 3] = flip @ np.asarray(image.GetOrigin())
    return Volume(np.ascontiguousarray(arr), affine, {"source": source})


def read_sitk(path: str | Path) -> Volume:
    import SimpleITK as sitk

    path = Path(path)
    try:
        image = sitk.ReadImage(str(path))
    except RuntimeError as err:
        first = str(err).strip().splitlines()
        raise InputError(f"SimpleITK cannot read it ({first[-1][:160] if first else 'unknown error'})", path) from None
    volume = sitk_to_volume(image, str(path))
    volume.meta.update(format=path.suffix.lower().lstrip("."))
    return volume
