"""Lungs (left/right) and the central airway (trachea and main bronchi), on the coarse grid then refined.

The recipe follows Hu, Hoffman & Reinhardt (IEEE TMI 2001) and CIP's partial lung label map:

1. air inside the body (block mean < -400 HU) on the ~3 mm grid;
2. the trachea is a vertical tube of round, central air cross-sections (60-800 mm^2, within the middle
   fifth of the body's width), at least 30 mm long (or the whole FOV) when it reaches the top of the
   FOV, else at least 60 mm; the airway grows from it below -900 HU (falling back to -950 on a leak)
   inside the tube's own lumen and, below its end, down to 40 mm and within 50 mm sideways (main
   bronchi; over 40 ml there is a leak and only the trachea is kept); everything further is lung;
3. lung = the largest remaining air component that is not gas: gas (bowel, stomach, outside air) is
   mostly pure air (> 60 % of blocks below -950 HU), parenchyma is not; smaller components join when
   they are lung-like, hold >= 2 % of it and sit above its lower end;
4. left/right: two components are split already; one is eroded (up to 15 mm) until it falls apart
   (the anterior/posterior junction, Hu et al.) and every voxel goes to the nearest seed. Sides come
   from the RAS x of each part (larger x = the patient's Right), never from array order;
5. vessels are filled (per-lung axial hole filling after a 4 mm closing) and the outline refined at
   full resolution (< -400 HU in a one-block band).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage as ndi

from medseg.models.ct_anatomy.body import BodyParts, refine
from medseg.models.ct_anatomy.grid import PLANAR_4, Canonical, CoarseGrid, ellipsoid, fill_holes_2d

LUNG_HU = -400
GAS_HU = -950
TRACHEA_AREA_MM2 = (60.0, 800.0)
TRACHEA_MIN_MM = 30.0
BRONCHI_MM = 40.0
BRONCHI_MAX_ML = 40.0


@dataclass
class LungParts:
    left: np.ndarray  # bool full resolution (canonical)
    right: np.ndarray
    airway: np.ndarray
    coarse_lungs: np.ndarray  # bool coarse, both lungs, vessels filled
    notes: list[str] = field(default_factory=list)


def _trachea_tube(air: np.ndarray, body: np.ndarray, mean: np.ndarray, grid: CoarseGrid) -> np.ndarray | None:
    """The trachea's tube on the coarse grid, or None."""
    sp = grid.spacing
    pix = sp[0] * sp[1]
    core = air & (mean < -600)
    lab, n = ndi.label(core, structure=PLANAR_4)
    if n == 0:
        return None
    idx = np.arange(1, n + 1)
    area = ndi.sum_labels(np.ones_like(core, dtype=np.float32), lab, idx) * pix
    objs = ndi.find_objects(lab)
    # body centre and width per slice
    xs = np.arange(body.shape[0], dtype=np.float32)
    body_cnt = body.sum(axis=(0, 1))
    cx_slice = (body.sum(axis=1) * xs[:, None]).sum(axis=0) / np.maximum(body_cnt, 1)
    width = body.any(axis=1).sum(axis=0) * sp[0]
    keep = np.zeros(n + 1, dtype=bool)
    for i, (sl, a) in enumerate(zip(objs, area), start=1):
        if sl is None or not (TRACHEA_AREA_MM2[0] <= a <= TRACHEA_AREA_MM2[1]):
            continue
        k = sl[2].start
        dx, dy = (sl[0].stop - sl[0].start) * sp[0], (sl[1].stop - sl[1].start) * sp[1]
        if a < 0.45 * dx * dy or max(dx, dy) > 2.5 * min(dx, dy):  # round-ish
            continue
        cx = (sl[0].start + sl[0].stop - 1) / 2
        if abs(cx - cx_slice[k]) * sp[0] > 0.1 * max(width[k], 1.0):
            continue
        keep[i] = True
    tubes = keep[lab]
    lab3, n3 = ndi.label(tubes)
    if n3 == 0:
        return None
    best, best_key = None, (-1, 0.0)
    nz = air.shape[2]
    bone = _vertebrae(mean, body, pix)
    for i, sl in enumerate(ndi.find_objects(lab3), start=1):
        length = (sl[2].stop - sl[2].start) * sp[2]
        if length < min(TRACHEA_MIN_MM, nz * sp[2] - 1e-6):
            continue
        if sl[2].stop != nz and length < 2 * TRACHEA_MIN_MM:  # not reaching the top: must be clearly a tube
            continue
        if not _in_front_of_spine(lab3[sl] == i, bone, sl, sp):  # bowel or stomach gas, not the trachea
            continue
        key = (sl[2].stop, length)  # the trachea is the highest central tube (esophagus, bowel lie lower)
        if key > best_key:
            best, best_key = i, key
    return None if best is None else lab3 == best


