"""The patient (body) mask of a CT in HU: table, cushions, clothing and padding left out, arms kept.

Follows the classical recipe of lungmask's and CIP's preprocessing (threshold at -500 HU, keep the
patient's connected components, fill the air inside), with the decisions taken on a ~3 mm grid:

1. block-mean HU on the coarse grid (padding clipped to -1024 first, so it reads as air);
2. tissue = mean > -500 HU; an axial opening of 6 mm radius cuts thin bridges (table shells, blankets,
   ECG leads) from the patient (tissue at the image edge is taken to continue beyond it, so a chest wall
   thinned by the FOV cut is not opened away);
3. 3D components: the largest is the patient; others stay when they hold >= 1 % of its volume and are
   thick (an in-plane disk of 12 mm radius fits: arms, legs) - table and arm rests are thin plates;
4. the opened-away margin is given back (tissue within the opening radius of what was kept);
5. air inside the patient is filled slice by slice (lungs, bowel gas, trachea). Air touching the
   image border is outside, unless it reads as lung (most blocks above -950 HU): a crop that cuts
   the lung keeps the lung in the body;
6. refinement: the coarse interior is body; in a one-block band around the coarse outline the
   full-resolution threshold (> -500 HU) draws the skin.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi

from medseg.models.ct_anatomy.grid import (
    PADDING_MARK,
    PLANAR_4,
    Canonical,
    CoarseGrid,
    canonical_int16,
    ellipsoid,
    open_2d_border_labels,
    planar_distance,
)

TISSUE_HU = -500  # half-way between air (-1000) and soft tissue (0): the skin surface
AIR_HU = -950  # coarse blocks below this are air with no parenchyma in them
OPENING_MM = 6.0
LIMB_RADIUS_MM = 12.0
MIN_PART_FRACTION = 0.01


@dataclass
class BodyParts:
    """The body on the canonical grid: full resolution and coarse, plus what the FOV did to it."""

    full: np.ndarray  # bool, canonical full resolution
    coarse: np.ndarray  # bool, coarse grid, air inside filled
    coarse_tissue: np.ndarray  # bool, coarse grid, tissue only (air inside not filled)
    cut_by_fov: bool


def coarse_padding(hu16: np.ndarray, grid: CoarseGrid) -> np.ndarray | None:
    """Coarse blocks holding reconstruction padding (marked by :func:`canonical_int16`), or None."""
    pad = hu16 == PADDING_MARK
    if not pad.any():
        return None
    return grid.block_any(pad)


def body_parts(hu16: np.ndarray, grid: CoarseGrid, mean: np.ndarray, padding: np.ndarray | None) -> BodyParts:
    """The body from the canonical int16 HU (``hu16``) and its coarse block means (``mean``)."""
    sp = grid.spacing
    tissue = mean > TISSUE_HU
    if not tissue.any():
        empty = np.zeros(grid.coarse_shape, dtype=bool)
        return BodyParts(np.zeros(grid.shape, dtype=bool), empty, empty, False)

    disk = ellipsoid(OPENING_MM, sp, planar=True)
    # tissue at the image edge continues beyond it (a FOV that cuts the chest wall): replicate the edge
    # so the opening does not cut a thin, truncated wall and open the lung to the outside air
    r = int(np.ceil(OPENING_MM / min(sp[:2]))) + 1
    padded = np.pad(tissue, ((r, r), (r, r), (0, 0)), mode="edge")
    opened = np.ascontiguousarray(ndi.binary_opening(padded, structure=disk)[r:-r, r:-r])
    del padded
    if not opened.any():  # everything thinner than the opening: keep the tissue as it is
        opened = tissue
    lab, n = ndi.label(opened)
    sizes = np.bincount(lab.ravel(), minlength=n + 1)
    sizes[0] = 0
    radius = ndi.maximum(planar_distance(opened, sp), lab, index=np.arange(1, n + 1))
    radius = np.concatenate([[0.0], np.asarray(radius, dtype=float)])
    biggest = int(np.argmax(sizes))
    keep_ids = (sizes >= MIN_PART_FRACTION * sizes[biggest]) & (radius >= LIMB_RADIUS_MM)
    keep_ids[biggest] = True
    keep_ids[0] = False
    kept = keep_ids[lab]
    margin = ellipsoid(OPENING_MM + max(sp[:2]), sp, planar=True)
    body = tissue & ndi.binary_dilation(kept, structure=margin)

    # air inside, slice by slice; border-touching air is outside unless it reads as lung
    lab2, n2, touching = open_2d_border_labels(~body)
    inside = ~touching
    inside[0] = False
    if touching.any():
        lab_t, _, raw_touching = open_2d_border_labels(~tissue)
        body |= cut_lung(raw_touching[lab_t], mean, sp, padding)
    body |= inside[lab2]

    cut = bool(body[0].any() or body[-1].any() or body[:, 0].any() or body[:, -1].any())
    if padding is not None:
        cut = cut or bool((body & ndi.binary_dilation(padding, structure=PLANAR_4)).any())

    full = refine(body, grid, hu16 > TISSUE_HU)
    if padding is not None:
        full &= hu16 != PADDING_MARK
    return BodyParts(full, body, tissue & body, cut)


def cut_lung(border_air: np.ndarray, mean: np.ndarray, sp, padding: np.ndarray | None) -> np.ndarray:
    """Border-touching air that reads as lung parenchyma: a crop that cuts through the lung.

    Outside air is uniform (few blocks above -950 HU, or a flat, calibrated-off level such as -900);
    lung holds vessels: under 40 % air-only blocks, median above -945 HU and a block spread above 50 HU.
    Air next to reconstruction padding, or reaching opposite image edges, is always outside.
    """
    out = np.zeros_like(border_air)
    lab, n = ndi.label(border_air)
    if n == 0:
        return out
    sizes = np.bincount(lab.ravel())
    interior = ndi.binary_erosion(border_air, structure=PLANAR_4)
    near_padding = None if padding is None else ndi.binary_dilation(padding, structure=PLANAR_4)
    for i in np.flatnonzero(sizes * np.prod(sp) >= 2_000):
        if i == 0:
            continue
        comp = lab == i
        if near_padding is not None and (comp & near_padding).any():
            continue
        # air around a patient reaches opposite image edges; a cut lung, bounded by the mediastinum, does not
        if (comp[0].any() and comp[-1].any()) or (comp[:, 0].any() and comp[:, -1].any()):
            continue
        values = mean[comp & interior]
        if values.size < 8:
            continue
        airy = float(np.mean(mean[comp] < AIR_HU))
        if airy < 0.4 and float(np.median(values)) > -945 and float(values.std()) > 50:
            out |= comp
    return out


def refine(coarse: np.ndarray, grid: CoarseGrid, full_test: np.ndarray) -> np.ndarray:
    """Full-resolution mask: the coarse interior, plus ``full_test`` in a one-block band at its outline."""
    interior = ndi.binary_erosion(coarse, structure=PLANAR_4, border_value=1)
    band = ndi.binary_dilation(coarse, structure=PLANAR_4) & ~interior
    out = grid.upsample(band)
    out &= full_test
    out |= grid.upsample(interior)
    return np.ascontiguousarray(out)


def body_mask(hu: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """The patient mask (bool, same shape and order as ``hu``) of a CT in HU.

    Args:
        hu: 3D array in nibabel index order, Hounsfield units, any int/float dtype.
        affine: 4x4 voxel -> RAS+ mm.

    Example:
        >>> mask = body_mask(volume.array, volume.affine)  # doctest: +SKIP
    """
    hu = np.asarray(hu)
    if hu.ndim != 3:
        raise ValueError(f"body_mask needs a 3D array, got shape {hu.shape}")
    canon = Canonical.from_affine(affine, hu.shape)
    grid = CoarseGrid(canon.canonical_shape, canon.spacing)
    hu16 = canonical_int16(hu, canon)
    padding = coarse_padding(hu16, grid)
    parts = body_parts(hu16, grid, grid.block_mean(hu16), padding)
    return np.ascontiguousarray(canon.from_canonical(parts.full))


def body_region(volume, margin_mm: float | None = None):
    """The body's bounding box in ``volume`` (a CT in HU) with ``margin_mm`` around it (default
    :data:`medseg.inference.crop.CROP_MARGIN_MM`), for ``--crop-to-body``; None if no body is found."""
    from medseg.inference.crop import CROP_MARGIN_MM, mask_region

    array = volume.array if volume.array.ndim == 3 else volume.array[..., 0]
    mask = body_mask(np.asarray(array), volume.affine)
    return mask_region(mask, volume.spacing, CROP_MARGIN_MM if margin_mm is None else margin_mm)
