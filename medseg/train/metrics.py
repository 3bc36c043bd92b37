"""Per-label overlap and surface metrics: Dice, IoU, HD95 (mm)."""

from __future__ import annotations

import numpy as np
from scipy import ndimage


def _surface(mask: np.ndarray) -> np.ndarray:
    return mask & ~ndimage.binary_erosion(mask, border_value=0)


def hd95(pred: np.ndarray, gt: np.ndarray, spacing: tuple[float, ...]) -> float:
    """95th percentile symmetric Hausdorff distance in mm; NaN when either mask is empty."""
    if not pred.any() or not gt.any():
        return float("nan")
    # restrict to the bounding box of both masks (plus a margin) to keep distance maps small
    both = pred | gt
    box = tuple(slice(max(s.start - 2, 0), s.stop + 2) for s in ndimage.find_objects(both.astype(np.uint8))[0])
    p, g = pred[box], gt[box]
    sp, sg = _surface(p), _surface(g)
    dt_g = ndimage.distance_transform_edt(~sg, sampling=spacing)
    dt_p = ndimage.distance_transform_edt(~sp, sampling=spacing)
    d = np.concatenate([dt_g[sp], dt_p[sg]])
    return float(np.percentile(d, 95))


def label_metrics(pred: np.ndarray, gt: np.ndarray, labels: dict[int, str], spacing: tuple[float, ...]) -> list[dict]:
    """One row per label: dice, iou, hd95_mm, voxel counts. Labels absent from both get NaN."""
    rows = []
    for index, name in labels.items():
        if index == 0:
            continue
        p, g = pred == index, gt == index
        inter = int(np.count_nonzero(p & g))
        n_p, n_g = int(np.count_nonzero(p)), int(np.count_nonzero(g))
        union = n_p + n_g - inter
        dice = 2 * inter / (n_p + n_g) if n_p + n_g else float("nan")
        iou = inter / union if union else float("nan")
        rows.append(
            {
                "label": index,
                "name": name,
                "dice": dice,
                "iou": iou,
                "hd95_mm": hd95(p, g, spacing),
                "pred_voxels": n_p,
                "gt_voxels": n_g,
            }
        )
    return rows
