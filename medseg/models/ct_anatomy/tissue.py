"""Bone, subcutaneous/torso fat and skeletal muscle: HU windows placed by coarse anatomy.

HU windows are the usual body-composition ones (Alberta protocol; TotalSegmentator's tissue types are
drawn on the same windows): fat -190..-30 HU, muscle -29..150 HU, bone >= 200 HU.

* Bone: >= 200 HU where the ~3 mm block mean is >= 120 HU (noise specks and thin calcifications
  drop out), plus marrow: axial holes of the coarse bone up to 2500 mm^2 whose mean is red marrow
  (>= 90 HU) or yellow marrow (<= -30 HU); the spinal canal (CSF/cord, 0..90 HU) stays unfilled.
* Torso: per axial slice, the largest body part of >= 250 cm^2 (the rest are limbs or, in a leg or
  head scan, everything). Its muscle wall: blocks above -50 HU, 6 mm below the skin, closed with a
  10 mm disk; the filled wall is the torso cavity. Fat outside it (and all limb fat) is subcutaneous,
  fat inside is torso fat.
* Muscle (muscle HU, not bone): in limbs everything under the skin; in the torso the wall band (within
  20 mm inside the cavity's outline, connected to it through muscle-HU blocks, so organs behind a fat
  plane stay out) and the paraspinal/psoas region (posterior to the vertebral body's centre, within
  60 mm of the midline). Organs touching the wall without a fat plane (liver, spleen, heart) can leak
  into the band: the documented limit of a weights-free method.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi

from medseg.models.ct_anatomy.grid import PLANAR_4, CoarseGrid, ellipsoid, fill_holes_2d, open_2d_border_labels

BONE_HU = 200
FAT_HU = (-190, -30)
MUSCLE_HU = (-29, 150)
TORSO_MIN_CM2 = 250.0
SKIN_MM = 6.0  # skin plus its partial-volume blocks on the ~3 mm grid


@dataclass
class TissueParts:
    bone: np.ndarray  # bool full
    subcutaneous_fat: np.ndarray
    torso_fat: np.ndarray
    muscle: np.ndarray
    has_torso: bool


def segment_bone(hu16: np.ndarray, mean: np.ndarray, grid: CoarseGrid, body_full: np.ndarray, body_c: np.ndarray):
    """Full-resolution bone and the coarse non-marrow holes (spinal canal) it leaves."""
    sp = grid.spacing
    support = ndi.binary_dilation((mean >= 120) & body_c, structure=PLANAR_4)
    core = hu16 >= BONE_HU
    core &= body_full
    core &= grid.upsample(support)
    coarse = grid.block_any(core)
    lab, n, touching = open_2d_border_labels(~coarse)
    enclosed = ~touching
    enclosed[0] = False
    holes = enclosed[lab]
    canal = np.zeros_like(coarse)
    if holes.any():
        idx = np.arange(1, n + 1)
        area = ndi.sum_labels(holes, lab, idx) * sp[0] * sp[1]
        mhu = ndi.mean(mean, lab, idx)
        marrow = enclosed[1:] & (area <= 2500) & ((mhu >= 90) | (mhu <= -30))
        is_marrow = np.concatenate([[False], marrow])
        canal = holes & ~is_marrow[lab]
        marrow_c = is_marrow[lab]
        if marrow_c.any():
            m = grid.upsample(marrow_c)
            m &= body_full
            m &= hu16 > -150
            core |= m
    return core, canal


def _torso(body_c: np.ndarray, sp) -> np.ndarray:
    lab, n = ndi.label(body_c, structure=PLANAR_4)
    torso = np.zeros_like(body_c)
    if n == 0:
        return torso
    sizes = np.bincount(lab.ravel())
    sizes[0] = 0
    min_vox = TORSO_MIN_CM2 * 100.0 / (sp[0] * sp[1])
    objs = ndi.find_objects(lab)
    best = {}
    for i, sl in enumerate(objs, start=1):
        if sl is None or sizes[i] < min_vox:
            continue
        for k in range(sl[2].start, sl[2].stop):
            if sizes[i] > sizes[best.get(k, 0)]:
                best[k] = i
    for k, i in best.items():
        torso[:, :, k] = lab[:, :, k] == i
    return torso


def _spine_region(bone_c: np.ndarray, cavity: np.ndarray, sp) -> np.ndarray:
    """Per slice: cavity posterior to the vertebral body's centre and within 60 mm of the midline."""
    out = np.zeros_like(cavity)
    nx, ny, nz = cavity.shape
    xs = np.arange(nx)
    ys = np.arange(ny)
    for k in range(nz):
        cav = cavity[:, :, k]
        if not cav.any():
            continue
        cols = np.flatnonzero(cav.any(axis=1))
        cx = (cols[0] + cols[-1]) / 2
        strip = np.abs(xs - cx) * sp[0] <= 20
        rows = np.flatnonzero(cav.any(axis=0))
        y_mid = (rows[0] + rows[-1]) / 2
        b = bone_c[strip, :, k]
        by = np.flatnonzero(b.any(axis=0) & (ys <= y_mid))  # posterior half (y grows anteriorly)
        if by.size == 0:
            continue
        y_body = (by[-1] + by[0]) / 2  # between the spinous process and the vertebral body's front
        y_cut = (by[-1] + y_body) / 2
        region = (np.abs(xs - cx)[:, None] * sp[0] <= 60) & (ys[None, :] <= y_cut)
        out[:, :, k] = region & cav
    return out


