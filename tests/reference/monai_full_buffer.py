"""Reference implementations that tests and benchmarks compare medseg's own against; medseg itself
never runs them.

* :func:`run_windows`: MONAI's own inferer with a full ``classes x voxels`` output buffer (what MONAI
  users get); the streaming engine's logits equal it up to float32 rounding.
* :class:`LogitsCollector`: a finaliser that keeps every plane, to compare the engine's logits.
* :func:`logits_to_source_labels` / :func:`source_planes`: the dense way back to the source grid
  (every class interpolated at every voxel), which :mod:`medseg.inference.invert` equals.
* :func:`profiled_peak_bytes`: the measured counterpart of the traced activation term.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from monai.inferers import SliceInferer, SlidingWindowInferer
from torch.profiler import ProfilerActivity, profile

from medseg.inference.engine import autocast_for, inferer_kwargs
from medseg.inference.invert import Finaliser, source_labels
from medseg.inference.plan import Plan
from medseg.inference.preprocess import GridRecord, reorient_array, resample_axis
from medseg.inference.windows import window_count


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
    x = image.unsqueeze(0).to(plan.device)
    common = inferer_kwargs(plan)
    inferer = SliceInferer(spatial_dim=2, **common) if spatial_dims == 2 else SlidingWindowInferer(**common)

    done = {"n": 0}
    total = window_count(tuple(x.shape[2:]), tuple(plan.roi_size), plan.overlap)

    def counted(batch: torch.Tensor) -> torch.Tensor:
        out = network(batch)
        done["n"] += batch.shape[0]
        if on_progress is not None:
            on_progress(min(done["n"] / max(total, 1), 1.0))
        return out.float()

    with torch.inference_mode(), autocast_for(plan):
        logits = inferer(x, counted)
    return logits[0].float().cpu()


class LogitsCollector(Finaliser):
    """Keeps every plane: the full logits, for tests and callers that want probabilities."""

    def __init__(self) -> None:
        self.parts: list[torch.Tensor] = []
        self.received = 0

    def push(self, planes: torch.Tensor, start: int) -> None:
        planes = planes[..., self.received - start :] if start < self.received else planes
        if start > self.received:
            raise AssertionError(f"plane {self.received} skipped")
        self.parts.append(planes.clone())
        self.received += planes.shape[-1]

    def finish(self) -> torch.Tensor:
        return torch.cat(self.parts, dim=-1)


def logits_to_source_labels(logits: torch.Tensor, record: GridRecord, slab: int = 16) -> np.ndarray:
    """``(C, X, Y, Z)`` logits on the model grid -> uint8/uint16 labels on the source grid.

    Logits are interpolated (not labels), then argmaxed, a slab of output planes at a time so that
    peak memory is ``C x slab`` planes rather than ``C x`` the whole source volume.
    """
    inv = [1.0 / s for s in record.scale]
    out_shape = record.reoriented_shape
    n_classes = logits.shape[0]
    dtype = np.uint8 if n_classes <= 256 else np.uint16
    labels = np.empty(out_shape, dtype=dtype)
    n_in = logits.shape[3]
    for start in range(0, out_shape[2], slab):
        stop = min(start + slab, out_shape[2])
        x = (torch.arange(start, stop, dtype=torch.float64) * inv[2]).clamp(0, n_in - 1)
        lo, hi = int(x.min().floor()), min(int(x.max().floor()) + 1, n_in - 1)
        labels[..., start:stop] = source_labels(logits[..., lo : hi + 1], x - lo, out_shape, inv, dtype)
    return reorient_array(labels, record.inverse_ornt)


def source_planes(part: torch.Tensor, x_local: torch.Tensor, out_shape, inv) -> torch.Tensor:
    """Model-grid logit planes ``part`` (``(C, X, Y, k)``) -> source-grid planes at slab-axis
    coordinates ``x_local`` (float64, relative to ``part``): ``lerp`` along the slab axis, then
    linear resampling of the two in-plane axes. Every class at every source voxel: the dense
    reference that :func:`source_labels` equals."""
    i0 = x_local.floor().long()
    i1 = (i0 + 1).clamp(max=part.shape[3] - 1)
    w = (x_local - i0).to(part.dtype).reshape(1, 1, 1, -1)
    part = torch.lerp(part.index_select(3, i0), part.index_select(3, i1), w)
    part = resample_axis(part, 1, out_shape[0], inv[0])
    return resample_axis(part, 2, out_shape[1], inv[1])


def profiled_peak_bytes(network: torch.nn.Module, x: torch.Tensor) -> int:
    """Measured counterpart of :func:`~medseg.inference.tracing.trace_activations`: peak live bytes of PyTorch's CPU
    allocations during ``network(x)`` on real tensors (``x`` excluded, the output included).

    Runs the forward pass under ``torch.profiler`` with ``profile_memory=True`` and replays its
    ``[memory]`` events (one per allocation, positive bytes, and per free, negative) in time
    order. They are read from the profiler's Kineto results, because ``prof.events()`` folds each
    allocation into the operator that made it (an im2col buffer allocated and freed inside one op
    nets to zero there). Allocations outside PyTorch's allocator (MKL/oneDNN internals, freed
    memory the C library keeps) are not seen: process RSS covers those.
    """
    with torch.inference_mode(), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        out = network(x)
    del out
    events = [
        (e.start_ns(), e.nbytes())
        for e in prof.profiler.kineto_results.events()
        if e.name() == "[memory]" and e.device_type() == torch.autograd.DeviceType.CPU
    ]
    live = peak = 0
    for _, nbytes in sorted(events, key=lambda e: e[0]):
        live += nbytes
        peak = max(peak, live)
    return int(peak)
