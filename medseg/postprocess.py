"""From logits to labels, and per-label statistics on the source grid."""

from __future__ import annotations

import numpy as np

from medseg.volume import Volume

#: voxels per chunk of the per-label reductions: their temporaries stay small and are reused, so a
#: 500x375x112 CT costs ~0.2 s instead of ~1.4 s of fresh 170 MB arrays and their page faults
CHUNK_VOXELS = 1 << 20


def _plane_chunks(shape: tuple[int, ...]):
    """Slices of the first axis covering about ``CHUNK_VOXELS`` voxels each."""
    plane = int(np.prod(shape[1:], dtype=np.int64)) if len(shape) > 1 else 1
    step = max(1, CHUNK_VOXELS // max(plane, 1))
    for start in range(0, shape[0] if shape else 0, step):
        yield slice(start, min(start + step, shape[0]))


def label_counts(labels: np.ndarray, minlength: int = 0) -> np.ndarray:
    """``np.bincount(labels.reshape(-1), minlength)``, a chunk of planes at a time."""
    n = max(minlength, int(labels.max()) + 1 if labels.size else 0)
    counts = np.zeros(n, dtype=np.int64)
    for sl in _plane_chunks(labels.shape):
        counts += np.bincount(labels[sl].reshape(-1), minlength=n)
    return counts


def _same_order(labels: np.ndarray, data: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Views of ``labels`` and ``data`` in which chunks of the first axis are contiguous in
    ``labels`` (transposed when it is Fortran-ordered, as NIfTI arrays are)."""
    if labels.flags.f_contiguous and not labels.flags.c_contiguous:
        return labels.T, data.T
    return labels, data


def label_statistics(labels: np.ndarray, image: Volume, names: dict[int, str]) -> list[dict]:
    """Per label: voxel count, volume in ml, mean/std intensity of the source image (first channel).

    Every named foreground label gets a row, with zero volume when the model found none. Only
    foreground voxels are gathered and counted (background has no row), a chunk at a time.
    """
    data = image.array if image.array.ndim == 3 else image.array[..., 0]
    n = max(int(labels.max()) + 1 if labels.size else 1, max(names, default=0) + 1)
    counts = np.zeros(n, dtype=np.int64)
    sums = np.zeros(n)
    sq = np.zeros(n)
    ordered_labels, ordered_data = _same_order(labels, data)
    for sl in _plane_chunks(ordered_labels.shape):
        flat_labels = ordered_labels[sl].reshape(-1)
        foreground = np.flatnonzero(flat_labels)
        if not foreground.size:
            continue
        fg_labels = flat_labels[foreground]
        fg_img = ordered_data[sl].reshape(-1)[foreground].astype(np.float64)
        counts += np.bincount(fg_labels, minlength=n)
        sums += np.bincount(fg_labels, weights=fg_img, minlength=n)
        sq += np.bincount(fg_labels, weights=fg_img * fg_img, minlength=n)
    voxel_ml = image.voxel_volume_ml
    rows = []
    for index in range(1, n):
        if counts[index] == 0 and index not in names:
            continue
        c = int(counts[index])
        mean = sums[index] / c if c else float("nan")
        var = max(sq[index] / c - mean * mean, 0.0) if c else float("nan")
        rows.append(
            {
                "label": index,
                "name": names.get(index, f"label_{index}"),
                "voxels": c,
                "volume_ml": round(c * voxel_ml, 3),
                "mean_intensity": round(float(mean), 3) if c else None,
                "std_intensity": round(float(np.sqrt(var)), 3) if c else None,
            }
        )
    return rows
