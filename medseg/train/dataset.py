"""Training data: ``DIR/images/<case>.nii.gz`` with ``DIR/labels/<case>.nii.gz``, cached on the model grid."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from medseg.errors import InputError
from medseg.inference.preprocess import preprocess_image, preprocess_labels
from medseg.io import read_volume
from medseg.io.registry import IMAGE_SUFFIXES
from medseg.models.spec import ModelSpec


def _stem(path: Path) -> str:
    name = path.name
    for suffix in (".nii.gz", ".nii", ".nrrd", ".mha"):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


def _is_image(path: Path) -> bool:
    return path.is_file() and path.name.lower().endswith(IMAGE_SUFFIXES)


def find_pairs(data_dir: str | Path) -> list[tuple[Path, Path]]:
    """Pair ``images/X`` with ``labels/X`` (same case name); a case without labels is an error."""
    data_dir = Path(data_dir)
    images, labels = data_dir / "images", data_dir / "labels"
    if not images.is_dir() or not labels.is_dir():
        raise InputError("training data needs 'images/' and 'labels/' subfolders", data_dir)
    # only image files: label names sit beside the label files as JSON sidecars (<case>.json)
    by_name = {_stem(p): p for p in labels.iterdir() if _is_image(p)}
    pairs = []
    for img in sorted(p for p in images.iterdir() if _is_image(p)):
        lbl = by_name.get(_stem(img))
        if lbl is None:
            raise InputError(f"no label file for case '{_stem(img)}' in labels/", data_dir)
        pairs.append((img, lbl))
    if not pairs:
        raise InputError("no training cases found in images/", data_dir)
    return pairs


@dataclass
class CachedCase:
    name: str
    image: torch.Tensor  # (C, X, Y, Z) float32, model grid
    labels: torch.Tensor  # (X, Y, Z) uint8, model grid
    class_voxels: dict[int, np.ndarray]  # class -> sample of flat voxel indices, for oversampling


def load_case(image_path: Path, label_path: Path, spec: ModelSpec, max_per_class: int = 20000) -> CachedCase:
    image = read_volume(image_path)
    labels = read_volume(label_path)
    if labels.shape != image.shape or not np.allclose(labels.affine, image.affine, atol=1e-3):
        raise InputError("label map is not on the image's grid (shape or affine differ)", label_path)
    x, record = preprocess_image(image, spec.preprocessing)
    y = preprocess_labels(np.asarray(labels.array).astype(np.int64), record).to(torch.uint8)
    flat = y.reshape(-1).numpy()
    rng = np.random.default_rng(0)
    class_voxels = {}
    for c in np.unique(flat):
        idx = np.flatnonzero(flat == c)
        if idx.size > max_per_class:
            idx = rng.choice(idx, max_per_class, replace=False)
        class_voxels[int(c)] = idx
    return CachedCase(_stem(image_path), x, y, class_voxels)


class PatchSampler:
    """Random patches with foreground oversampling; 2D specs get single axial planes."""

    def __init__(
        self,
        cases: list[CachedCase],
        patch: tuple[int, ...],
        fg_fraction: float = 0.67,
        seed: int = 0,
        class_weights: dict[int, float] | None = None,
    ):
        self.cases = cases
        #: relative odds of a foreground class being the patch centre (default: all equal)
        self.class_weights = class_weights
        self.patch3 = tuple(patch) if len(patch) == 3 else (patch[0], patch[1], 1)
        self.two_d = len(patch) == 2
        self.fg_fraction = fg_fraction
        self.rng = np.random.default_rng(seed)

    def _centre(self, case: CachedCase) -> tuple[int, int, int]:
        shape = case.labels.shape
        fg = [c for c in case.class_voxels if c != 0]
        if fg and self.rng.random() < self.fg_fraction:
            if self.class_weights:
                odds = np.array([self.class_weights.get(c, 1.0) for c in fg], dtype=float)
                c = fg[int(self.rng.choice(len(fg), p=odds / odds.sum()))]
            else:
                c = fg[self.rng.integers(len(fg))]
            flat = int(self.rng.choice(case.class_voxels[c]))
            return tuple(int(v) for v in np.unravel_index(flat, shape))
        return tuple(int(self.rng.integers(s)) for s in shape)

    def sample(self) -> tuple[torch.Tensor, torch.Tensor]:
        case = self.cases[self.rng.integers(len(self.cases))]
        centre = self._centre(case)
        img = case.image
        out_x = torch.zeros((img.shape[0],) + self.patch3, dtype=img.dtype)
        out_y = torch.zeros(self.patch3, dtype=torch.uint8)
        src, dst = [], []
        for c, p, n in zip(centre, self.patch3, case.labels.shape):
            start = c - p // 2 + int(self.rng.integers(-(p // 4), p // 4 + 1)) if p > 1 else c
            lo, hi = max(start, 0), min(start + p, n)
            src.append(slice(lo, hi))
            dst.append(slice(lo - start, hi - start))
        out_x[(slice(None), *dst)] = img[(slice(None), *src)]
        out_y[tuple(dst)] = case.labels[tuple(src)]
        if self.two_d:
            return out_x[..., 0], out_y[..., 0]
        return out_x, out_y
