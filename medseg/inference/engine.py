"""Runs a :class:`~medseg.inference.plan.Plan`: MONAI sliding-window inference, 3D or slice-wise 2D."""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import torch

from medseg.inference.plan import Plan

_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}


def run_windows(
    network: torch.nn.Module,
    image: torch.Tensor,
    plan: Plan,
    spatial_dims: int = 3,
    on_progress: Callable[[float], None] | None = None,
) -> torch.Tensor:
    """Blend the network's logits over windows covering ``image`` (``(C, X, Y, Z)``).

    A 2D network runs over the axial planes (last axis) with MONAI's ``SliceInferer``. Returns
    ``(out_channels, X, Y, Z)`` float32 logits on the CPU.
    """
    from monai.inferers import SliceInferer, SlidingWindowInferer

    x = image.unsqueeze(0).to(plan.device)
    common = dict(
        roi_size=tuple(plan.roi_size),
        sw_batch_size=plan.sw_batch_size,
        overlap=plan.overlap,
        mode=plan.blend,
        sw_device=plan.device,
        device=plan.aggregation_device,
        progress=False,
    )
    inferer = SliceInferer(spatial_dim=2, **common) if spatial_dims == 2 else SlidingWindowInferer(**common)

    done = {"n": 0}
    total = _window_count(x.shape[2:], plan, spatial_dims)

    def counted(batch: torch.Tensor) -> torch.Tensor:
        out = network(batch)
        done["n"] += batch.shape[0]
        if on_progress is not None:
            on_progress(min(done["n"] / max(total, 1), 1.0))
        return out.float()

    autocast = (
        torch.autocast(device_type="cuda", dtype=_DTYPES[plan.precision])
        if plan.precision in _DTYPES and plan.device.startswith("cuda")
        else contextlib.nullcontext()
    )
    with torch.inference_mode(), autocast:
        logits = inferer(x, counted)
    return logits[0].float().cpu()


def _window_count(shape: tuple[int, ...], plan: Plan, spatial_dims: int) -> int:
    """Number of windows MONAI will run (for the progress bar only)."""
    import math

    dims = tuple(shape[:2]) if spatial_dims == 2 else tuple(shape)
    count = 1
    for size, roi in zip(dims, plan.roi_size):
        size = max(size, roi)  # MONAI pads up to the roi
        step = max(int(roi * (1 - plan.overlap)), 1)
        count *= math.ceil((size - roi) / step) + 1 if size > roi else 1
    return count * (int(shape[2]) if spatial_dims == 2 else 1)
