"""PNG preview: axial, coronal and sagittal planes with labels overlaid in their colours.

Planes are shown in the radiological convention (patient's right on the image's left, anterior or
superior up) at their physical aspect ratio; an oblique scan is shown on its nearest canonical axes.
"""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np

from medseg.io.atomic import atomic_path
from medseg.volume import Volume


def _canonical(array: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, tuple[float, float, float]]:
    ornt = nib.orientations.ornt_transform(
        nib.orientations.io_orientation(affine), nib.orientations.axcodes2ornt(("R", "A", "S"))
    )
    out = nib.orientations.apply_orientation(array, ornt)
    spacing = np.sqrt((affine[:3, :3] ** 2).sum(axis=0))
    sp = tuple(float(spacing[int(np.flatnonzero(ornt[:, 0] == d)[0])]) for d in range(3))
    return out, sp


def _informative_centre(lab: np.ndarray) -> tuple[int, int, int]:
    """Per axis, the plane showing the most distinct labels, nearest the labels' centre of mass."""
    coords = np.nonzero(lab)
    if not coords[0].size:
        return tuple(int(n // 2) for n in lab.shape)
    values = lab[coords].astype(np.int64)
    n_labels = int(values.max()) + 1
    centre = []
    for axis, n in enumerate(lab.shape):
        pairs = np.unique(coords[axis].astype(np.int64) * n_labels + values)
        distinct = np.bincount(pairs // n_labels, minlength=n)
        mass = float(coords[axis].mean())
        best = np.flatnonzero(distinct == distinct.max())
        centre.append(int(best[np.argmin(np.abs(best - mass))]))
    return tuple(centre)


def _window(data: np.ndarray, modality: str | None) -> np.ndarray:
    is_ct = (modality or "").upper() == "CT" or (modality is None and data.min() < -500)
    if is_ct:
        lo, hi = 40 - 200, 40 + 200  # soft-tissue window W400/L40
    else:
        lo, hi = np.percentile(data, [1, 99])
        hi = hi if hi > lo else lo + 1
    return np.clip((data.astype(np.float32) - lo) / (hi - lo), 0, 1)


def _planes(
    img: np.ndarray, lab: np.ndarray, sp, centre
) -> list[tuple[str, np.ndarray, np.ndarray, tuple[float, float]]]:
    i, j, k = centre
    return [
        ("axial", img[::-1, ::-1, k].T, lab[::-1, ::-1, k].T, (sp[1], sp[0])),
        ("coronal", img[::-1, j, ::-1].T, lab[::-1, j, ::-1].T, (sp[2], sp[0])),
        ("sagittal", img[i, ::-1, ::-1].T, lab[i, ::-1, ::-1].T, (sp[2], sp[1])),
    ]


def render_preview(
    image: Volume, labels: np.ndarray, colors: dict[int, tuple[int, int, int]], names: dict[int, str], height: int = 320
):
    """Return a PIL image with the three planes through the labelled region's centre and a legend."""
    from PIL import Image, ImageDraw

    data = image.array if image.array.ndim == 3 else image.array[..., 0]
    img, sp = _canonical(np.asarray(data), image.affine)
    lab, _ = _canonical(labels, image.affine)
    centre = _informative_centre(lab)
    gray = _window(img, image.meta.get("modality"))
    lut = np.zeros((max(max(colors, default=0), int(lab.max())) + 1, 3), np.float32)
    for index, rgb in colors.items():
        lut[index] = rgb
    panels = []
    for title, g, lb, (row_mm, col_mm) in _planes(gray, lab, sp, centre):
        rgb = np.repeat(g[..., None] * 255.0, 3, axis=2)
        mask = lb > 0
        rgb[mask] = 0.55 * rgb[mask] + 0.45 * lut[lb[mask]]
        pil = Image.fromarray(rgb.astype(np.uint8))
        h_mm, w_mm = g.shape[0] * row_mm, g.shape[1] * col_mm
        size = (max(1, int(round(height * w_mm / h_mm))), height)
        panels.append((title, pil.resize(size, Image.NEAREST)))
    legend_h = 22 * ((len(names) + 3) // 4) + 8
    width = sum(p.width for _, p in panels) + 8 * (len(panels) + 1)
    canvas = Image.new("RGB", (width, height + 30 + legend_h), (0, 0, 0))
    draw = ImageDraw.Draw(canvas)
    x = 8
    for title, pil in panels:
        canvas.paste(pil, (x, 24))
        draw.text((x, 6), title, fill=(230, 230, 230))
        x += pil.width + 8
    for n, (index, name) in enumerate(sorted((k, v) for k, v in names.items() if k != 0)):
        col, row = n % 4, n // 4
        lx, ly = 8 + col * (width // 4), height + 32 + row * 22
        draw.rectangle(
            [lx, ly, lx + 14, ly + 14], fill=tuple(int(c) for c in lut[index]) if index < len(lut) else (255, 0, 0)
        )
        draw.text((lx + 20, ly + 2), f"{index} {name}", fill=(230, 230, 230))
    return canvas


def write_preview(
    path: str | Path, image: Volume, labels: np.ndarray, colors: dict[int, tuple[int, int, int]], names: dict[int, str]
) -> Path:
    canvas = render_preview(image, labels, colors, names)
    with atomic_path(path) as tmp:
        canvas.save(tmp, format="PNG")
    return Path(path)
