"""The way back: logits on the model grid -> labels on the source grid, voxel for voxel.

The inverse of :mod:`medseg.inference.preprocess` samples the model's logits at ``i * s / t`` for
every source voxel ``i`` (linear interpolation along each axis), takes the argmax and undoes the
reorientation. :class:`SourceGridFinaliser` does it as planes arrive from the engine (slab
streaming), :func:`source_labels` for a chunk of planes, interpolating only the voxels whose
label the corners around them do not decide. The dense computation it equals is
:func:`tests.reference.monai_full_buffer.source_planes`.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from medseg.inference.preprocess import GridRecord, axis_coords, reorient_array
from medseg.inference.windows import chunk_planes

LABEL_BLOCK_VOXELS = 1 << 20
#: float32 bytes gathered at once where a cell's corners disagree (8 corners x C classes a voxel)
GATHER_BLOCK_BYTES = 4 << 20


def _gather_block(n_classes: int) -> int:
    """Voxels interpolated at once by :func:`source_labels`."""
    return int(min(1 << 16, max(256, GATHER_BLOCK_BYTES // (8 * 4 * max(1, n_classes)))))


def source_labels_bytes(n_classes: int, model_planes: tuple[int, int, int], out_planes: tuple[int, int, int]) -> int:
    """Peak temporaries of :func:`source_labels` for ``(X, Y, K)`` model and ``(X', Y', k)`` source planes.

    A float32 copy of the model planes (the gather table), label cells on both grids, one block of
    output rows (labels, mask, int64 indices) and one gather block (about 14 index or weight
    vectors and 7 arrays of ``C`` floats a voxel), plus the output planes.
    """
    mx, my, kk = (int(v) for v in model_planes)
    ox, oy, k = (int(v) for v in out_planes)
    itemsize = 1 if n_classes <= 256 else 2
    block = min(LABEL_BLOCK_VOXELS, ox * oy * k)
    n = min(_gather_block(n_classes), block)
    table = n_classes * mx * my * kk * 4
    cells = mx * my * (3 * kk + 2 * k) * 2
    return int(table + cells + block * 10 + n * (14 * 8 + 7 * n_classes * 4) + ox * oy * k * itemsize)


def _corner_index(n_out: int, n_in: int, step: float, dtype) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Lower corner, upper corner (edge-clamped) and weight of ``n_out`` samples ``step`` apart."""
    x = axis_coords(n_out, n_in, step)
    i0 = x.floor().long()
    return i0, (i0 + 1).clamp_(max=n_in - 1), (x - i0).to(dtype)