def segment_tissue(
    hu16: np.ndarray,
    mean: np.ndarray,
    grid: CoarseGrid,
    body_full: np.ndarray,
    body_c: np.ndarray,
    lungs_c: np.ndarray,
) -> TissueParts:
    sp = grid.spacing
    bone, canal = segment_bone(hu16, mean, grid, body_full, body_c)
    bone_c = grid.block_any(bone)

    torso = _torso(body_c, sp)
    has_torso = bool(torso.any())
    under_skin = ndi.binary_erosion(body_c, structure=ellipsoid(SKIN_MM, sp, planar=True), border_value=0)
    wall = torso & under_skin & ((mean > -50) | bone_c) & ~lungs_c
    closed = ndi.binary_closing(wall, structure=ellipsoid(10.0, sp, planar=True), border_value=0)
    cavity = fill_holes_2d(closed | lungs_c) & torso

    # muscle regions on the coarse grid
    muscle_c = (mean >= -40) & (mean <= 170)
    dist_in = np.zeros(cavity.shape, dtype=np.float32)
    for k in np.flatnonzero(cavity.any(axis=(0, 1))):
        dist_in[:, :, k] = ndi.distance_transform_edt(cavity[:, :, k], sampling=sp[:2])
    band = cavity & (dist_in <= 20.0)
    cand = band & (muscle_c | bone_c)
    lab, n = ndi.label(cand, structure=PLANAR_4)
    region = np.zeros_like(cavity)
    if n:
        rim = cavity & (dist_in <= max(sp[0], sp[1]) * 1.5)
        ids = np.unique(lab[rim & cand])
        hit = np.zeros(n + 1, dtype=bool)
        hit[ids] = True
        hit[0] = False
        region = hit[lab]
    region |= _spine_region(bone_c, cavity, sp)
    limbs = body_c & ~torso & ndi.binary_erosion(body_c, structure=ellipsoid(3.0, sp, planar=True), border_value=1)
    region |= limbs
    region &= ~canal
    region &= ~lungs_c

    fat = (hu16 >= FAT_HU[0]) & (hu16 <= FAT_HU[1])
    fat &= body_full
    fat &= ~bone
    cav_full = grid.upsample(cavity)
    torso_fat = fat & cav_full
    sat = fat & ~cav_full
    del cav_full
    muscle = (hu16 >= MUSCLE_HU[0]) & (hu16 <= MUSCLE_HU[1])
    muscle &= body_full
    muscle &= ~bone
    muscle &= grid.upsample(region)
    return TissueParts(bone, sat, torso_fat, muscle, has_torso)
