"""From logits to labels, and per-label statistics on the source grid."""

from __future__ import annotations

import numpy as np

from medseg.volume import Volume


def label_statistics(labels: np.ndarray, image: Volume, names: dict[int, str]) -> list[dict]:
    """Per label: voxel count, volume in ml, mean/std intensity of the source image (first channel).

    Every named foreground label gets a row, with zero volume when the model found none.
    """
    data = image.array if image.array.ndim == 3 else image.array[..., 0]
    flat_labels = labels.reshape(-1)
    flat_img = np.asarray(data, dtype=np.float64).reshape(-1)
    n = max(int(flat_labels.max()) + 1 if flat_labels.size else 1, max(names) + 1)
    counts = np.bincount(flat_labels, minlength=n)
    sums = np.bincount(flat_labels, weights=flat_img, minlength=n)
    sq = np.bincount(flat_labels, weights=flat_img * flat_img, minlength=n)
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