def source_labels(part: torch.Tensor, x_local: torch.Tensor, out_shape, inv, dtype=np.uint8) -> np.ndarray:
    """``channel_argmax(reference.source_planes(part, x_local, out_shape, inv))``, interpolating only where it matters.

    Each source voxel interpolates the logits of the 2 x 2 x 2 model voxels around it with
    non-negative weights summing to one. When those eight corners have the same argmax ``c``
    (every other class strictly lower, or equal and higher-numbered), every convex combination of
    them has it too, so the voxel's label is ``c`` without interpolating any of the ``C`` classes.
    Only voxels of cells whose corners disagree, the borders between labels (about 6% of the voxels
    of the phantom cases), are interpolated: their corners are gathered and lerped in the same
    order as :func:`~tests.reference.monai_full_buffer.source_planes` (slab axis, first axis, second
    axis). The labels equal the dense computation's except where float32 rounding of the dense path
    flips a near-tie that the corners decide (never seen in the tests, which compare the two).
    """
    n_classes, nx, ny, nz = (int(v) for v in part.shape)
    ox, oy, k = int(out_shape[0]), int(out_shape[1]), int(x_local.numel())
    z0 = x_local.floor().long()
    z1, wz = (z0 + 1).clamp(max=nz - 1), (x_local - z0).to(part.dtype)
    coarse = _argmax_planes(part, np.dtype(dtype) if n_classes <= 255 else np.dtype(np.uint16))  # (X, Y, Z)
    if (ox, oy) == (nx, ny) and inv[0] == inv[1] == 1.0 and not bool(wz.any()):  # nothing to interpolate
        return coarse.index_select(2, z0).numpy().astype(dtype, copy=False)
    marker = 255 if coarse.dtype == torch.uint8 else -1
    lo, hi = coarse, coarse  # smallest and largest label over each cell's corners (edge-clamped)
    for d, n in enumerate((nx, ny, nz)):
        nxt = torch.arange(1, n + 1).clamp_(max=n - 1)
        lo, hi = torch.minimum(lo, lo.index_select(d, nxt)), torch.maximum(hi, hi.index_select(d, nxt))
    cell = torch.where(lo == hi, coarse, torch.tensor(marker, dtype=coarse.dtype))
    del lo, hi
    # the cells of the k source planes, in the output's (X, Y, k) layout (planes are gathered whole)
    cell = cell.permute(2, 0, 1).contiguous().index_select(0, z0).permute(1, 2, 0).contiguous()
    axes = (
        _corner_index(ox, nx, inv[0], part.dtype),
        _corner_index(oy, ny, inv[1], part.dtype),
        (z0, z1, wz),
    )
    x0, y0 = axes[0][0], axes[1][0]
    out = np.empty((ox, oy, k), dtype=dtype)
    rows = max(1, LABEL_BLOCK_VOXELS // max(1, oy * k))
    table = None  # (X * Y * Z, C): one row of logits per model voxel, made when first needed
    for r0 in range(0, ox, rows):
        fine = cell.index_select(0, x0[r0 : r0 + rows]).index_select(1, y0)  # (R, oy, k)
        flat = fine.view(-1)
        todo = (flat == marker).nonzero().squeeze(1)
        if todo.numel():
            if table is None:
                table = part.permute(1, 2, 3, 0).contiguous().view(-1, n_classes)
            step = _gather_block(n_classes)
            for s in range(0, todo.numel(), step):
                f = todo[s : s + step]
                c, ab = f % k, f // k
                flat[f] = _interpolated_labels(table, (nx, ny, nz), ab // oy + r0, ab % oy, c, axes, flat.dtype)
        out[r0 : r0 + rows] = fine.numpy()
    return out


def _interpolated_labels(table, model_shape, a, b, c, axes, dtype) -> torch.Tensor:
    """Labels of output voxels ``(a[i], b[i], c[i])``: their 8 corner rows of ``table`` (``(X * Y * Z,
    C)``) lerped along the slab axis, then the first, then the second axis, and argmaxed."""
    _, ny, nz = model_shape
    (x0, x1, wx), (y0, y1, wy), (z0, z1, wz) = axes
    za, zb, wzc = z0[c], z1[c], wz[c][:, None]

    def at(xs: torch.Tensor, ys: torch.Tensor) -> torch.Tensor:  # slab-axis lerp at (x, y)
        base = (xs * ny + ys) * nz
        return torch.lerp(table.index_select(0, base + za), table.index_select(0, base + zb), wzc)

    xa, xb, ya, yb, wxa = x0[a], x1[a], y0[b], y1[b], wx[a][:, None]
    row0 = torch.lerp(at(xa, ya), at(xb, ya), wxa)
    row1 = torch.lerp(at(xa, yb), at(xb, yb), wxa)
    values = torch.lerp(row0, row1, wy[b][:, None]).t().contiguous()  # (C, n)
    return _argmax_planes(values, np.dtype(np.uint8) if dtype == torch.uint8 else np.dtype(np.uint16))


def _nearest_labels(
    labels: torch.Tensor, x_local: torch.Tensor, out_shape, inv, nearest=None, lo: int = 0, start: int = 0
) -> np.ndarray:
    """Labels ``(X, Y, Z)`` on the model grid sampled at the nearest model voxel of each source voxel
    of planes ``[start, start + len(x_local))``: coordinates rounded half to even, or MONAI's own
    picks (``nearest``, one index vector per axis); ``labels`` holds model planes from ``lo``."""
    nx, ny, nz = (int(v) for v in labels.shape)
    if nearest is not None:
        xi, yi = nearest[0], nearest[1]
        zi = nearest[2][start : start + x_local.numel()] - lo
    else:
        xi = torch.round(axis_coords(int(out_shape[0]), nx, inv[0])).long()
        yi = torch.round(axis_coords(int(out_shape[1]), ny, inv[1])).long()
        zi = torch.round(x_local).long()
    return labels.index_select(0, xi).index_select(1, yi).index_select(2, zi.clamp(0, nz - 1)).numpy()


def _argmax_planes(part: torch.Tensor, dtype=np.uint8) -> torch.Tensor:
    """``part.argmax(0)`` (ties to the lowest class) as a uint8 (``dtype`` uint8) or int16 tensor."""
    best = part[0].clone()
    idx = torch.zeros(part.shape[1:], dtype=torch.uint8 if dtype == np.uint8 else torch.int16)
    for c in range(1, part.shape[0]):
        idx.masked_fill_(part[c] > best, c)
        torch.maximum(best, part[c], out=best)
    return idx


def channel_argmax(part: torch.Tensor, dtype=np.uint8) -> np.ndarray:
    """``part.argmax(0)`` as ``dtype``, identical (ties go to the lowest class), 5-20x faster.

    PyTorch reduces over the outermost, strided axis slowly on a CPU (105 ms for 2 x 1.2 M voxels,
    measured); a running maximum over contiguous class planes does the same in a few ms.
    """
    return _argmax_planes(part, dtype).numpy().astype(dtype, copy=False)


class Finaliser:
    """Receives finished logit planes (``(C, X, Y, k)`` float32 on the CPU) in order along the last axis."""

    def push(self, planes: torch.Tensor, start: int) -> None:  # pragma: no cover - interface
        """``planes`` are planes ``[start, start + k)``; planes already received are ignored (resume)."""
        raise NotImplementedError

    def finish(self):  # pragma: no cover - interface
        raise NotImplementedError


class SourceGridFinaliser(Finaliser):
    """Streams logits on the model grid to labels on the source grid, as the dense
    :func:`tests.reference.monai_full_buffer.logits_to_source_labels` does.

    Each source plane ``j`` along the slab axis interpolates model planes ``floor(x)`` and
    ``floor(x) + 1`` with ``x = j * s / t``; it is emitted as soon as both have arrived. The
    arithmetic (float64 coordinates, ``lerp`` along the slab axis, then the in-plane axes, argmax)
    is the same as the whole-volume function's, so the labels are identical for identical logits.
    """

    def __init__(self, record: GridRecord, n_classes: int, chunk: int | None = None, invert: str = "logits") -> None:
        if invert not in ("logits", "probabilities", "labels"):
            raise ValueError(f"invert must be logits, probabilities or labels, not {invert!r}")
        self.record = record
        self.invert = invert
        out_plane = int(record.reoriented_shape[0]) * int(record.reoriented_shape[1])
        self.chunk = max(1, int(chunk)) if chunk else chunk_planes(n_classes, out_plane)
        self.inv = [1.0 / s for s in record.scale]
        self.n_in = int(record.model_shape[2])
        self.out_shape = tuple(int(v) for v in record.reoriented_shape)
        self.dtype = np.uint8 if n_classes <= 256 else np.uint16
        self.labels = np.empty(self.out_shape, dtype=self.dtype)
        self.carry: torch.Tensor | None = None  # model planes [carry_lo, carry_lo + carry.shape[-1])
        self.carry_lo = 0
        self.received = 0
        self.next_out = 0
        #: model index of each source index per axis, for nearest labels on MONAI's grid (its ties)
        self.nearest: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None
        if invert == "labels" and record.grid == "monai":
            from medseg.inference.monai_grid import monai_nearest_indices

            self.nearest = monai_nearest_indices(
                record.model_affine, record.model_shape, record.monai_oriented_affine, record.reoriented_shape
            )

    def _coord(self, j: int) -> float:
        return min(max(j * self.inv[2], 0.0), self.n_in - 1)

    def push(self, planes: torch.Tensor, start: int) -> None:
        if start > self.received:
            raise AssertionError(f"plane {self.received} skipped")
        planes = planes[..., self.received - start :].float().cpu()
        if planes.shape[-1] == 0:
            return
        if self.invert == "probabilities":  # per voxel, so exact plane by plane
            planes = torch.softmax(planes, dim=0)
        elif self.invert == "labels":
            planes = _argmax_planes(planes, self.dtype)[None]
        self.carry = planes if self.carry is None else torch.cat([self.carry, planes], dim=-1)
        self.received += planes.shape[-1]
        self._emit()

    def _ready(self, j: int) -> bool:
        x = self._coord(j)
        hi = min(math.floor(x) + 1, self.n_in - 1)
        return hi < self.received

    def _emit(self) -> None:
        nz = self.out_shape[2]
        while self.next_out < nz and self._ready(self.next_out):
            start = self.next_out
            stop = start
            while stop < nz and stop - start < self.chunk and self._ready(stop):
                stop += 1
            x = (torch.arange(start, stop, dtype=torch.float64) * self.inv[2]).clamp(0, self.n_in - 1)
            lo, hi = int(x.min().floor()), min(int(x.max().floor()) + 1, self.n_in - 1)
            part = self.carry[..., lo - self.carry_lo : hi + 1 - self.carry_lo]
            if self.invert == "labels":
                self.labels[..., start:stop] = _nearest_labels(
                    part[0], x - lo, self.out_shape, self.inv, self.nearest, lo, start
                )
            else:
                self.labels[..., start:stop] = source_labels(part, x - lo, self.out_shape, self.inv, self.dtype)
            self.next_out = stop
            if stop < nz:  # drop model planes no later source plane needs
                keep_from = min(int(math.floor(self._coord(stop))), self.received)  # upsampling skips planes
                # once every model plane has arrived nothing more is concatenated, so dropping planes
                # frees nothing: a single 2D push would copy nearly all its logits once per chunk
                if keep_from > self.carry_lo and self.received < self.n_in:
                    self.carry = self.carry[..., keep_from - self.carry_lo :].contiguous()
                    self.carry_lo = keep_from

    def finish(self) -> np.ndarray:
        if self.next_out != self.out_shape[2]:
            raise AssertionError(f"finaliser emitted {self.next_out} of {self.out_shape[2]} planes")
        return reorient_array(self.labels, self.record.inverse_ornt)
