"""MONAI ``Spacing``'s grid, and which model voxel its nearest-neighbour inverse picks, computed by MONAI.

A bundle's ``Spacingd`` decides the model grid (its size rule, and keeping a spacing within
``AFFINE_TOL`` of the target as it is), and its ``Invertd(nearest_interp=True)`` decides, for each
source voxel, the model voxel whose label it takes. Many source voxels sit exactly half-way between
two model voxels (a 0.75 mm scan on a 1.5 mm grid: every other voxel), and which one MONAI picks
there depends on the last bit of its float arithmetic: it alternates irregularly. So both are
computed here by MONAI's own code rather than re-derived: the grids by ``Orientation`` and
``Spacing`` in lazy mode (affines to the last bit), the nearest indices by MONAI's normalisation
(``to_norm_affine``) and torch's ``affine_grid``/``grid_sample`` on one probe line per axis (the
transform between the grids is a per-axis scaling, so each axis's choice depends on that axis
alone; the parity tests compare with MONAI's ``Invertd`` on whole volumes).
"""

from __future__ import annotations

import numpy as np
import torch


def monai_spacing_grid(
    source_affine: np.ndarray, source_shape: tuple[int, int, int], axcodes: str, target: tuple[float, float, float]
) -> tuple[np.ndarray, np.ndarray, tuple[int, int, int]]:
    """``(oriented affine, model affine, model shape)`` as ``Orientation(axcodes)`` then
    ``Spacing(pixdim=target)`` give them, computed by those transforms in MONAI's lazy mode (no
    voxel is touched: the image is a zero-stride view). The affines are MONAI's to the last bit,
    which its nearest-neighbour inverse depends on."""
    from monai.data import MetaTensor
    from monai.transforms import Orientation, Spacing

    shape = tuple(int(v) for v in source_shape)
    image = MetaTensor(
        torch.zeros(1, 1, 1, 1).expand(1, *shape), affine=torch.as_tensor(source_affine, dtype=torch.float64)
    )
    oriented = Orientation(axcodes=axcodes, lazy=True)(image)
    spaced = Spacing(pixdim=[float(t) for t in target], lazy=True)(oriented)
    oriented_affine = np.asarray(oriented.peek_pending_affine(), dtype=np.float64)
    model_affine = np.asarray(spaced.peek_pending_affine(), dtype=np.float64)
    model_shape = tuple(max(1, int(v)) for v in spaced.peek_pending_shape())
    return oriented_affine, model_affine, model_shape


def monai_nearest_indices(
    model_affine: np.ndarray,
    model_shape: tuple[int, int, int],
    source_affine: np.ndarray,
    source_shape: tuple[int, int, int],
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """For each axis, the model index each source index takes under ``Invertd(nearest_interp=True)``
    of a ``Spacingd`` (border padding, ``align_corners=False``, float64: ``Spacing``'s defaults).

    MONAI's steps (``spatial_resample`` -> ``AffineTransform``): the voxel transform between the
    grids, normalised with the *whole* grids' sizes (``to_norm_affine``; its last bits depend on
    every size), then ``affine_grid`` and ``grid_sample``. The normalised transform is computed
    exactly so; the sampling then runs on one line per axis (the transform is a per-axis scaling,
    so the other axes' coordinates add exact zeros).
    """
    from monai.networks.utils import to_norm_affine

    xform = np.linalg.solve(np.asarray(model_affine, dtype=np.float64), np.asarray(source_affine, dtype=np.float64))
    theta = to_norm_affine(
        affine=torch.as_tensor(xform, dtype=torch.float64)[None],
        src_size=[int(v) for v in model_shape],
        dst_size=[int(v) for v in source_shape],
        align_corners=False,
        zero_centered=False,
    )
    rev = torch.as_tensor([2, 1, 0])
    theta[:, :3] = theta[:, rev]
    theta[:, :, :3] = theta[:, :, rev]
    out = []
    for d in range(3):
        size_in, size_out = [1, 1, 1], [1, 1, 1]
        size_in[d], size_out[d] = int(model_shape[d]), int(source_shape[d])
        probe = torch.arange(size_in[d], dtype=torch.float64).reshape(size_in)[None, None]
        grid = torch.nn.functional.affine_grid(theta[:, :3], size=[1, 1, *size_out], align_corners=False)
        line = torch.nn.functional.grid_sample(probe, grid, mode="nearest", padding_mode="border", align_corners=False)
        out.append(line.reshape(-1).round().long().clamp_(0, size_in[d] - 1))
    return out[0], out[1], out[2]
