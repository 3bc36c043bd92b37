"""Grids for the ct-anatomy method: the closest canonical (RAS) orientation and a coarse ~3 mm grid.

Every step of the method works on a canonical view of the scan (axis 0 towards the patient's Right,
1 Anterior, 2 Superior), reached by axis permutation and flips only, so it maps back exactly. Decisions
that need connectivity or morphology are taken on a coarse grid of integer blocks (block-mean HU) and
refined with full-resolution thresholds; structuring elements are sized in mm, never in voxels.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from nibabel.orientations import io_orientation
from scipy import ndimage as ndi

#: HU below this are reconstruction padding (-2048, -3024, ...), read as air
PADDING_HU = -1500
#: what padding becomes in the canonical int16 copy (everything else is clipped to >= -1024)
PADDING_MARK = -1025


@dataclass(frozen=True)
class Canonical:
    """Axis permutation and flips taking an array in scan order to the closest RAS+ order, and back."""

    ornt: np.ndarray  # nibabel orientation: for each scan axis, (canonical axis, +1/-1)
    shape: tuple[int, ...]  # scan shape
    spacing: tuple[float, float, float]  # canonical voxel size (mm)
    affine: np.ndarray  # canonical voxel -> RAS+ mm

    @classmethod
    def from_affine(cls, affine: np.ndarray, shape: tuple[int, ...]) -> Canonical:
        affine = np.asarray(affine, dtype=float)
        ornt = io_orientation(affine)
        if np.isnan(ornt).any():
            raise ValueError("the affine has a degenerate (zero-length or parallel) axis")
        zooms = np.sqrt((affine[:3, :3] ** 2).sum(axis=0))
        spacing = [0.0, 0.0, 0.0]
        # canonical index c -> scan index: scan[a] = c[ax] or n_a - 1 - c[ax]
        to_scan = np.zeros((4, 4))
        to_scan[3, 3] = 1
        for a, (ax, flip) in enumerate(ornt.astype(int)):
            spacing[ax] = float(zooms[a])
            if flip > 0:
                to_scan[a, ax] = 1
            else:
                to_scan[a, ax] = -1
                to_scan[a, 3] = shape[a] - 1
        return cls(ornt.astype(int), tuple(int(n) for n in shape), tuple(spacing), affine @ to_scan)

    @property
    def canonical_shape(self) -> tuple[int, int, int]:
        out = [0, 0, 0]
        for a, (ax, _) in enumerate(self.ornt):
            out[ax] = self.shape[a]
        return tuple(out)

    def to_canonical(self, arr: np.ndarray) -> np.ndarray:
        """A view of ``arr`` (scan order) in canonical order."""
        for a, (_, flip) in enumerate(self.ornt):
            if flip < 0:
                arr = np.flip(arr, axis=a)
        return np.transpose(arr, np.argsort(self.ornt[:, 0]))

    def from_canonical(self, arr: np.ndarray) -> np.ndarray:
        """A view of ``arr`` (canonical order) in scan order."""
        arr = np.transpose(arr, self.ornt[:, 0])
        for a, (_, flip) in enumerate(self.ornt):
            if flip < 0:
                arr = np.flip(arr, axis=a)
        return arr

    def world_x(self, index_xyz: np.ndarray) -> np.ndarray:
        """RAS x (mm; larger = patient's Right) of canonical voxel coordinates (..., 3)."""
        idx = np.asarray(index_xyz, dtype=float)
        return idx @ self.affine[0, :3] + self.affine[0, 3]


def canonical_int16(hu: np.ndarray, canon: Canonical) -> np.ndarray:
    """A C-contiguous int16 copy of ``hu`` in canonical order: air clipped to -1024, padding -1025.

    int16 keeps the copy at 2 bytes a voxel whatever the input dtype (HU fit; values are rounded).
    """
    view = canon.to_canonical(hu)
    out = np.empty(view.shape, dtype=np.int16)
    # slab-wise so a float input never needs a full-size float temporary
    step = max(1, int(4_000_000 // max(1, view.shape[0] * view.shape[1])))
    for z in range(0, view.shape[2], step):
        part = view[:, :, z : z + step]
        if part.dtype.kind == "f":
            part = np.nan_to_num(np.rint(part), nan=-1024.0)
        dst = out[:, :, z : z + step]
        np.clip(part, -1024, 32767, out=dst, casting="unsafe")
        dst[part < PADDING_HU] = PADDING_MARK
    return out


class CoarseGrid:
    """Integer block factors taking a canonical grid to ~``target_mm`` voxels, and the maps between."""

    def __init__(self, shape: tuple[int, int, int], spacing: tuple[float, float, float], target_mm: float = 3.0):
        self.shape = tuple(int(n) for n in shape)
        self.factors = tuple(max(1, min(n, int(round(target_mm / s)))) for n, s in zip(self.shape, spacing))
        self.coarse_shape = tuple(-(-n // f) for n, f in zip(self.shape, self.factors))
        self.spacing = tuple(s * f for s, f in zip(spacing, self.factors))

    def block_mean(self, arr: np.ndarray) -> np.ndarray:
        """float32 block means of a full-resolution array (partial edge blocks average what they hold)."""
        out = arr
        for axis, (n, f) in enumerate(zip(self.shape, self.factors)):
            if f == 1:
                continue
            starts = np.arange(0, n, f)
            out = np.add.reduceat(out, starts, axis=axis, dtype=np.float32)
            counts = np.diff(np.append(starts, n)).astype(np.float32)
            shape = [1, 1, 1]
            shape[axis] = -1
            out /= counts.reshape(shape)
        return np.asarray(out, dtype=np.float32)

    def block_any(self, mask: np.ndarray) -> np.ndarray:
        out = mask
        for axis, (n, f) in enumerate(zip(self.shape, self.factors)):
            if f > 1:
                out = np.logical_or.reduceat(out, np.arange(0, n, f), axis=axis)
        return np.asarray(out, dtype=bool)

    def upsample(self, coarse: np.ndarray) -> np.ndarray:
        """Nearest-neighbour full-resolution copy of a coarse array (a strided view of a padded buffer)."""
        if self.factors == (1, 1, 1):
            return coarse.copy()
        (a, b, c), (fa, fb, fc) = self.coarse_shape, self.factors
        buf = np.empty((a, fa, b, fb, c, fc), dtype=coarse.dtype)
        buf[...] = coarse[:, None, :, None, :, None]
        full = buf.reshape(a * fa, b * fb, c * fc)
        n0, n1, n2 = self.shape
        if full.shape == self.shape:
            return full
        return full[:n0, :n1, :n2]


def ellipsoid(radius_mm: float, spacing, planar: bool = False) -> np.ndarray:
    """A ball (or, ``planar``, an axial disk) of ``radius_mm`` on a grid of ``spacing`` mm."""
    half = [int(np.floor(radius_mm / s)) for s in spacing]
    if planar:
        half[2] = 0
    grids = np.ogrid[tuple(slice(-h, h + 1) for h in half)]
    dist = sum(((g * s) / max(radius_mm, 1e-6)) ** 2 for g, s in zip(grids, spacing))
    se = dist <= 1.0
    se[tuple(h for h in half)] = True
    return se


PLANAR_4 = np.zeros((3, 3, 3), dtype=bool)  # in-plane 4-connectivity (3x3x3: ndimage.label wants it so)
PLANAR_4[:, :, 1] = ndi.generate_binary_structure(2, 1)
PLANAR_8 = np.zeros((3, 3, 3), dtype=bool)
PLANAR_8[:, :, 1] = True


def open_2d_border_labels(mask: np.ndarray) -> tuple[np.ndarray, int, np.ndarray]:
    """Label ``mask`` slice by slice (in-plane 4-connectivity) and flag labels touching the in-plane border."""
    lab, n = ndi.label(mask, structure=PLANAR_4)
    touching = np.zeros(n + 1, dtype=bool)
    for face in (lab[0], lab[-1], lab[:, 0], lab[:, -1]):
        touching[np.unique(face)] = True
    touching[0] = False
    return lab, n, touching


def fill_holes_2d(mask: np.ndarray) -> np.ndarray:
    """Fill holes slice by slice (axial), by labelling the background once (linear, no iteration)."""
    lab, _, touching = open_2d_border_labels(~mask)
    touching[0] = True
    return ~touching[lab] | mask


def planar_distance(mask: np.ndarray, spacing) -> np.ndarray:
    """float32 in-plane distance (mm) from each voxel of ``mask`` to the nearest voxel outside it."""
    out = np.empty(mask.shape, dtype=np.float32)
    for k in range(mask.shape[2]):
        out[:, :, k] = ndi.distance_transform_edt(mask[:, :, k], sampling=spacing[:2])
    return out
