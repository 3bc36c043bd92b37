"""Window geometry: where MONAI's sliding windows fall, how an image is padded to them, and how
many planes a streaming buffer or a finalisation step holds. The engine runs these windows and the
planner counts them, so both import them from here.
"""

from __future__ import annotations

import numpy as np

#: target size of one finalisation / inversion step's float32 temporaries (planes per step follow)
CHUNK_BYTES = 64 << 20
MAX_CHUNK_PLANES = 16


def chunk_planes(classes: int, plane_voxels: int) -> int:
    """Planes handed on (or inverted) per step: up to 16, fewer when one plane of logits is large."""
    return int(max(1, min(MAX_CHUNK_PLANES, CHUNK_BYTES // max(1, classes * plane_voxels * 4))))


def scan_interval(image_size: tuple[int, ...], roi: tuple[int, ...], overlap: float) -> tuple[int, ...]:
    """MONAI's window step per axis (``_get_scan_interval``)."""
    out = []
    for size, r in zip(image_size, roi):
        out.append(int(r) if r == size else max(int(r * (1 - overlap)), 1))
    return tuple(out)


def window_starts(image_size: tuple[int, ...], roi: tuple[int, ...], overlap: float) -> np.ndarray:
    """``(N, ndim)`` window starts on the padded grid, exactly MONAI's, sorted by the last axis.

    Within one start along the last axis the order stays MONAI's (first axis slowest).
    """
    interval = scan_interval(image_size, roi, overlap)
    from monai.data.utils import dense_patch_slices  # imported on use: nnU-Net runs never load MONAI

    slices = dense_patch_slices(image_size, roi, interval, return_slice=False)
    starts = np.array([[int(a) for a, _ in w] for w in slices], dtype=np.int64).reshape(-1, len(roi))
    order = np.argsort(starts[:, -1], kind="stable")
    return starts[order]


def pad_amounts(shape: tuple[int, ...], roi: tuple[int, ...]) -> list[tuple[int, int]]:
    """Symmetric padding (low, high) per axis up to the roi, as MONAI pads small images."""
    out = []
    for size, r in zip(shape, roi):
        diff = max(int(r) - int(size), 0)
        out.append((diff // 2, diff - diff // 2))
    return out


def buffer_planes(starts: np.ndarray, roi_z: int, batch: int) -> int:
    """Smallest buffer depth that holds any ``batch`` consecutive windows (in slab order)."""
    z = starts[:, -1]
    if len(z) <= batch:
        return int(z.max()) + roi_z - int(z.min())
    return int((z[batch - 1 :] - z[: len(z) - batch + 1]).max()) + roi_z


def vox(shape) -> int:
    """Number of voxels of ``shape``."""
    return int(np.prod([int(s) for s in shape], dtype=np.int64))


def padded_shape(shape: tuple[int, ...], roi: tuple[int, ...]) -> tuple[int, ...]:
    """``shape`` padded up to the roi on every axis (as MONAI pads small images)."""
    return tuple(max(int(s), int(r)) for s, r in zip(shape, roi))


def window_count(shape: tuple[int, ...], roi: tuple[int, ...], overlap: float) -> int:
    """Windows over an image of ``shape`` (2D rois: per slice of the last axis)."""
    if len(roi) == 2:
        return len(window_starts(padded_shape(shape[:2], roi), tuple(roi), overlap)) * int(shape[2])
    return len(window_starts(padded_shape(shape, roi), tuple(roi), overlap))


def streaming_planes(shape: tuple[int, ...], roi: tuple[int, ...], overlap: float, batch: int, slab: int) -> int:
    """Depth of the aggregation buffer the engine allocates for a 3D image of ``shape``: the whole
    padded depth (``slab`` 0, MONAI's full buffer) or what any ``batch`` consecutive windows need,
    at least ``slab`` planes."""
    padded = padded_shape(shape, roi)
    if not slab:
        return padded[2]
    starts = window_starts(padded, tuple(roi), overlap)
    return min(max(buffer_planes(starts, int(roi[2]), batch), slab), padded[2])
