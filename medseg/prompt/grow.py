"""Click-to-segment without weights: seeded region growing in a region around the prompts.

The method, on a work grid cut out of the image around the prompts (averaged in blocks, or
subsampled for very large regions, so that a pass works on at most ``MAX_WORK_VOXELS``):

1. **Intensity model from the seeds.** The median and spread of the (lightly smoothed) image in a
   few-millimetre neighbourhood of the positive clicks.
2. **Tolerance from the region's own growth curve.** The seed-connected region of
   ``|I - median| <= t`` (eroded by one voxel, so creeping along a thin partial-volume shell does
   not count) is measured for t growing geometrically. Inside a structure it grows slowly; when t
   reaches the contrast to a touching neighbour the region jumps (a leak). The tolerance is set
   halfway to that jump, the partial-volume midpoint. An opening of one work voxel then cuts thin
   bridges.
3. **Negative clicks.** One on another tissue (its neighbourhood outside the seeds' spread) claims
   what is nearer its intensity than the seeds', connected to it, and, if it was in the region,
   caps the range halfway between the two. One on the structure's own intensities splits the
   region by shape: positive and negative seeds flood it from their markers (a compact watershed
   on the negated distance to the region's edge, in mm), so the parts meet at the narrowest neck.
4. **Edge and clean-up.** The edge moves to the steepest intensity change within two work voxels
   (a watershed on the gradient magnitude between the eroded mask and what lies beyond its
   dilation: a symmetric tolerance stops short towards a much darker or brighter neighbour),
   in-plane and 3D holes are filled (vessels inside lungs), what the negative clicks claimed stays
   out, and only the components at the positive clicks are kept.
5. **Growing the region.** If the mask touches the side of the region (and that side is not the
   image's edge or the box), that side moves out and it runs again. On a coarse work grid, the
   voxels of the mask's outer blocks are decided by the smoothed intensity interpolated there.

Everything is in physical millimetres (spacing from the affine), so anisotropic and oblique grids
behave alike. :class:`PromptSegmenter` keeps the image and its last work regions, so a viewer can
re-segment on every click cheaply; :func:`segment_from_prompts` is the one-shot form.

Example:
    >>> from medseg.phantom import make_phantom
    >>> image, labels = make_phantom(3)
    >>> mask = segment_from_prompts(image, positive=[(60, 70, 30)])  # doctest: +SKIP
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi

from medseg.prompt.prompts import Box, PromptError, Prompts, check_prompts, clip_box
from medseg.volume import Volume

#: work grids hold at most about this many voxels; larger regions are averaged in blocks
MAX_WORK_VOXELS = 1_000_000
#: regions with more voxels than this are subsampled at block centres instead of block-averaged
#: (averaging reads every voxel: 1 s for a 384x512x300 region on the 2-core VM)
MAX_AVERAGED_VOXELS = 8_000_000
#: the threshold-selection curve is measured on at most this many voxels (a strided view)
MAX_CURVE_VOXELS = 400_000
#: a region that grows by more than this factor in one tolerance step has leaked
LEAK_RATIO = 1.3
#: tolerance steps (geometric)
STEP = 1.25
#: how much the split between positive and negative clicks follows the distance to the clicks rather
#: than the narrowest neck (skimage's compact watershed; 0 = necks only, which starves a click that
#: is not at the deepest point of its part)
SPLIT_COMPACTNESS = 0.5
#: CT values below this, in the air connected to the image's edge, are "outside the body"
AIR_HU = -900.0


@dataclass(frozen=True)
class Region:
    """A box of the image (``lo`` inclusive, ``hi`` exclusive) and the work grid's block size ``step``."""

    lo: tuple[int, int, int]
    hi: tuple[int, int, int]
    step: tuple[int, int, int]

    @property
    def slices(self) -> tuple[slice, slice, slice]:
        return tuple(slice(a, b) for a, b in zip(self.lo, self.hi))  # type: ignore[return-value]

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(b - a for a, b in zip(self.lo, self.hi))  # type: ignore[return-value]

    def to_work(self, voxel: Sequence[int]) -> tuple[int, int, int]:
        return tuple((int(v) - lo) // s for v, lo, s in zip(voxel, self.lo, self.step))  # type: ignore[return-value]


@dataclass
class WorkRegion:
    """The image cut to a :class:`Region`, on its work grid: block-mean and smoothed intensities."""

    region: Region
    image: np.ndarray  # float32, block means
    smooth: np.ndarray  # float32, Gaussian-smoothed ``image``
    spacing: np.ndarray  # mm per work voxel
    centre: np.ndarray  # where in its block (full-grid voxels from the block's first) a work voxel sits
    _gradient: np.ndarray | None = None

    @property
    def gradient(self) -> np.ndarray:
        """Gaussian gradient magnitude of ``image`` (computed once per region, on first use)."""
        if self._gradient is None:
            sigma = np.clip(0.7 * self.spacing.min() / self.spacing, 0.35, 1.0)
            self._gradient = ndi.gaussian_gradient_magnitude(self.image, sigma)
        return self._gradient


@dataclass
class PromptResult:
    """The mask (on the image's grid) and what was decided on the way, for viewers and benchmarks."""

    mask: np.ndarray
    region: Region
    low: float
    high: float
    grown: int  # how many times the region was enlarged


def _block_mean(a: np.ndarray, step: tuple[int, int, int]) -> np.ndarray:
    if step == (1, 1, 1):
        return a.astype(np.float32, copy=True)
    pad = [(0, (-n) % s) for n, s in zip(a.shape, step)]
    if any(p for _, p in pad):
        a = np.pad(a, pad, mode="edge")
    n = [m // s for m, s in zip(a.shape, step)]
    b = a.reshape(n[0], step[0], n[1], step[1], n[2], step[2]).astype(np.float32)
    return b.mean(axis=(1, 3, 5), dtype=np.float32)


def _ball(radius_vox: np.ndarray) -> np.ndarray:
    """An ellipsoidal structuring element with these radii in voxels (at least a 3x3x3 cross)."""
    r = np.maximum(np.asarray(radius_vox, float), 1.0)
    n = np.floor(r).astype(int)
    g = np.ogrid[tuple(slice(-k, k + 1) for k in n)]
    return sum((x / rr) ** 2 for x, rr in zip(g, r)) <= 1.0 + 1e-6


def _seed_components(mask: np.ndarray, seeds: Sequence[tuple[int, int, int]]) -> np.ndarray:
    """The connected components (26-connectivity) of ``mask`` that hold a seed."""
    lab, _ = ndi.label(mask, structure=np.ones((3, 3, 3), bool))
    ids = {int(lab[s]) for s in seeds} - {0}
    if not ids:
        return np.zeros_like(mask, dtype=bool)
    if len(ids) == 1:
        return lab == ids.pop()
    return np.isin(lab, list(ids))


def _slice_axis(affine: np.ndarray) -> int:
    """The array axis closest to superior-inferior (the axial slice normal)."""
    directions = affine[:3, :3] / np.linalg.norm(affine[:3, :3], axis=0)
    return int(np.argmax(np.abs(directions[2])))


class PromptSegmenter:
    """Segment the structure at positive clicks of one image; reuses work between calls.

    Args:
        volume: a 3D image (CT in HU, or any other scan).
        margin_mm: how far around the prompts the first work region reaches.
        max_work_voxels: work grids larger than this are averaged in blocks.

    Example:
        >>> seg = PromptSegmenter(image)  # doctest: +SKIP
        >>> mask = seg.segment(Prompts.of([(60, 70, 30)]))  # doctest: +SKIP
        >>> mask = seg.segment(Prompts.of([(60, 70, 30)], negative=[(80, 70, 30)]))  # doctest: +SKIP
    """

    def __init__(self, volume: Volume, margin_mm: float = 40.0, max_work_voxels: int = MAX_WORK_VOXELS) -> None:
        if volume.array.ndim != 3:
            raise PromptError(f"prompt segmentation needs a 3D image, got shape {volume.array.shape}")
        if not (margin_mm > 0):
            raise ValueError(f"margin_mm must be positive, got {margin_mm}")
        self.volume = volume
        self.array = volume.array
        self.spacing = np.asarray(volume.spacing, float)
        self.margin_mm = float(margin_mm)
        self.max_work_voxels = int(max_work_voxels)
        self._work: OrderedDict[Region, WorkRegion] = OrderedDict()
        self._is_ct: bool | None = None
        self._outside_air: tuple[np.ndarray, tuple[int, int, int]] | None = None
        self._axial = _slice_axis(volume.affine)
        self._last_region: tuple[np.ndarray, np.ndarray] | None = None
        self._last_positive: set[tuple[int, int, int]] = set()

    # -- public ------------------------------------------------------------------------------------
    def segment(self, prompts: Prompts, labels: np.ndarray | None = None) -> np.ndarray:
        """The boolean mask (the image's shape) of the structure at ``prompts.positive``."""
        return self.run(prompts, labels).mask

    def run(self, prompts: Prompts, labels: np.ndarray | None = None) -> PromptResult:
        """As :meth:`segment`, with the work region and intensity range that were used.

        With ``labels`` (a label map on the image's grid, e.g. a model's output), each positive click
        takes the connected component of the label under it and negative clicks remove theirs.
        """
        check_prompts(self.volume, prompts)
        if labels is not None:
            return self._from_labels(prompts, labels)
        self._check_not_air(prompts)
        shape = self.volume.shape
        box = clip_box(prompts.box, shape) if prompts.box is not None else None
        points = np.array(prompts.positive, float)
        margin = np.full(3, self.margin_mm) / self.spacing  # in voxels, per axis
        lo = np.floor(points.min(axis=0) - margin).astype(int)
        hi = np.ceil(points.max(axis=0) + margin).astype(int) + 1
        limit_lo = np.zeros(3, int) if box is None else np.array(box.lo)
        limit_hi = np.array(shape) if box is None else np.array(box.hi) + 1
        if box is not None:  # the box is the region (and the limit)
            lo, hi = limit_lo.copy(), limit_hi.copy()
        lo, hi = np.maximum(lo, limit_lo), np.minimum(hi, limit_hi)
        grown = 0
        last = self._last_region
        same_structure = bool(set(prompts.positive) & self._last_positive)  # a refinement: clicks kept
        # the region is found at an eighth of the work voxels (a structure larger than the first region
        # enlarges it up to 4 times), then segmented once at full resolution; a refinement of the last
        # structure starts at full resolution in its known region
        fine = False
        if same_structure and last is not None and np.all(lo >= last[0]) and np.all(hi <= last[1]):
            lo, hi = np.maximum(last[0], limit_lo), np.minimum(last[1], limit_hi)  # the structure's region
            fine = True
        while True:
            region = self._region(lo, hi, self.max_work_voxels if fine else max(1, self.max_work_voxels // 8))
            mask_work, low, high = self._segment_work(self._work_region(region), prompts)
            touch_lo, touch_hi = _touching(mask_work)
            can_lo = touch_lo & (lo > limit_lo)
            can_hi = touch_hi & (hi < limit_hi)
            if grown >= 4 or not (can_lo.any() or can_hi.any()):
                if fine:
                    break
                fine = True
                continue
            grown += 1
            grow = np.ceil(margin * 2**grown).astype(int)
            lo = np.where(can_lo, np.maximum(lo - grow, limit_lo), lo)
            hi = np.where(can_hi, np.minimum(hi + grow, limit_hi), hi)
        self._last_region = (lo.copy(), hi.copy())
        self._last_positive = set(prompts.positive)
        mask = np.zeros(shape, bool)
        mask[region.slices] = _to_full(mask_work, self._work_region(region), low, high)
        return PromptResult(mask, region, low, high, grown)

    # -- regions -----------------------------------------------------------------------------------
    def _region(self, lo: np.ndarray, hi: np.ndarray, max_voxels: int) -> Region:
        size = (hi - lo).astype(float)
        mm3 = float(np.prod(size * self.spacing))
        target = max(float(self.spacing.min()), (mm3 / max_voxels) ** (1 / 3))
        step = np.maximum(1, np.floor(target / self.spacing + 0.5)).astype(int)
        while np.prod(np.ceil(size / step)) > max_voxels * 1.5:
            step[np.argmin(step * self.spacing)] += 1
        return Region(tuple(int(v) for v in lo), tuple(int(v) for v in hi), tuple(int(v) for v in step))

    def _work_region(self, region: Region) -> WorkRegion:
        if region in self._work:
            self._work.move_to_end(region)
            return self._work[region]
        if np.prod(region.shape) > MAX_AVERAGED_VOXELS:
            cut = tuple(slice(lo + s // 2, hi, s) for lo, hi, s in zip(region.lo, region.hi, region.step))
            image = self.array[cut].astype(np.float32)
            pad = [(0, -(-n // s) - m) for n, s, m in zip(region.shape, region.step, image.shape)]
            if any(p for _, p in pad):
                image = np.pad(image, pad, mode="edge")
            centre = np.array(region.step) // 2
        else:
            image = _block_mean(self.array[region.slices], region.step)
            centre = (np.array(region.step) - 1) / 2.0
        spacing = self.spacing * np.array(region.step)
        sigma = np.clip(0.8 * spacing.min() / spacing, 0.35, 1.0)
        smooth = ndi.gaussian_filter(image, sigma, truncate=3.0)
        work = WorkRegion(region, image, smooth, spacing, centre)
        self._work[region] = work
        while len(self._work) > 3:
            self._work.popitem(last=False)
        return work

    # -- the method --------------------------------------------------------------------------------
    def _neighbourhood(self, work: WorkRegion, voxel: tuple[int, int, int], radius_mm: float = 4.0) -> np.ndarray:
        r = np.maximum(1, np.ceil(radius_mm / work.spacing)).astype(int)
        cut = tuple(slice(max(0, c - k), c + k + 1) for c, k in zip(voxel, r))
        return work.smooth[cut].ravel()

    def _segment_work(self, work: WorkRegion, prompts: Prompts) -> tuple[np.ndarray, float, float]:
        region = work.region
        shape = work.smooth.shape
        pos = [_clip(region.to_work(p), shape) for p in prompts.positive]
        neg = [_clip(region.to_work(p), shape) for p in prompts.negative if _inside(region, p)]
        values = np.concatenate([self._neighbourhood(work, p) for p in pos])
        mu = float(np.median(values))
        spread = float(1.4826 * np.median(np.abs(values - mu)))
        span = float(work.smooth.max() - work.smooth.min())
        t0 = max(3.0 * spread, 1e-3 * span, 1e-6)
        cost = np.abs(work.smooth - mu)
        t = _tolerance(cost, pos, t0, span)
        mask = self._grow(cost, t, pos)
        low_cap, high_cap = -np.inf, np.inf
        away = np.zeros(shape, bool)  # what the negative clicks claim
        same = []  # negative clicks on the structure's own intensities: split by shape instead
        for p in neg:
            mu_n = float(np.median(self._neighbourhood(work, p)))
            if abs(mu_n - mu) <= t0:  # within the seeds' own spread: the same tissue, split by shape
                same.append(p)
                continue
            # another tissue: what is nearer its intensity than ours, connected to the click, stays out
            # (also where filling holes would take it in: a liver dome inside the lung's outline)
            away |= _seed_components(np.abs(work.smooth - mu_n) < abs(mu - mu_n) / 2, [p])
            if mask[p]:  # and the range stops halfway to it
                if mu_n > mu:
                    high_cap = min(high_cap, (mu + mu_n) / 2)
                else:
                    low_cap = max(low_cap, (mu + mu_n) / 2)
        if np.isfinite(low_cap) or np.isfinite(high_cap):
            cost[(work.smooth > high_cap) | (work.smooth < low_cap)] = np.inf
            t = _tolerance(cost, pos, t0, span)
            mask = self._grow(cost, t, pos)
        low, high = max(mu - t, low_cap), min(mu + t, high_cap)
        if away.any():
            mask = _seed_components(mask & ~away, pos)
        if same:
            mask, taken = _split(self._clean(mask, pos) & ~away, pos, same, work.spacing)
            away |= taken
        refined = _seed_components(_refine(mask, away, neg, work), pos)
        if refined.sum() >= 0.5 * mask.sum():  # the edge may move, not the structure go
            mask = refined
        mask = self._clean(mask, pos)
        if neg:  # what the negative clicks took stays out, also where filling holes put it back
            mask &= ~away
            for p in neg:
                mask[p] = False
            mask = _seed_components(mask, pos)
        return mask, low, high

    def _grow(self, cost: np.ndarray, t: float, pos: list) -> np.ndarray:
        """Seed components of ``cost <= t``, with bridges thinner than about two work voxels cut."""
        inside = cost <= t
        for p in pos:  # a click on a thin or noisy spot still seeds
            inside[p] = True
        mask = _seed_components(inside, pos)
        ball = _ball(np.full(3, 1.0))
        eroded = ndi.binary_erosion(mask, ball)
        core = _seed_components(eroded, pos)
        if core.any() and core.sum() >= 0.3 * eroded.sum():
            mask = ndi.binary_dilation(core, ball) & mask
        return mask

    def _clean(self, mask: np.ndarray, pos: list) -> np.ndarray:
        plane = np.zeros((3, 3, 3), bool)  # the 2D cross in the axial plane
        plane[1, 1, 1] = True
        for axis in {0, 1, 2} - {self._axial}:
            for end in (0, 2):
                index = [1, 1, 1]
                index[axis] = end
                plane[tuple(index)] = True
        mask = ndi.binary_fill_holes(mask, structure=plane)  # in-plane holes (vessels in lungs)
        mask = ndi.binary_fill_holes(mask)
        for p in pos:
            mask[p] = True
        return _seed_components(mask, pos)

    # -- other sources -----------------------------------------------------------------------------
    def _from_labels(self, prompts: Prompts, labels: np.ndarray) -> PromptResult:
        labels = np.asarray(labels)
        if tuple(labels.shape) != self.volume.shape:
            raise PromptError(f"the label map's shape {labels.shape} is not the image's {self.volume.shape}")
        mask = np.zeros(labels.shape, bool)
        for p in prompts.positive:
            value = labels[p]
            if value == 0:
                raise PromptError(f"no label under the positive prompt at voxel {','.join(map(str, p))}")
            mask |= _seed_components(labels == value, [p])
        for p in prompts.negative:
            if mask[p]:
                raise PromptError(
                    f"negative prompt at voxel {','.join(map(str, p))} is in the same label component as a "
                    "positive one; without --from-labels the region is grown and split instead"
                )
        full = Region((0, 0, 0), self.volume.shape, (1, 1, 1))  # type: ignore[arg-type]
        return PromptResult(mask, full, float("nan"), float("nan"), 0)

    def _ct(self) -> bool:
        if self._is_ct is None:
            from medseg.inference.modality import look_at

            self._is_ct = bool(look_at(self.volume).hu)
        return self._is_ct

    def _check_not_air(self, prompts: Prompts) -> None:
        """On CT, a positive click in the air around the patient (not in lungs or bowel gas) is refused."""
        for p in prompts.positive:
            cut = tuple(slice(max(0, c - 1), c + 2) for c in p)
            if float(np.median(self.array[cut])) >= AIR_HU or not self._ct():
                continue
            outside, step = self._outside()
            q = tuple(min(c // s, n - 1) for c, s, n in zip(p, step, outside.shape))
            if outside[q]:
                raise PromptError(
                    f"positive prompt at voxel {','.join(map(str, p))} is in the air outside the body "
                    f"({float(self.array[p]):.0f} HU); click inside the structure"
                )

    def _outside(self) -> tuple[np.ndarray, tuple[int, int, int]]:
        """Air around the patient, on a strided grid of at most ~1M voxels: what is neither above
        -500 HU nor enclosed by it in an axial, coronal or sagittal plane (lungs, airways and bowel
        gas are enclosed in at least one, also where the scan's edge cuts the body)."""
        if self._outside_air is None:
            n = max(1, int(np.ceil((np.prod(self.volume.shape) / 1e6) ** (1 / 3))))
            body = self.array[::n, ::n, ::n] >= -500
            inside = body.copy()
            for axis in range(3):
                plane = np.zeros((3, 3, 3), bool)
                plane[1, 1, 1] = True
                for other in {0, 1, 2} - {axis}:
                    for end in (0, 2):
                        index = [1, 1, 1]
                        index[other] = end
                        plane[tuple(index)] = True
                inside |= ndi.binary_fill_holes(body, structure=plane)
            self._outside_air = (~inside, (n, n, n))
        return self._outside_air


def _tolerance(cost: np.ndarray, seeds: list, t0: float, span: float) -> float:
    """The tolerance halfway to the first leak of the seeds' region (see the module docstring).

    The region is measured after an erosion of one voxel, so that creeping along the thin
    partial-volume shell of a much brighter or darker neighbour (the aorta along the spine) does
    not count as a leak; the opening in :meth:`PromptSegmenter._grow` cuts such shells."""
    stride = max(1, int(np.ceil((cost.size / MAX_CURVE_VOXELS) ** (1 / 3))))
    small = cost[::stride, ::stride, ::stride].copy()
    seeds_small = [tuple(min(c // stride, n - 1) for c, n in zip(p, small.shape)) for p in seeds]
    for p in seeds_small:
        small[p] = 0.0
    # eroding {cost <= t} by a ball == thresholding the ball's maximum filter of cost at t
    eroded = ndi.maximum_filter(small, footprint=_ball(np.full(3, 1.0)), mode="nearest")
    previous = None
    filled = False
    t = t0
    last_t = t0
    while t <= span * 1.01:
        volume = int(_seed_components(eroded <= t, seeds_small).sum())
        if volume == 0:  # the seeds' region is still thinner than the erosion: nothing to measure yet
            last_t = t
            t *= STEP
            continue
        if previous is not None:
            ratio = volume / max(previous, 1)
            if filled and ratio > LEAK_RATIO:
                return max(t0, 0.5 * np.sqrt(last_t * t))
            if ratio < 1.15:
                filled = True
        previous, last_t = volume, t
        t *= STEP
    return last_t


def _split(mask: np.ndarray, pos: list, neg: list, spacing: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Positive against negative seeds inside ``mask``: watershed on the negated distance to its edge.

    Returns the positive part and the part the negative seeds took."""
    from skimage.segmentation import watershed

    if not any(mask[p] for p in neg):
        return mask, np.zeros_like(mask)
    markers = np.zeros(mask.shape, np.int32)
    for p in neg:
        markers[p] = 2
    for p in pos:
        markers[p] = 1
    distance = ndi.distance_transform_edt(mask, sampling=spacing)
    basins = watershed(-distance, markers, mask=mask, compactness=SPLIT_COMPACTNESS)
    return basins == 1, basins == 2


def _refine(mask: np.ndarray, away: np.ndarray, neg: list, work: WorkRegion) -> np.ndarray:
    """Move the edge to the steepest intensity change within two work voxels of it (watershed on the
    gradient magnitude between the eroded mask and everything beyond its dilation): a symmetric
    intensity tolerance cuts the partial-volume edge short towards a far darker or brighter neighbour."""
    from skimage.segmentation import watershed

    if not mask.any():
        return mask
    ball = _ball(np.full(3, 1.0))
    inner = ndi.binary_erosion(mask, ball)
    if inner.sum() < 0.3 * mask.sum():
        return mask
    outer = ndi.binary_dilation(mask, ball, iterations=2)
    lo = np.maximum(np.argwhere(outer).min(axis=0) - 2, 0)
    hi = np.argwhere(outer).max(axis=0) + 3
    cut = tuple(slice(a, b) for a, b in zip(lo, hi))
    inner, outer, away = inner[cut], outer[cut], away[cut]
    beyond = (ndi.binary_dilation(outer, ball) & ~outer) | away
    markers = np.zeros(inner.shape, np.int32)
    markers[beyond] = 2
    markers[inner] = 1
    for p in neg:
        if all(a <= v < b for v, a, b in zip(p, lo, hi)):
            markers[tuple(v - a for v, a in zip(p, lo))] = 2
    band = (outer & ~ndi.binary_erosion(inner, ball)) | (markers > 0) & ~ndi.binary_erosion(inner, ball)
    refined = mask.copy()
    refined[cut] = inner | (watershed(work.gradient[cut], markers, mask=band) == 1)
    return refined


def _to_full(mask_work: np.ndarray, work: WorkRegion, low: float, high: float) -> np.ndarray:
    """The work mask on the region's full grid: each work voxel fills its block; in the blocks of the
    mask's outer layer, a voxel stays in where the smoothed intensity interpolated there is in range."""
    region = work.region
    if region.step == (1, 1, 1):
        return mask_work
    step, shape = region.step, region.shape
    full = mask_work
    for axis in (2, 1, 0):
        full = np.repeat(full, step[axis], axis=axis) if step[axis] > 1 else full
    full = full[: shape[0], : shape[1], : shape[2]]
    edge = np.nonzero(mask_work & ~ndi.binary_erosion(mask_work))
    offsets = np.indices(step, dtype=np.int32).reshape(3, -1)
    index = [(edge[a].astype(np.int32)[:, None] * step[a] + offsets[a][None, :]).ravel() for a in range(3)]
    if any(n % s for n, s in zip(shape, step)):
        inside = (index[0] < shape[0]) & (index[1] < shape[1]) & (index[2] < shape[2])
        index = [i[inside] for i in index]
    coords = np.empty((3, index[0].size), np.float32)
    for a in range(3):
        np.subtract(index[a], work.centre[a], out=coords[a])
        coords[a] /= step[a]
    index = tuple(index)
    values = ndi.map_coordinates(work.smooth, coords, order=1, mode="nearest")
    full[index] = (values >= low) & (values <= high)
    return full


def _touching(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    lo = np.array([mask.take(0, axis=a).any() for a in range(3)])
    hi = np.array([mask.take(-1, axis=a).any() for a in range(3)])
    return lo, hi


def _clip(voxel: tuple[int, int, int], shape: tuple[int, ...]) -> tuple[int, int, int]:
    return tuple(min(max(v, 0), n - 1) for v, n in zip(voxel, shape))  # type: ignore[return-value]


def _inside(region: Region, voxel: Sequence[int]) -> bool:
    return all(lo <= v < hi for v, lo, hi in zip(voxel, region.lo, region.hi))


def segment_from_prompts(
    volume: Volume,
    positive: Sequence[Sequence[int]],
    negative: Sequence[Sequence[int]] = (),
    box: Box | Sequence[int] | None = None,
    labels: np.ndarray | None = None,
    margin_mm: float = 40.0,
) -> np.ndarray:
    """The boolean mask, on ``volume``'s grid, of the structure at the positive clicks (voxel indices).

    Args:
        volume: the image.
        positive: clicks inside the structure, array indices ``(i, j, k)``.
        negative: clicks on what must stay out (a touching structure, a leak).
        box: inclusive corners ``(i0, j0, k0, i1, j1, k1)`` or a :class:`Box`; the mask stays inside it.
        labels: a label map on the same grid: take the label components under the clicks instead.
        margin_mm: reach of the first work region around the clicks.

    Raises:
        PromptError: a click outside the image, a zero-size box, a negative click on a positive one,
            a positive click in the air around the patient (CT).
    """
    prompts = Prompts.of(positive, negative, box)
    return PromptSegmenter(volume, margin_mm=margin_mm).segment(prompts, labels)
