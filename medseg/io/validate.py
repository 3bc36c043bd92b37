"""Checks every scan passes before it reaches a model: never a silently wrong segmentation."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from nibabel.orientations import io_orientation

from medseg.errors import InputError
from medseg.volume import Volume

#: no scan has a voxel size or an origin beyond this (1 km); a header that says so is corrupt, and
#: beyond float32's range a label file could not even store it
MAX_AFFINE_MM = 1e6


def validate_volume(volume: Volume, path: str | Path) -> None:
    """Raise :class:`InputError` for data medseg cannot segment correctly.

    Accepts ``(i, j, k)`` and ``(i, j, k, c)``; whether ``c`` matches the model's input
    channels is checked where the model is known.
    """
    arr = volume.array
    if 0 in arr.shape:
        raise InputError(f"has a zero-size dimension (shape {tuple(arr.shape)})", path)
    if arr.ndim < 3:
        raise InputError(f"is a {arr.ndim}D image {tuple(arr.shape)}; medseg needs a 3D volume", path)
    if arr.ndim > 4:
        raise InputError(f"has {arr.ndim} dimensions {tuple(arr.shape)}; expected a 3D volume", path)
    if not np.all(np.isfinite(volume.affine)):
        raise InputError("has a non-finite affine (NaN or Inf in the header geometry)", path)
    if abs(np.linalg.det(volume.affine[:3, :3])) < 1e-9:
        raise InputError("has a singular affine (zero voxel size or collinear axes)", path)
    peak = float(np.abs(volume.affine[:3]).max())
    if peak > MAX_AFFINE_MM:
        raise InputError(
            f"has an implausible affine (a voxel size or origin of {peak:.3g} mm); the header geometry is corrupt", path
        )
    if np.isnan(io_orientation(volume.affine)).any():
        raise InputError(
            "has a degenerate affine (voxel axes of wildly different lengths or nearly parallel); "
            "the header geometry is corrupt",
            path,
        )
    if np.issubdtype(arr.dtype, np.floating):
        bad = np.count_nonzero(~np.isfinite(arr))
        if bad:
            kinds = []
            if np.isnan(arr).any():
                kinds.append("NaN")
            if np.isinf(arr).any():
                kinds.append("Inf")
            raise InputError(f"contains {bad} {'/'.join(kinds)} voxel(s); fix or mask them first", path)
        if arr.dtype.itemsize > 4:  # every model computes in float32: a value beyond its range becomes Inf
            limit = float(np.finfo(np.float32).max)
            peak = max(abs(float(arr.max())), abs(float(arr.min())))
            if peak > limit:
                raise InputError(
                    f"has values beyond the float32 range (largest magnitude {peak:.3g}); medseg computes in "
                    "float32, rescale the data first",
                    path,
                )
    elif not (np.issubdtype(arr.dtype, np.integer) or arr.dtype == np.bool_):
        raise InputError(f"has unsupported voxel type {arr.dtype} (RGB or complex data?)", path)


def channels_of(volume: Volume) -> int:
    return 1 if volume.array.ndim == 3 else int(volume.array.shape[3])
