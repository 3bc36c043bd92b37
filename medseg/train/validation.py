"""Validation during training: a held-out split, and per-label Dice of sliding-window predictions.

Validation runs on the cached cases, on the model grid (not the source grid): it ranks checkpoints,
it is not the final evaluation (``medseg infer`` + ``medseg evaluate`` on held-out scans is).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from medseg.models.spec import ModelSpec
from medseg.train.dataset import CachedCase


def split_cases(cases: list[CachedCase], fraction: float, seed: int = 0) -> tuple[list[CachedCase], list[CachedCase]]:
    """``(train, val)``: ``round(fraction * n)`` cases drawn with ``seed``, at least one when
    ``fraction > 0`` and there are two or more cases; none when ``fraction`` is 0."""
    n = len(cases)
    if fraction <= 0 or n < 2:
        return list(cases), []
    n_val = min(max(1, round(fraction * n)), n - 1)
    order = np.random.default_rng(seed).permutation(n)
    val = set(int(i) for i in order[:n_val])
    return [c for i, c in enumerate(cases) if i not in val], [c for i, c in enumerate(cases) if i in val]


@torch.no_grad()
def predict_case(net: torch.nn.Module, case: CachedCase, spec: ModelSpec) -> torch.Tensor:
    """Argmax labels of ``case`` on the model grid (MONAI's sliding windows; 2D specs slice by slice)."""
    from monai.inferers import sliding_window_inference

    inf = spec.inference
    kwargs = {"roi_size": tuple(inf.roi_size), "sw_batch_size": inf.sw_batch_size, "overlap": inf.overlap}
    kwargs["mode"] = inf.blend
    x = case.image.float().unsqueeze(0)  # (1, C, X, Y, Z)
    if spec.network.spatial_dims == 3:
        return sliding_window_inference(x, predictor=net, **kwargs).argmax(1)[0]
    slices = x[0].permute(3, 0, 1, 2)  # (Z, C, X, Y)
    out = [
        sliding_window_inference(slices[i : i + 16], predictor=net, **kwargs).argmax(1)
        for i in range(0, len(slices), 16)
    ]
    return torch.cat(out).permute(1, 2, 0)


def dice_per_label(pred: torch.Tensor, ref: torch.Tensor, labels: dict[int, str]) -> dict[str, float]:
    """Dice per foreground label; NaN where the label is in neither."""
    out = {}
    for index, name in labels.items():
        if index == 0:
            continue
        p, r = pred == index, ref == index
        total = int(p.sum()) + int(r.sum())
        out[name] = 2 * int((p & r).sum()) / total if total else float("nan")
    return out


def validate(net: torch.nn.Module, cases: list[CachedCase], spec: ModelSpec) -> dict[str, float]:
    """Mean over ``cases`` of each label's Dice (labels absent from a case and its prediction skipped)."""
    was_training = net.training
    net.eval()
    names = {k: v.name for k, v in spec.labels.items()}
    per_case = [dice_per_label(predict_case(net, c, spec), c.labels.long(), names) for c in cases]
    net.train(was_training)
    out = {}
    for name in (n for k, n in sorted(names.items()) if k != 0):
        vals = [d[name] for d in per_case if not math.isnan(d[name])]
        out[name] = float(np.mean(vals)) if vals else float("nan")
    return out


def mean_dice(per_label: dict[str, float]) -> float:
    vals = [v for v in per_label.values() if not math.isnan(v)]
    return float(np.mean(vals)) if vals else float("nan")
