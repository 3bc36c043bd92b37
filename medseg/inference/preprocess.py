"""Bring a scan onto a model's grid, and bring the model's output back onto the scan's grid.

The forward path is: exact reorientation (axis permutation and flips, no interpolation) to the
model's orientation, then resampling to its voxel size, then intensity normalisation, as a
:class:`~medseg.models.spec.PreprocessSpec` says. The resampled grid keeps voxel 0 where it was and
scales the affine's columns, so index ``j`` on the model grid sits at index ``j * t / s`` on the
reoriented scan (``t`` target and ``s`` source spacing). The way back (:mod:`medseg.inference.invert`)
samples the model's logits at ``i * s / t`` for every source voxel ``i``: the labels land voxel for
voxel on the source grid with its exact affine. The same coordinate rule serves labels (nearest)
for training.

Rotations are never resampled: an oblique scan keeps its rotation in the affine, as MONAI's
``Orientation`` and ``Spacing`` (with ``diagonal=False``) also do.
"""

from __future__ import annotations

from dataclasses import dataclass

import nibabel as nib
import numpy as np
import torch

from medseg.models.spec import IntensitySpec, PreprocessSpec
from medseg.volume import Volume


@dataclass(frozen=True)
class GridRecord:
    """What the forward transform did, so that it can be inverted exactly."""

    source_shape: tuple[int, int, int]
    source_affine: np.ndarray
    ornt: np.ndarray  # nibabel orientation transform source -> model orientation
    inverse_ornt: np.ndarray  # model orientation -> source
    reoriented_shape: tuple[int, int, int]
    scale: tuple[float, float, float]  # target / source spacing per (reoriented) axis
    model_shape: tuple[int, int, int]
    model_affine: np.ndarray
    #: the size rule of the model grid (``PreprocessSpec.grid``): ``medseg`` or ``monai``
    grid: str = "medseg"
    #: MONAI ``Orientation``'s affine of the reoriented scan (``grid == "monai"``), to its last bit
    monai_oriented_affine: np.ndarray | None = None


def plan_grid(volume: Volume, prep: PreprocessSpec) -> GridRecord:
    """Compute the model grid (shape, affine) for ``volume`` without touching voxel data."""
    src_ornt = nib.orientations.io_orientation(volume.affine)
    dst_ornt = nib.orientations.axcodes2ornt(tuple(prep.orientation))
    ornt = nib.orientations.ornt_transform(src_ornt, dst_ornt)
    inverse_ornt = nib.orientations.ornt_transform(dst_ornt, src_ornt)
    shape = volume.shape
    reoriented_affine = volume.affine @ nib.orientations.inv_ornt_aff(ornt, shape)
    reoriented_shape = tuple(int(shape[int(a)]) for a in np.argsort(ornt[:, 0]))
    spacing = np.sqrt((reoriented_affine[:3, :3] ** 2).sum(axis=0))
    target = [t if t is not None else s for t, s in zip(prep.spacing, spacing)]
    monai_oriented = None
    if prep.grid == "monai":  # MONAI Spacing's own rule and affine, computed by MONAI
        from medseg.inference.monai_grid import monai_spacing_grid

        monai_oriented, model_affine, model_shape = monai_spacing_grid(
            volume.affine, shape, prep.orientation, tuple(target)
        )
        target = list(np.sqrt((model_affine[:3, :3] ** 2).sum(axis=0)))  # a spacing within 1e-3 stays
        scale = tuple(float(t / s) for t, s in zip(target, spacing))
    else:
        scale = tuple(float(t / s) for t, s in zip(target, spacing))
        model_affine = reoriented_affine @ np.diag(list(scale) + [1.0])
        model_shape = tuple(max(1, int(round(n / r))) for n, r in zip(reoriented_shape, scale))
    return GridRecord(
        shape,
        volume.affine.copy(),
        ornt,
        inverse_ornt,
        reoriented_shape,
        scale,
        model_shape,
        model_affine,
        prep.grid,
        monai_oriented,
    )


def reorient_array(array: np.ndarray, ornt: np.ndarray) -> np.ndarray:
    """Apply a nibabel orientation transform to the spatial axes (a trailing channel axis stays)."""
    return np.ascontiguousarray(nib.orientations.apply_orientation(array, ornt))


