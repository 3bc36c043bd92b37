"""The ct-anatomy algorithm: body, lungs (left/right), airway, bone, subcutaneous/torso fat, muscle.

Weights-free: HU thresholds, morphology and connected components. The scan is viewed in its closest
canonical orientation (axis permutation and flips only, mapped back exactly), decisions are taken on
a ~3 mm block-mean grid and refined with full-resolution thresholds, so cost is linear in voxels.
See ``docs/ct_anatomy.md`` for the method step by step and its limits.

Example:
    >>> result = segment_ct(volume.array, volume.affine)  # doctest: +SKIP
    >>> result.labels.shape == volume.shape, result.notes  # doctest: +SKIP
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from medseg.models.ct_anatomy import labels as L
from medseg.models.ct_anatomy.body import body_parts, coarse_padding
from medseg.models.ct_anatomy.grid import PADDING_MARK, Canonical, CoarseGrid, canonical_int16
from medseg.models.ct_anatomy.lungs import segment_lungs
from medseg.models.ct_anatomy.tissue import segment_tissue

Progress = Callable[[float, str], None]


@dataclass
class AnatomyResult:
    """Labels (uint8, the input's shape and order), plain-English notes and step timings (s)."""

    labels: np.ndarray
    notes: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)


def _check(hu: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    hu = np.asarray(hu)
    if hu.ndim != 3:
        raise ValueError(f"segment_ct needs a 3D array (i, j, k), got shape {hu.shape}")
    if hu.dtype.kind not in "iuf":
        raise ValueError(f"segment_ct needs HU as numbers, got dtype {hu.dtype}")
    affine = np.asarray(affine, dtype=float)
    if affine.shape != (4, 4) or not np.isfinite(affine).all():
        raise ValueError("affine must be a finite 4x4 voxel -> RAS+ mm matrix")
    if abs(np.linalg.det(affine[:3, :3])) < 1e-9:
        raise ValueError("affine is singular")
    return hu, affine


def segment_ct(hu: np.ndarray, affine: np.ndarray, progress: Progress | None = None) -> AnatomyResult:
    """Segment a CT in Hounsfield units into the labels of :mod:`.labels`.

    Args:
        hu: 3D array in nibabel index order (i, j, k), HU, any int/float dtype (never copied to float64).
        affine: 4x4 voxel -> RAS+ mm (any orientation, oblique or flipped; spacing 0.5-5 mm).
        progress: optional ``callable(fraction, message)`` called between steps.

    Returns:
        :class:`AnatomyResult`: exclusive labels whose union is the body; notes for structures the field
        of view does not hold (never an exception for a partial field of view).
    """
    hu, affine = _check(hu, affine)
    timings: dict[str, float] = {}
    notes: list[str] = []
    t0 = time.perf_counter()
    last = [t0]

    def step(name: str, fraction: float, message: str) -> None:
        now = time.perf_counter()
        timings[name] = round(now - last[0], 4)
        last[0] = now
        if progress is not None:
            progress(fraction, message)

    canon = Canonical.from_affine(affine, hu.shape)
    grid = CoarseGrid(canon.canonical_shape, canon.spacing)
    hu16 = canonical_int16(hu, canon)
    padding = coarse_padding(hu16, grid)
    mean = grid.block_mean(hu16)
    step("grid", 0.1, "coarse grid")

    body = body_parts(hu16, grid, mean, padding)
    step("body", 0.25, "body")
    if not body.full.any():
        notes.append("no body in the field of view")
        labels = np.zeros(hu.shape, dtype=np.uint8)
        timings["total"] = round(time.perf_counter() - t0, 4)
        return AnatomyResult(labels, notes, timings)
    if body.cut_by_fov:
        notes.append("body touches the field-of-view edge: body cut by the FOV")

    lungs = segment_lungs(hu16, mean, grid, body, canon)
    notes.extend(lungs.notes)
    step("lungs", 0.55, "lungs and airway")

    tissue = segment_tissue(hu16, mean, grid, body.full, body.coarse, lungs.coarse_lungs)
    if not tissue.has_torso:
        notes.append("no torso in the field of view: all fat counted as subcutaneous")
    padmask = (hu16 == PADDING_MARK) if padding is not None else None
    del hu16, mean
    step("tissue", 0.85, "bone, fat and muscle")

    out = np.zeros(grid.shape, dtype=np.uint8)
    body_full = body.full
    out[body_full] = L.BODY
    out[tissue.subcutaneous_fat] = L.SUBCUTANEOUS_FAT
    out[tissue.torso_fat] = L.TORSO_FAT
    out[tissue.muscle] = L.SKELETAL_MUSCLE
    out[tissue.bone] = L.BONE
    del tissue
    out[lungs.left] = L.LUNG_LEFT
    out[lungs.right] = L.LUNG_RIGHT
    out[lungs.airway] = L.AIRWAY
    if padmask is not None:
        out[padmask] = L.BACKGROUND  # reconstruction padding is never patient
    labels = np.ascontiguousarray(canon.from_canonical(out))
    step("labels", 1.0, "labels")
    timings["total"] = round(time.perf_counter() - t0, 4)
    return AnatomyResult(labels, notes, timings)


#: measured peak extra host bytes (tracemalloc; benchmarks/ct_anatomy_method_speed.py and the tests): per
#: full-resolution voxel (int16 copy, a few bool masks, the uint8 labels) and per coarse-grid voxel
#: (labels, distances and indices of the ~3 mm decisions)
PEAK_BYTES_PER_VOXEL = 12.0
PEAK_BYTES_PER_COARSE_VOXEL = 29.0
PEAK_BYTES_FIXED = 4 * 2**20


def peak_bytes(shape: tuple[int, ...], spacing: tuple[float, ...] | None = None) -> int:
    """Predicted peak extra host bytes of :func:`segment_ct` for an input of ``shape``.

    Args:
        shape: the scan's array shape (i, j, k).
        spacing: voxel size in mm per array axis; without it 1 mm (coarse factor 3 per axis) is assumed,
            which over-predicts slightly for finer scans and under-predicts for 3-5 mm ones.
    """
    dims = [int(s) for s in shape[:3]]
    n = int(np.prod(dims))
    grid = CoarseGrid(tuple(dims), tuple(spacing[:3]) if spacing is not None else (1.0, 1.0, 1.0))
    n_coarse = int(np.prod(grid.coarse_shape))
    return int(PEAK_BYTES_PER_VOXEL * n + PEAK_BYTES_PER_COARSE_VOXEL * n_coarse + PEAK_BYTES_FIXED)
