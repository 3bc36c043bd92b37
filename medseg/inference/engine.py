"""Runs a :class:`~medseg.inference.plan.Plan`: sliding-window inference, 3D or slice-wise 2D, streaming.

Windows run in the order of their start along the last axis; the aggregation buffer holds only the
planes that windows still touch (``Plan.slab_depth``). Planes that no later window reaches are
divided by the blending weights and handed to the model's *finaliser* (for MONAI-style models the
argmax and inversion to the source grid, :class:`~medseg.inference.invert.SourceGridFinaliser`), so
peak memory no longer grows with depth x classes. Window positions, padding, Gaussian weights and
the in-place arithmetic are MONAI's (:mod:`medseg.inference.windows`, ``compute_importance_map``);
only the order in which up to eight overlapping windows are summed differs, i.e. float32 rounding
(the reference it is tested against: :func:`tests.reference.monai_full_buffer.run_windows`).

Invariants of the streaming loop (3D): windows are sorted by their start ``s`` on the slab axis;
when a batch whose smallest start is ``m`` is about to be added, every plane ``< m`` is complete,
because every later window starts at ``>= m``. The buffer covers ``[buf_lo, buf_lo + cap)`` with
``cap >= max(end) - min(start)`` over any batch. An out-of-memory error while a batch runs
discards only the unfinished buffer: the engine shrinks the plan (:func:`shrink_plan`), warns once
and re-runs the windows that overlap the unfinished planes, adding only their parts on planes
``>= buf_lo``. Planes already finalised are never recomputed.
"""

from __future__ import annotations

import contextlib
import math
import warnings
from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np
import torch

from medseg.errors import MedsegError
from medseg.inference.host_memory import host_allocator
from medseg.inference.invert import Finaliser
from medseg.inference.plan import Plan
from medseg.inference.windows import MAX_CHUNK_PLANES, buffer_planes, chunk_planes, pad_amounts, window_starts

if TYPE_CHECKING:
    from medseg.inference.preprocess import GridRecord
    from medseg.models.base import Model

_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}


class MemoryFallbackWarning(UserWarning):
    """The engine ran out of memory and continued with a smaller plan."""

    medseg_warning = True


def inferer_kwargs(plan: Plan) -> dict:
    """MONAI inferer arguments for ``plan`` (windows, blending and where buffers live)."""
    return dict(
        roi_size=tuple(plan.roi_size),
        sw_batch_size=plan.sw_batch_size,
        overlap=plan.overlap,
        mode=plan.blend,
        sw_device=plan.device,
        device=plan.aggregation_device,
        progress=False,
    )


# ---------------------------------------------------------------------------------------------
# streaming engine


def is_out_of_memory(err: BaseException) -> bool:
    """CUDA OOM, a failed host allocation, or a MemoryError."""
    if isinstance(err, (MemoryError, torch.OutOfMemoryError)):
        return True
    if isinstance(err, RuntimeError):
        msg = str(err)
        return "out of memory" in msg or "can't allocate memory" in msg or "DefaultCPUAllocator" in msg
    return False