def axis_coords(n_out: int, n_in: int, step: float) -> torch.Tensor:
    """Coordinates, in input index units, of ``n_out`` output samples ``step`` apart from index 0."""
    return (torch.arange(n_out, dtype=torch.float64) * step).clamp_(0, n_in - 1)


def resample_axis(t: torch.Tensor, dim: int, n_out: int, step: float, mode: str = "linear") -> torch.Tensor:
    """Resample ``t`` along ``dim`` at ``i * step`` for ``i < n_out`` (linear or nearest, edges clamped)."""
    n_in = t.shape[dim]
    if n_out == n_in and abs(step - 1.0) < 1e-12:
        return t
    x = axis_coords(n_out, n_in, step)
    if mode == "nearest":
        return t.index_select(dim, torch.round(x).long())
    i0 = x.floor().long()
    i1 = (i0 + 1).clamp_(max=n_in - 1)
    w_shape = [1] * t.ndim
    w_shape[dim] = n_out
    w = (x - i0).to(t.dtype).reshape(w_shape)
    a = t.index_select(dim, i0)
    b = t.index_select(dim, i1)
    return torch.lerp(a, b, w) if t.is_floating_point() else a


def resample_spatial(t: torch.Tensor, out_shape: tuple[int, ...], steps: tuple[float, ...], mode: str = "linear"):
    """Separable resampling of the last three dims of ``t``."""
    offset = t.ndim - 3
    # shrink the largest reductions first so later passes touch fewer voxels
    order = sorted(range(3), key=lambda d: out_shape[d] / max(t.shape[offset + d], 1))
    for d in order:
        t = resample_axis(t, offset + d, out_shape[d], steps[d], mode)
    return t


def normalise_intensity(t: torch.Tensor, spec: IntensitySpec) -> torch.Tensor:
    """Channel-first float tensor -> network input range."""
    t = _normalise(t, spec)
    if spec.rescale is None:
        return t
    lo_out, hi_out = spec.rescale
    groups = [t[c : c + 1] for c in range(t.shape[0])] if spec.rescale_channel_wise else [t]
    out = []
    for x in groups:  # as MONAI's rescale_array, a constant image included (multiplied by lo_out)
        lo, hi = x.min(), x.max()
        out.append((x - lo) / (hi - lo) * (hi_out - lo_out) + lo_out if hi > lo else x * lo_out)
    return torch.cat(out) if len(out) > 1 else out[0]


def _normalise(t: torch.Tensor, spec: IntensitySpec) -> torch.Tensor:
    if spec.kind == "ct_window":
        t = (t - spec.a_min) / (spec.a_max - spec.a_min)
        if spec.clip:
            t = t.clamp(0.0, 1.0)
        return t * (spec.b_max - spec.b_min) + spec.b_min
    if spec.kind == "zscore":
        out = torch.empty_like(t)
        for c in range(t.shape[0]):
            x = t[c]
            sel = x[x != 0] if spec.nonzero else x.reshape(-1)
            mean, std = (sel.mean(), sel.std()) if sel.numel() > 1 else (x.mean(), torch.tensor(1.0))
            out[c] = (x - mean) / std.clamp_min(1e-6)
            if spec.nonzero:
                out[c][x == 0] = 0
        return out
    return t


def to_channel_first(array: np.ndarray) -> torch.Tensor:
    t = torch.from_numpy(np.asarray(array, dtype=np.float32))
    return t.unsqueeze(0) if t.ndim == 3 else t.permute(3, 0, 1, 2).contiguous()


def preprocess_image(volume: Volume, prep: PreprocessSpec) -> tuple[torch.Tensor, GridRecord]:
    """Volume -> ``(C, X, Y, Z)`` float32 tensor on the model grid, plus the record to invert it."""
    record = plan_grid(volume, prep)
    t = to_channel_first(reorient_array(volume.array, record.ornt))
    t = resample_spatial(t, record.model_shape, record.scale, "linear")
    return normalise_intensity(t, prep.intensity).contiguous(), record


def preprocess_labels(labels: np.ndarray, record: GridRecord) -> torch.Tensor:
    """Label map on the source grid -> model grid (nearest), as used for training targets."""
    t = torch.from_numpy(reorient_array(labels, record.ornt).astype(np.int64))
    return resample_spatial(t, record.model_shape, record.scale, "nearest")