def _largest_piece_per_slice(mask: np.ndarray, pix: float, min_area: float, accept=None):
    """Per axial slice, the largest in-plane piece of ``mask`` of at least ``min_area`` mm^2 (that
    ``accept(box)`` allows): ``(labels, {slice: label id}, boxes)``; pieces never cross slices."""
    lab, n = ndi.label(mask, structure=PLANAR_4)
    area = np.bincount(lab.ravel(), minlength=n + 1) * pix
    area[0] = 0.0
    objs = ndi.find_objects(lab)
    best: dict[int, int] = {}
    for i, sl in enumerate(objs, start=1):
        if sl is None or area[i] < min_area or (accept is not None and not accept(sl)):
            continue
        if area[i] > area[best.get(sl[2].start, 0)]:
            best[sl[2].start] = i
    return lab, best, objs


def _vertebrae(mean: np.ndarray, body: np.ndarray, pix: float) -> np.ndarray:
    """Coarse bool: per axial slice the largest bone piece (block mean >= 150 HU, >= 2 cm^2), which is the
    vertebra with its arch; smaller ones (ribs, clavicles, a contrast-filled aorta) are left out."""
    lab, best, objs = _largest_piece_per_slice((mean >= 150) & body, pix, 200.0)
    keep = np.zeros(len(objs) + 1, dtype=bool)
    keep[list(best.values())] = True
    return keep[lab]


def _in_front_of_spine(tube: np.ndarray, bone: np.ndarray, sl, sp) -> bool:
    """The trachea runs just in front of the vertebral column. On the tube's slices where the vertebra
    (the slice's largest bone piece) lies behind it within 30 mm sideways, its nearest block must be
    12 to 50 mm behind the tube's centre (measured 17-44 mm on real chests and a neck) on at least
    half of them. Gas in the stomach or the colon, anterior in the abdomen, lies further forward; air
    in the esophagus, pressed against the vertebra, lies closer. No vertebra under the tube on any of
    its slices: not the trachea.

    ``tube`` is the tube within its bounding box ``sl``; ``bone`` the coarse vertebrae (:func:`_vertebrae`).
    """
    hits, count = 0, 0
    for k in range(tube.shape[2]):
        ii, jj = np.nonzero(tube[:, :, k])
        if ii.size == 0:
            continue
        ci, cj = ii.mean() + sl[0].start, jj.mean() + sl[1].start
        bi, bj = np.nonzero(bone[:, :, sl[2].start + k])
        behind = (cj - bj) * sp[1]  # y grows anteriorly: bone behind has a smaller j
        near = (np.abs(bi - ci) * sp[0] <= 30.0) & (behind > 0)
        if near.any():  # the vertebra is under the tube on this slice (elsewhere: a scapula was larger)
            count += 1
            hits += 12.0 <= float(behind[near].min()) <= 50.0
    return count > 0 and hits >= 0.5 * count