def shrink_plan(plan: Plan) -> Plan | None:
    """The next smaller plan after an out-of-memory error, or None when nothing is left to shrink.

    The window grid (roi, overlap, blending) and precision never change, so the labels of a resumed
    run equal those of an uninterrupted one. Order: halve the window batch; move the aggregation
    buffer, then the image, off the GPU; halve the slab.
    """
    if plan.sw_batch_size > 1:
        return plan.replace(sw_batch_size=max(1, plan.sw_batch_size // 2))
    if plan.aggregation_device != "cpu":
        return plan.replace(aggregation_device="cpu")
    if plan.image_device != "cpu":
        return plan.replace(image_device="cpu")
    if plan.slab_depth == 0:
        return plan.replace(slab_depth=max(1, plan.roi_size[-1]))
    if plan.slab_depth > 1:
        return plan.replace(slab_depth=max(1, plan.slab_depth // 2))
    return None


def _fallback(plan: Plan, err: BaseException, where: str) -> Plan:
    smaller = shrink_plan(plan)
    if smaller is None:
        raise MedsegError(
            f"out of memory at {where} even with the smallest plan (batch 1, buffers on the host); "
            "free memory or use a smaller --gpu-memory/--host-memory budget"
        ) from err
    changes = [
        f"{k} {getattr(plan, k)}->{getattr(smaller, k)}"
        for k in ("sw_batch_size", "aggregation_device", "image_device", "slab_depth")
        if getattr(plan, k) != getattr(smaller, k)
    ]
    warnings.warn(
        f"out of memory at {where}; continuing from there with {', '.join(changes)}",
        MemoryFallbackWarning,
        stacklevel=3,
    )
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return smaller


def autocast_for(plan: Plan):
    """Autocast to the plan's precision on a GPU; nothing on the CPU (fp32)."""
    if plan.precision in _DTYPES and plan.device.startswith("cuda"):
        return torch.autocast(device_type="cuda", dtype=_DTYPES[plan.precision])
    return contextlib.nullcontext()


def _first(out) -> torch.Tensor:
    if isinstance(out, (tuple, list)):
        return out[0]
    if isinstance(out, dict):
        return next(iter(out.values()))
    return out


def stream_windows(
    network: Callable[[torch.Tensor], torch.Tensor],
    image: torch.Tensor,
    plan: Plan,
    finaliser: Finaliser,
    spatial_dims: int = 3,
    on_progress: Callable[[float], None] | None = None,
):
    """Run ``plan`` over ``image`` (``(C, X, Y, Z)`` on the model grid), feeding ``finaliser`` plane by plane.

    Returns ``finaliser.finish()``. Out-of-memory errors shrink the plan and resume (see module doc).
    """
    tuning = host_allocator(plan.host_allocator) if plan.host_allocator != "default" else contextlib.nullcontext()
    with tuning, torch.inference_mode():
        if spatial_dims == 2:
            _stream_slices(network, image, plan, finaliser, on_progress)
        else:
            _stream_volume(network, image, plan, finaliser, on_progress)
    return finaliser.finish()


def _stream_volume(network, image, plan, finaliser, on_progress) -> None:
    roi = tuple(int(r) for r in plan.roi_size)
    shape = tuple(int(v) for v in image.shape[1:])
    pads = pad_amounts(shape, roi)
    padded_shape = tuple(n + a + b for n, (a, b) in zip(shape, pads))
    starts = window_starts(padded_shape, roi, plan.overlap)
    ends = starts[:, 2] + roi[2]
    total, nz = len(starts), padded_shape[2]
    state = {"done": 0}
    buf_lo = 0  # planes below buf_lo are finalised; only planes >= buf_lo are ever written again
    while True:
        try:
            padded = image
            if any(a or b for a, b in pads):
                flat = [v for a, b in reversed(pads) for v in (a, b)]
                mode = "replicate" if plan.padding_mode == "replicate" else "constant"
                padded = torch.nn.functional.pad(image[None], flat, mode=mode)[0]
            padded = padded.to(plan.image_device)
            from monai.data.utils import compute_importance_map  # on use: nnU-Net runs never load MONAI

            w = compute_importance_map(roi, mode=plan.blend, sigma_scale=0.125, device=plan.device, dtype=image.dtype)
            w = w[None, None]
            w_agg = w[0, 0].to(plan.aggregation_device)
            need = buffer_planes(starts, roi[2], plan.sw_batch_size)
            cap = min(max(need, plan.slab_depth), nz) if plan.streaming else nz
            agg = _Aggregation(padded_shape, cap, buf_lo, plan.aggregation_device, pads, shape, finaliser)
            consts = ConstantWindows()
            i = int(np.searchsorted(ends, buf_lo, side="right"))  # first window reaching an open plane
            while i < total:
                group = starts[i : i + plan.sw_batch_size]
                zmin = max(int(group[:, 2].min()), buf_lo)
                if int(group[:, 2].max()) + roi[2] > agg.lo + cap:
                    agg.slide(zmin)  # planes below zmin are complete
                    buf_lo = agg.lo
                wins = torch.cat([padded[:, x : x + roi[0], y : y + roi[1], z : z + roi[2]][None] for x, y, z in group])
                pred = consts.predict(network, wins.to(plan.device), plan)
                pred *= w
                agg.add(pred.to(plan.aggregation_device), group, w_agg, roi)
                del pred, wins  # not alive during the next forward pass or the finalisation
                i += len(group)
                state["done"] = max(state["done"], i)
                if on_progress is not None:
                    on_progress(min(state["done"] / max(total, 1), 1.0))
            agg.finalise(nz)
            return
        except Exception as err:  # noqa: BLE001 - only out-of-memory is handled; the rest is re-raised
            if not is_out_of_memory(err):
                raise
            agg = pred = wins = padded = consts = None
            plan = _fallback(plan, err, f"slab plane {max(buf_lo - pads[2][0], 0)}")


#: largest logits of one window (bytes) kept for reuse by :class:`ConstantWindows`
CONSTANT_WINDOW_MAX_BYTES = 128 << 20


def constant_window_bytes(plan: Plan, classes: int) -> int:
    """Bytes the engine may keep for one constant window's logits under ``plan`` (0: none kept)."""
    size = classes * math.prod(int(r) for r in plan.roi_size) * 4
    return size if size <= CONSTANT_WINDOW_MAX_BYTES else 0


def _forward(network, wins: torch.Tensor, plan: Plan) -> torch.Tensor:
    if plan.channels_last and wins.dim() == 5:
        wins = wins.contiguous(memory_format=torch.channels_last_3d)
    with autocast_for(plan):
        pred = _first(network(wins))
    return pred.float().contiguous()


class ConstantWindows:
    """Runs window batches; a window whose input is a single constant value (air clipped to the window
    minimum, the zero padding around a small volume) is computed once and its logits reused.

    The network is deterministic in eval mode, so identical input gives identical logits: reuse is
    exact (up to the float32 rounding of a different batch composition). Only the first constant
    value seen is kept, so the extra memory is one window's logits (counted by the planner).
    """

    def __init__(self) -> None:
        self.key: tuple[float, ...] | None = None
        self.logits: torch.Tensor | None = None
        self.reused = 0

    def predict(self, network, wins: torch.Tensor, plan: Plan) -> torch.Tensor:
        b, c = wins.shape[0], wins.shape[1]
        flat = wins.reshape(b, c, -1)
        first = flat[:, :, :1]
        constant = (flat == first).all(dim=2).all(dim=1).tolist()
        if not any(constant):
            return _forward(network, wins, plan)
        keys = [tuple(first[k, :, 0].tolist()) if constant[k] else None for k in range(b)]
        reuse = [self.logits is not None and keys[k] == self.key for k in range(b)]
        run = [k for k in range(b) if not reuse[k]]
        if run:
            got = _forward(network, wins[run], plan)
            if self.logits is None and got[0].numel() * 4 <= CONSTANT_WINDOW_MAX_BYTES:
                for j, k in enumerate(run):
                    if keys[k] is not None:
                        self.key, self.logits = keys[k], got[j : j + 1].clone()
                        break
            if not any(reuse):
                return got
        out = torch.empty((b, *self.logits.shape[1:]), dtype=torch.float32, device=wins.device)
        j = 0
        for k in range(b):
            if reuse[k]:
                out[k] = self.logits[0]
                self.reused += 1
            else:
                out[k] = got[j]
                j += 1
        return out


class _Aggregation:
    """Weighted sums and weights for padded planes ``[lo, lo + cap)`` along the slab axis."""

    def __init__(self, padded_shape, cap, lo, device, pads, shape, finaliser: Finaliser) -> None:
        self.padded_shape, self.cap, self.lo, self.device = padded_shape, cap, lo, device
        self.pads, self.shape, self.finaliser, self.chunk = pads, shape, finaliser, MAX_CHUNK_PLANES
        self.buf: torch.Tensor | None = None  # allocated at the first batch, when the class count is known
        self.cnt = torch.zeros((padded_shape[0], padded_shape[1], cap), dtype=torch.float32, device=device)

    def add(self, pred: torch.Tensor, group: np.ndarray, w: torch.Tensor, roi) -> None:
        if self.buf is None:
            self.chunk = chunk_planes(pred.shape[1], self.shape[0] * self.shape[1])
            size = (pred.shape[1], self.padded_shape[0], self.padded_shape[1], self.cap)
            self.buf = torch.zeros(size, dtype=torch.float32, device=self.device)
        for k, (x, y, z) in enumerate(group):
            z0 = max(int(z), self.lo)  # after a resume, parts below lo are already final
            skip, lz = z0 - int(z), z0 - self.lo
            dz = roi[2] - skip
            self.buf[:, x : x + roi[0], y : y + roi[1], lz : lz + dz] += pred[k, ..., skip:]
            self.cnt[x : x + roi[0], y : y + roi[1], lz : lz + dz] += w[..., skip:]

    def slide(self, new_lo: int) -> None:
        self.finalise(new_lo)
        shift = new_lo - self.lo
        keep = self.cap - shift
        for t in (self.buf, self.cnt):
            if t is None:
                continue
            for a in range(0, max(keep, 0), shift):  # chunks no longer than the shift never overlap
                b = min(a + shift, keep)
                t[..., a:b] = t[..., a + shift : b + shift]
            t[..., max(keep, 0) :] = 0
        self.lo = new_lo

    def finalise(self, stop: int) -> None:
        """Divide planes ``[lo, stop)`` by their weights; hand the unpadded part on, ``chunk`` planes at a time."""
        (x0, _), (y0, _), (z0, _) = self.pads
        lo, hi = max(self.lo, z0), min(stop, z0 + self.shape[2])
        if self.buf is None or hi <= lo:
            return
        xs, ys = slice(x0, x0 + self.shape[0]), slice(y0, y0 + self.shape[1])
        for a in range(lo, hi, self.chunk):
            b = min(a + self.chunk, hi)
            part = self.buf[:, xs, ys, a - self.lo : b - self.lo] / self.cnt[xs, ys, a - self.lo : b - self.lo]
            self.finaliser.push(part.cpu(), a - z0)


def _stream_slices(network, image, plan, finaliser, on_progress) -> None:
    """2D networks: MONAI's SliceInferer over chunks of ``slab_depth`` axial slices (slices are independent)."""
    nz = int(image.shape[-1])
    z = 0
    while z < nz:
        depth = plan.slab_depth if plan.streaming else nz
        stop = min(z + depth, nz)
        try:
            from monai.inferers import SliceInferer

            inferer = SliceInferer(spatial_dim=2, **inferer_kwargs(plan))
            x = image[..., z:stop].unsqueeze(0).to(plan.image_device)
            with autocast_for(plan):
                logits = inferer(x, lambda b: _first(network(b)).float())
            finaliser.push(logits[0].float().cpu(), z)
            del logits
        except Exception as err:  # noqa: BLE001
            if not is_out_of_memory(err):
                raise
            if not plan.streaming:
                plan = plan.replace(slab_depth=max(1, nz // 2))
                warnings.warn(
                    f"out of memory at slice {z}; continuing from there with slab_depth {plan.slab_depth}",
                    MemoryFallbackWarning,
                    stacklevel=2,
                )
            else:
                plan = _fallback(plan, err, f"slice {z}")
            continue
        z = stop
        if on_progress is not None:
            on_progress(z / nz)


def infer_labels(
    model: Model,
    image: torch.Tensor,
    plan: Plan,
    record: GridRecord,
    on_progress: Callable[[float], None] | None = None,
) -> np.ndarray:
    """Labels on the source grid for ``image`` (the model's input, from ``model.prepare``): the
    model's forward step over the plan's windows, its finaliser turning scores into labels."""
    return stream_windows(model.forward, image, plan, model.finaliser(record), model.spatial_dims, on_progress)
