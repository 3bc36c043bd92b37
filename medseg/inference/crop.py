"""Segment only a region of the scan (``--crop-to-body``: the body's bounding box with a margin); outside
is background.

The region is the bounding box of a mask (:func:`mask_region`; for ``--crop-to-body`` the caller's body
mask, as TotalSegmentator's body crop does); the model then runs on the sub-volume, whose affine is the
source affine shifted to the box's first voxel, so geometry stays exact, and its labels are pasted back
into a background volume of the scan's shape.

The box is widened (:func:`align_to_model_grid`) so that the model's resampled grid of the crop
falls on the same points as that of the whole scan wherever the voxel sizes allow (a 3 mm model on
0.8 mm voxels: the box starts on a multiple of 15 voxels): the network sees the same samples
with and without the crop, and only tile positions differ.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from medseg.volume import Volume

#: margin around the body's bounding box, in mm
CROP_MARGIN_MM = 10.0


@dataclass(frozen=True)
class Region:
    """A box of the scan: ``start``/``stop`` voxel indices per axis (stop exclusive)."""

    start: tuple[int, int, int]
    stop: tuple[int, int, int]

    @property
    def slices(self) -> tuple[slice, slice, slice]:
        return tuple(slice(a, b) for a, b in zip(self.start, self.stop, strict=True))

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(b - a for a, b in zip(self.start, self.stop, strict=True))

    def fraction_of(self, shape) -> float:
        return float(np.prod(self.shape) / max(1, np.prod(shape[:3])))

    def to_dict(self, shape) -> dict:
        return {"start": list(self.start), "stop": list(self.stop), "fraction": round(self.fraction_of(shape), 4)}


def mask_region(mask: np.ndarray, spacing, margin_mm: float = CROP_MARGIN_MM) -> Region | None:
    """The bounding box of ``mask`` (3D, bool) with ``margin_mm`` on every side (``spacing`` in mm per axis),
    clipped to the mask's shape; None if the mask is empty."""
    if not mask.any():
        return None
    start, stop = [], []
    for axis, step in enumerate(spacing):
        others = tuple(a for a in range(3) if a != axis)
        hits = np.flatnonzero(mask.any(axis=others))
        pad = int(np.ceil(margin_mm / max(float(step), 1e-6)))
        start.append(max(0, int(hits[0]) - pad))
        stop.append(min(mask.shape[axis], int(hits[-1]) + 1 + pad))
    return Region(tuple(start), tuple(stop))


def _grid_step(scale: float, longest: int = 64) -> int:
    """The fewest source voxels that hold a whole number of model voxels (``scale`` = target/source
    spacing); 1 when none up to ``longest`` does (the shift then cannot be made exact)."""
    for n in range(1, longest + 1):
        m = n / scale
        if abs(m - round(m)) < 1e-3 * max(1.0, m):
            return n
    return 1


def align_to_model_grid(region: Region, shape, record) -> Region:
    """``region`` grown so the model grid's first sample (voxel 0 after reorientation, so the last
    voxel along a flipped axis) lands on a sample of the whole scan's model grid.

    Args:
        record: the model's :class:`~medseg.inference.preprocess.GridRecord` for the whole scan.
    """
    start, stop = list(region.start), list(region.stop)
    for axis in range(3):
        out_axis, flip = int(record.ornt[axis, 0]), record.ornt[axis, 1] < 0
        n = _grid_step(float(record.scale[out_axis]))
        if n == 1:
            continue
        if flip:  # the reoriented grid starts at the last voxel: align the distance to the far end
            stop[axis] = int(shape[axis]) - ((int(shape[axis]) - stop[axis]) // n) * n
        else:
            start[axis] = (start[axis] // n) * n
    return Region(tuple(start), tuple(stop))


def crop(volume: Volume, region: Region) -> Volume:
    """The sub-volume of ``region``: a view of the voxels, the affine moved to its first voxel."""
    shift = np.eye(4)
    shift[:3, 3] = region.start
    sub = volume.with_array(volume.array[region.slices], volume.affine @ shift)
    sub.meta["cropped_from"] = {"shape": list(volume.shape), "start": list(region.start)}
    return sub


def paste(labels: np.ndarray, shape: tuple[int, ...], region: Region) -> np.ndarray:
    """``labels`` of the sub-volume placed in a background volume of ``shape``."""
    if labels.shape != region.shape:
        raise AssertionError(f"labels {labels.shape} do not match the crop {region.shape}")
    full = np.zeros(shape[:3], dtype=labels.dtype)
    full[region.slices] = labels
    return full