def _grow_airway(tube: np.ndarray, air: np.ndarray, mean: np.ndarray, grid: CoarseGrid) -> np.ndarray:
    def grow(threshold: float) -> np.ndarray:
        lab, _ = ndi.label((mean < threshold) & air | tube)
        ids = np.unique(lab[tube])
        return np.isin(lab, ids[ids > 0])

    tight = grow(GAS_HU)
    loose = grow(-900)
    if loose.sum() > 3 * tight.sum():  # leaked into parenchyma
        loose = tight
    bottom = int(np.flatnonzero(tube.any(axis=(0, 1)))[0])
    sp = grid.spacing
    # along the tube: its own lumen only (no leak into apices or the pharynx's side branches)
    upper = loose & ndi.binary_dilation(tube, structure=ellipsoid(6.0, sp, planar=True))
    upper[:, :, :bottom] = False
    # below it: main bronchi, within 40 mm down and 50 mm sideways of the tube's lowest section
    lower = loose.copy()
    lower[:, :, bottom:] = False
    lower[:, :, : max(0, bottom - int(round(BRONCHI_MM / sp[2])))] = False
    ci, cj = (np.mean(ix) for ix in np.nonzero(tube[:, :, bottom]))
    ii, jj = np.ogrid[: tube.shape[0], : tube.shape[1]]
    lower &= ((((ii - ci) * sp[0]) ** 2 + ((jj - cj) * sp[1]) ** 2) <= 50.0**2)[:, :, None]
    if lower.sum() * np.prod(sp) > BRONCHI_MAX_ML * 1000:  # leaked into parenchyma: trachea only
        lower[:] = False
    return upper | lower


def _split(lungs: np.ndarray, grid: CoarseGrid) -> np.ndarray:
    """int8 seeds 1..k of ``lungs`` (coarse): the two lungs, split by erosion if they touch."""
    lab, n = ndi.label(lungs)
    sizes = np.bincount(lab.ravel())[1:]
    order = np.argsort(sizes)[::-1]
    if n >= 2 and sizes[order[1]] >= 0.15 * sizes[order[0]]:
        seeds = np.zeros(lungs.shape, np.int8)
        seeds[lab == order[0] + 1] = 1
        seeds[lab == order[1] + 1] = 2
        return seeds
    main = lab == order[0] + 1
    step = ndi.generate_binary_structure(3, 1)
    eroded = main
    for _ in range(max(1, int(15.0 / min(grid.spacing[:2])))):
        eroded = ndi.binary_erosion(eroded, structure=PLANAR_4)
        if not eroded.any():
            break
        lab2, n2 = ndi.label(eroded, structure=step)
        if n2 >= 2:
            s2 = np.bincount(lab2.ravel())[1:]
            o2 = np.argsort(s2)[::-1]
            if s2[o2[1]] >= 0.15 * s2[o2[0]]:
                seeds = np.zeros(lungs.shape, np.int8)
                seeds[lab2 == o2[0] + 1] = 1
                seeds[lab2 == o2[1] + 1] = 2
                return seeds
    seeds = np.zeros(lungs.shape, np.int8)
    seeds[main] = 1
    return seeds


def _same_side(a: np.ndarray, b: np.ndarray) -> bool:
    """Two parts of one lung (a crop or fissure split them), not a left and a right lung side by side."""
    xa, xb = np.flatnonzero(a.any(axis=(1, 2))), np.flatnonzero(b.any(axis=(1, 2)))
    overlap = min(xa[-1], xb[-1]) - max(xa[0], xb[0]) + 1
    return overlap > 0.5 * min(xa[-1] - xa[0] + 1, xb[-1] - xb[0] + 1)


