"""Geometry of a DICOM image stack: slice order, spacing, tilt and irregular gaps, in DICOM LPS.

Pure numpy on positions and direction cosines, so each rule is testable without files. The one
LPS -> RAS flip happens in :mod:`medseg.io.dicom` when the :class:`~medseg.volume.Volume` is built.

Conventions: ``ImageOrientationPatient`` gives ``row_dir`` (the direction in which the column index
grows along a row) and ``col_dir`` (the direction in which the row index grows); the slice normal is
``row_dir x col_dir``. ``PixelSpacing`` is ``(between rows, between columns)``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

# Two images closer than this along the normal are at the same slice location (mm).
SAME_POSITION_MM = 0.01
# Gaps may differ from their mean by this fraction before the spacing counts as irregular.
GAP_TOLERANCE = 0.01
# Shear (in-plane drift per slice / slice spacing) below this is rounding in the headers, not tilt.
TILT_TOLERANCE = 1e-3


def slice_normal(orientation: np.ndarray) -> np.ndarray:
    row_dir, col_dir = np.asarray(orientation[:3], float), np.asarray(orientation[3:6], float)
    n = np.cross(row_dir, col_dir)
    with np.errstate(invalid="ignore", divide="ignore"):  # parallel or zero vectors: NaN, refused by the caller
        return n / np.linalg.norm(n)


@dataclass
class StackGeometry:
    """Where the slices of a stack are and what is wrong with them.

    Attributes:
        order: ``order[v][k]`` is the index (into the stack's frame list) of slice ``k`` of volume ``v``.
        positions: ``(P, 3)`` LPS positions of the slices, sorted along the normal.
        step: LPS vector from one slice to the next (mean over the stack; includes any shear).
        gaps: distances along the normal between consecutive slices, mm.
        problem: why the stack cannot be a volume (``None`` when it can).
        irregular: gaps differ (missing slices or variable spacing).
        tilt_deg: angle between the stacking direction and the slice normal (gantry tilt), degrees.
    """

    order: list[list[int]] = field(default_factory=list)
    positions: np.ndarray = field(default_factory=lambda: np.zeros((0, 3)))
    step: np.ndarray = field(default_factory=lambda: np.zeros(3))
    gaps: np.ndarray = field(default_factory=lambda: np.zeros(0))
    problem: str | None = None
    irregular: bool = False
    tilted: bool = False
    tilt_deg: float = 0.0

    @property
    def n_slices(self) -> int:
        return len(self.positions)

    @property
    def n_volumes(self) -> int:
        return len(self.order)

    @property
    def slice_spacing(self) -> float:
        """Distance between slice planes along the normal (mm), the median gap."""
        return float(np.median(self.gaps)) if len(self.gaps) else float("nan")


def analyze_stack(
    positions: np.ndarray, orientation: np.ndarray, volume_keys: list[tuple] | None = None
) -> StackGeometry:
    """Sort frames into slices (by position along the normal) and volumes, and check the spacing.

    Args:
        positions: ``(N, 3)`` ImagePositionPatient of every frame (LPS mm).
        orientation: the stack's common ImageOrientationPatient (6 values).
        volume_keys: per frame, a sort key that orders the images sharing one slice location into
            volumes (temporal position, acquisition, instance number, ...).
    """
    positions = np.asarray(positions, float)
    n_frames = len(positions)
    keys = volume_keys or [(i,) for i in range(n_frames)]
    normal = slice_normal(orientation)
    along = positions @ normal
    by_along = np.argsort(along, kind="stable")
    groups: list[list[int]] = []
    for idx in by_along:
        if groups and abs(along[idx] - along[groups[-1][0]]) <= SAME_POSITION_MM:
            groups[-1].append(int(idx))
        else:
            groups.append([int(idx)])
    geom = StackGeometry()
    for group in groups:
        spread = np.abs(positions[group] - positions[group[0]]).max()
        if spread > SAME_POSITION_MM * 10:
            geom.problem = (
                f"images at the same slice location have in-plane positions {spread:.2f} mm apart "
                "(two different stacks in one series?)"
            )
            return geom
    counts = sorted({len(g) for g in groups})
    if len(counts) > 1:
        geom.problem = (
            f"slice locations hold different numbers of images ({counts[0]} to {counts[-1]} each); "
            "an incomplete multi-volume series, or acquisitions mixed in one series"
        )
        return geom
    n_volumes = counts[0]
    for group in groups:
        group.sort(key=lambda i: keys[i])
    geom.order = [[group[v] for group in groups] for v in range(n_volumes)]
    geom.positions = positions[[g[0] for g in groups]]
    if len(groups) == 1:
        if n_volumes == 1:
            geom.problem = "is a single 2D image; a 3D volume needs at least 2 slices"
        else:
            geom.problem = (
                f"all {n_volumes} images lie at the same position: not a volume "
                "(a time series of one slice, or repeated acquisitions?)"
            )
        return geom
    p = geom.positions
    diffs = np.diff(p, axis=0)
    geom.gaps = diffs @ normal
    geom.step = (p[-1] - p[0]) / (len(p) - 1)
    mean_gap = float(np.mean(geom.gaps))
    geom.irregular = bool(np.max(np.abs(geom.gaps - mean_gap)) > GAP_TOLERANCE * mean_gap)
    # drift of every slice away from the line through the first slice along the mean step
    in_plane = geom.step - (geom.step @ normal) * normal
    shear = float(np.linalg.norm(in_plane) / (geom.step @ normal))
    if not geom.irregular:
        expected = p[0] + np.outer(np.arange(len(p)), geom.step)
        off_line = float(np.abs(p - expected).max())
        if off_line > max(0.05, GAP_TOLERANCE * mean_gap):
            geom.problem = f"slice positions do not lie on a line (off by up to {off_line:.2f} mm)"
            return geom
    geom.tilted = shear > TILT_TOLERANCE
    geom.tilt_deg = float(np.degrees(np.arctan(shear)))
    return geom


def describe_gaps(gaps: np.ndarray) -> str:
    rounded = sorted({round(float(g), 3) for g in gaps})
    if len(rounded) > 4:
        return f"{rounded[0]:g} to {rounded[-1]:g} mm"
    return ", ".join(f"{g:g}" for g in rounded) + " mm"


def lps_affine(orientation: np.ndarray, pixel_spacing: tuple[float, float], origin: np.ndarray, step: np.ndarray):
    """4x4 LPS affine for an array indexed (column, row, slice)."""
    row_dir, col_dir = np.asarray(orientation[:3], float), np.asarray(orientation[3:6], float)
    affine = np.eye(4)
    affine[:3, 0] = row_dir * float(pixel_spacing[1])
    affine[:3, 1] = col_dir * float(pixel_spacing[0])
    affine[:3, 2] = step
    affine[:3, 3] = origin
    return affine


def untilt(data: np.ndarray, affine: np.ndarray, orientation: np.ndarray, fill: float) -> tuple[np.ndarray, np.ndarray]:
    """Resample a sheared (gantry-tilted) stack onto an orthogonal grid, as dcm2niix does.

    Each slice keeps its plane; only its in-plane offset changes, so this is a per-slice 2D shift
    (linear interpolation). The in-plane grid grows to hold every shifted slice.

    Args:
        data: ``(i, j, k[, v])`` array on ``affine``'s sheared grid.
        affine: LPS affine whose third column is the (sheared) step between slices.
    """
    normal = slice_normal(orientation)
    step = affine[:3, 2]
    along = float(step @ normal)
    drift = step - along * normal  # in-plane offset added by each slice
    di = drift @ affine[:3, 0] / (affine[:3, 0] @ affine[:3, 0])
    dj = drift @ affine[:3, 1] / (affine[:3, 1] @ affine[:3, 1])
    n_k = data.shape[2]
    shifts = np.stack([np.arange(n_k) * di, np.arange(n_k) * dj], axis=1)  # voxels, per slice
    low = np.floor(shifts.min(axis=0) + 1e-6)
    high = np.ceil(shifts.max(axis=0) - 1e-6)
    new_shape = (data.shape[0] + int(high[0] - low[0]), data.shape[1] + int(high[1] - low[1]))
    out = np.full(new_shape + data.shape[2:], fill, dtype=np.float32)
    for k in range(n_k):
        # output (i, j) sits at world origin + (low + (i, j)) ... which is input (i, j) - shift_k + low
        offset = low - shifts[k]
        for extra in np.ndindex(*data.shape[3:]):
            sl = data[(slice(None), slice(None), k, *extra)].astype(np.float32)
            out[(slice(None), slice(None), k, *extra)] = ndimage.affine_transform(
                sl, np.eye(2), offset=offset, output_shape=new_shape, order=1, mode="constant", cval=fill
            )
    new_affine = affine.copy()
    new_affine[:3, 2] = along * normal
    new_affine[:3, 3] = affine[:3, 3] + low[0] * affine[:3, 0] + low[1] * affine[:3, 1]
    return out, new_affine


def regularize(data: np.ndarray, along: np.ndarray) -> tuple[np.ndarray, float]:
    """Linearly interpolate slices at positions ``along`` (mm, ascending) onto an even grid.

    The new spacing is the smallest gap, so no measured slice is thinned out; a missing slice
    becomes the interpolation of its neighbours. Returns ``(data, spacing)``.
    """
    gaps = np.diff(along)
    spacing = float(gaps.min())
    n_new = int(round((along[-1] - along[0]) / spacing)) + 1
    spacing = float((along[-1] - along[0]) / (n_new - 1))
    targets = along[0] + np.arange(n_new) * spacing
    upper = np.clip(np.searchsorted(along, targets, side="right"), 1, len(along) - 1)
    lower = upper - 1
    weight = ((targets - along[lower]) / (along[upper] - along[lower])).astype(np.float32)
    shape = (1, 1, n_new) + (1,) * (data.ndim - 3)
    weight = weight.reshape(shape)
    out = data[:, :, lower].astype(np.float32) * (1 - weight) + data[:, :, upper].astype(np.float32) * weight
    return out, spacing