def _spine_x(mean: np.ndarray, body: np.ndarray, sp) -> float | None:
    """Canonical x index of the vertebral column: per slice the largest bone blob (>= 4 cm^2) in the
    posterior half of the body, median over slices; None when under a third of the slices hold one."""

    def posterior(sl) -> bool:  # y grows anteriorly
        rows = np.flatnonzero(body[:, :, sl[2].start].any(axis=0))
        return (sl[1].start + sl[1].stop) / 2 <= (rows[0] + rows[-1]) / 2

    _, best, objs = _largest_piece_per_slice((mean >= 200) & body, sp[0] * sp[1], 400.0, posterior)
    slices = int(body.any(axis=(0, 1)).sum())
    if len(best) < max(1, slices // 3):
        return None
    return float(np.median([(objs[i - 1][0].start + objs[i - 1][0].stop - 1) / 2 for i in best.values()]))


def _midline_x(
    body: np.ndarray, mean: np.ndarray, canon: Canonical, grid: CoarseGrid, tube: np.ndarray | None
) -> float:
    """RAS x (mm) of the patient's midline: the trachea if found, else the vertebral column, else the
    body's centre."""
    ci = None
    if tube is not None and tube.any():
        ci = float(np.flatnonzero(tube.any(axis=(1, 2))).mean())
    if ci is None:
        ci = _spine_x(mean, body, grid.spacing)
    if ci is None:
        ci = float(np.flatnonzero(body.any(axis=(1, 2))).mean()) if body.any() else 0.0
    return float(canon.world_x(np.array([(ci + 0.5) * grid.factors[0] - 0.5, 0, 0])))


SMALL_LUNG_ML = 150.0
TOP_MM = 10.0
ANTERIOR_FRACTION = 0.3  # whole lungs: centre behind the front 30 % of the body's depth
BASE_ANTERIOR_FRACTION = 0.4  # small lung (the bases): behind the front 40 %


def _where_lungs_are(
    lab: np.ndarray, objs, volume_ml: np.ndarray, body: np.ndarray, grid: CoarseGrid
) -> tuple[np.ndarray, np.ndarray]:
    """Per air component (labels 1..n), could it be lung by where it lies: ``(front, top)`` bool arrays.

    * ``front``: not in the front of the trunk: its centre lies behind the anterior 30 % of the body's
      depth on its slices, 40 % for a small one (gas in the transverse colon and stomach lies at the
      front; the lowest lung recesses lie at the back, ~60 % of the depth);
    * ``top``: a small one (under 150 ml) reaches the top of the field of view (within 10 mm), as the
      lung bases do at the top of an abdominal scan, while gas pockets lower down are bowel. Asked of
      the main lung only: a small piece beside a big lung is lung wherever it lies.
    """
    sp = grid.spacing
    nz = lab.shape[2]
    front = np.zeros(len(objs), dtype=bool)
    top = np.zeros(len(objs), dtype=bool)
    for n, sl in enumerate(objs):
        if sl is None:
            continue
        small = volume_ml[n] < SMALL_LUNG_ML
        top[n] = not small or (nz - sl[2].stop) * sp[2] <= TOP_MM
        rows = np.flatnonzero(body[:, :, sl[2]].any(axis=(0, 2)))  # body's y extent on these slices
        if rows.size < 2:
            continue
        cj = float(np.nonzero(lab[sl] == n + 1)[1].mean()) + sl[1].start
        from_front = (rows[-1] - cj) / (rows[-1] - rows[0])  # y grows anteriorly
        front[n] = from_front >= (BASE_ANTERIOR_FRACTION if small else ANTERIOR_FRACTION)
    return front, top


def segment_lungs(hu16: np.ndarray, mean: np.ndarray, grid: CoarseGrid, body: BodyParts, canon: Canonical) -> LungParts:
    sp = grid.spacing
    vox_ml = float(np.prod(sp)) / 1000.0
    notes: list[str] = []
    # air inside the body, away from its outline (skin blocks half air are not lung), below the body's
    # own -500 HU threshold so no block is both tissue and air
    inner = ndi.binary_erosion(body.coarse, structure=PLANAR_4, border_value=1)
    air = inner & (mean < -500)

    tube = _trachea_tube(air, body.coarse, mean, grid)
    airway_c = np.zeros_like(air)
    lung_cand = air
    if tube is not None:
        airway_c = _grow_airway(tube, air, mean, grid)
        lung_cand = air & ~ndi.binary_dilation(airway_c, structure=PLANAR_4)

    lab, n = ndi.label(lung_cand)
    lungs = np.zeros_like(air)
    if n:
        idx = np.arange(1, n + 1)
        sizes = ndi.sum_labels(np.ones_like(air, dtype=np.float32), lab, idx)
        gas = ndi.sum_labels(mean < GAS_HU, lab, idx) / np.maximum(sizes, 1)
        objs = ndi.find_objects(lab)
        front, top = _where_lungs_are(lab, objs, sizes * vox_ml, body.coarse, grid)
        lunglike = (gas < 0.6) & (sizes * vox_ml >= 2.0) & front
        if (lunglike & top).any():
            big = int(np.argmax(np.where(lunglike & top, sizes, -1)))
            lo = objs[big][2].start
            keep = lunglike & (sizes >= 0.02 * sizes[big])
            keep &= np.array([sl[2].stop - 1 >= lo for sl in objs])
            if sizes[big] * vox_ml < SMALL_LUNG_ML:  # lung bases only: every piece at the top, too
                keep &= top
            keep[big] = True
            lungs = np.concatenate([[False], keep])[lab]
    airway_c &= ~lungs
    if tube is None:
        notes.append("no trachea in the field of view")

    left = np.zeros(grid.shape, dtype=bool)
    right = np.zeros(grid.shape, dtype=bool)
    airway = np.zeros(grid.shape, dtype=bool)
    if airway_c.any():
        airway = refine(airway_c, grid, hu16 < -600)
    if not lungs.any():
        notes.append("no lungs in the field of view")
        return LungParts(left, right, airway, lungs, notes)

    seeds = _split(lungs, grid)
    ii, jj, kk = ndi.distance_transform_edt(seeds == 0, sampling=sp, return_distances=False, return_indices=True)
    side = seeds[ii, jj, kk]
    side[~lungs] = 0
    del ii, jj, kk
    close = ellipsoid(4.0, sp)
    parts = []
    for s in (1, 2):
        m = side == s
        if m.any():
            m = fill_holes_2d(ndi.binary_closing(m, structure=close, border_value=0) | m) & body.coarse
            parts.append(m)
    # which part is Right: the larger RAS x; one part alone: its side of the midline
    xs = []
    for m in parts:
        c = np.array(ndi.center_of_mass(m)) * np.array(grid.factors) + (np.array(grid.factors) - 1) / 2
        xs.append(float(canon.world_x(c)))
    midline = _midline_x(body.coarse, mean, canon, grid, tube)
    if len(parts) == 2 and (_same_side(parts[0], parts[1]) or (xs[0] - midline) * (xs[1] - midline) > 0):
        # one lung in two pieces (a crop, a fissure, the bases): both on one side of the midline
        parts = [parts[0] | parts[1]]
        xs = [float(canon.world_x(np.array(ndi.center_of_mass(parts[0])) * np.array(grid.factors)))]
    if len(parts) == 2:
        r_idx = int(np.argmax(xs))
        coarse_r, coarse_l = parts[r_idx], parts[1 - r_idx]
        coarse_l = coarse_l & ~coarse_r
    else:
        is_right = xs[0] > midline
        coarse_r = parts[0] if is_right else np.zeros_like(lungs)
        coarse_l = np.zeros_like(lungs) if is_right else parts[0]
        notes.append(f"only the {'right' if is_right else 'left'} lung in the field of view")
    test = hu16 < LUNG_HU
    if coarse_r.any():
        right = refine(coarse_r, grid, test)
    if coarse_l.any():
        left = refine(coarse_l, grid, test)
        left &= ~right
    left &= ~airway
    right &= ~airway
    return LungParts(left, right, airway, coarse_l | coarse_r, notes)
