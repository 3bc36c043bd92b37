"""Prompts for click-to-segment: positive/negative points and a box, in voxel indices of one Volume.

Points come either as the image's own array indices (``I,J,K``, nibabel order, as ``--voxel``) or as
world millimetres in RAS+ (``X,Y,Z``, as ``--point``), converted through the Volume's affine, so a
point means the same place on an LPS, oblique or anisotropic grid. :func:`check_prompts` refuses
prompts that cannot mean anything (outside the image, a zero-size box, a negative click on a
positive one) with a :class:`PromptError` the CLI prints as one line.

Example:
    >>> import numpy as np
    >>> from medseg.volume import Volume
    >>> v = Volume(np.zeros((10, 10, 10), np.int16), np.diag([-2.0, -2.0, 3.0, 1.0]))
    >>> world_to_voxel(v, (-4.0, -6.0, 9.0))
    (2, 3, 3)
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np

from medseg.errors import MedsegError
from medseg.volume import Volume

Voxel = tuple[int, int, int]


class PromptError(MedsegError):
    """A prompt that cannot be used on this image (outside it, zero-size box, contradicting clicks, air)."""


@dataclass(frozen=True)
class Box:
    """An axis-aligned box of voxels, inclusive corners ``lo`` and ``hi`` (array indices)."""

    lo: Voxel
    hi: Voxel

    @classmethod
    def from_corners(cls, a: Sequence[int], b: Sequence[int]) -> Box:
        lo = tuple(int(min(x, y)) for x, y in zip(a, b))
        hi = tuple(int(max(x, y)) for x, y in zip(a, b))
        return cls(lo, hi)  # type: ignore[arg-type]

    def contains(self, voxel: Sequence[int]) -> bool:
        return all(lo <= int(v) <= hi for lo, v, hi in zip(self.lo, voxel, self.hi))

    @property
    def slices(self) -> tuple[slice, slice, slice]:
        return tuple(slice(lo, hi + 1) for lo, hi in zip(self.lo, self.hi))  # type: ignore[return-value]


@dataclass(frozen=True)
class Prompts:
    """Positive and negative clicks and an optional box, all in voxel indices of one image."""

    positive: tuple[Voxel, ...]
    negative: tuple[Voxel, ...] = field(default=())
    box: Box | None = None

    @classmethod
    def of(
        cls,
        positive: Iterable[Sequence[int]],
        negative: Iterable[Sequence[int]] = (),
        box: Box | Sequence[int] | None = None,
    ) -> Prompts:
        """Normalise clicks to int triples; ``box`` may be a :class:`Box` or six numbers ``i0,j0,k0,i1,j1,k1``."""
        pos = tuple(_voxel(p) for p in positive)
        neg = tuple(_voxel(p) for p in negative)
        if box is not None and not isinstance(box, Box):
            values = [int(round(float(v))) for v in box]
            if len(values) != 6:
                raise PromptError(f"a box needs six numbers I0,J0,K0,I1,J1,K1, got {len(values)}")
            box = Box.from_corners(values[:3], values[3:])
        return cls(pos, neg, box)


def _voxel(p: Sequence[float]) -> Voxel:
    values = [float(v) for v in p]
    if len(values) != 3 or not all(np.isfinite(values)):
        raise PromptError(f"a point needs three finite numbers, got {p!r}")
    return tuple(int(round(v)) for v in values)  # type: ignore[return-value]


def parse_numbers(text: str, count: int, what: str) -> tuple[float, ...]:
    """``"10,20,30"`` (commas and/or spaces) -> ``(10.0, 20.0, 30.0)``; a :class:`PromptError` otherwise."""
    parts = [p for p in str(text).replace(",", " ").split() if p]
    try:
        values = tuple(float(p) for p in parts)
    except ValueError:
        raise PromptError(f"{what} {text!r} is not {count} numbers separated by commas") from None
    if len(values) != count or not all(np.isfinite(values)):
        raise PromptError(f"{what} {text!r} must be {count} finite numbers separated by commas")
    return values


def parse_voxel(text: str) -> Voxel:
    """``"I,J,K"`` -> integer array indices; fractional indices are refused (they are not voxels)."""
    values = parse_numbers(text, 3, "voxel")
    if any(v != round(v) for v in values):
        raise PromptError(f"voxel {text!r} must be whole array indices (use --point for millimetres)")
    return tuple(int(v) for v in values)  # type: ignore[return-value]


def parse_box(text: str) -> Box:
    """``"I0,J0,K0,I1,J1,K1"`` (inclusive corners, any order) -> :class:`Box`."""
    values = parse_numbers(text, 6, "box")
    if any(v != round(v) for v in values):
        raise PromptError(f"box {text!r} must be whole array indices")
    ints = [int(v) for v in values]
    return Box.from_corners(ints[:3], ints[3:])


def world_to_voxel(volume: Volume, xyz: Sequence[float]) -> Voxel:
    """RAS+ millimetres -> the nearest voxel's array indices (may lie outside the image)."""
    ijk = np.linalg.solve(volume.affine, np.array([*map(float, xyz), 1.0]))[:3]
    return tuple(int(v) for v in np.floor(ijk + 0.5))  # type: ignore[return-value]


def voxel_to_world(volume: Volume, ijk: Sequence[float]) -> tuple[float, float, float]:
    """Array indices -> RAS+ millimetres of the voxel centre."""
    xyz = volume.affine @ np.array([*map(float, ijk), 1.0])
    return tuple(float(v) for v in xyz[:3])  # type: ignore[return-value]


def _where(volume: Volume, voxel: Voxel) -> str:
    x, y, z = voxel_to_world(volume, voxel)
    return f"voxel {','.join(map(str, voxel))} (RAS {x:.1f},{y:.1f},{z:.1f} mm)"


def check_prompts(volume: Volume, prompts: Prompts) -> None:
    """Refuse prompts that cannot be used on ``volume`` (:class:`PromptError`, one line).

    A point outside the image, a box of zero size or outside the image, no positive click, a
    positive click outside the box, and a negative click on a positive one.
    """
    shape = volume.shape
    if not prompts.positive:
        raise PromptError("no positive prompt: give at least one --voxel or --point inside the structure")
    dims = "x".join(map(str, shape))
    for kind, points in (("positive", prompts.positive), ("negative", prompts.negative)):
        for p in points:
            if not all(0 <= v < n for v, n in zip(p, shape)):
                raise PromptError(f"{kind} prompt at {_where(volume, p)} is outside the image ({dims} voxels)")
    box = prompts.box
    if box is not None:
        sizes = [hi - lo for lo, hi in zip(box.lo, box.hi)]
        if any(s <= 0 for s in sizes):
            raise PromptError(
                f"box {','.join(map(str, box.lo + box.hi))} has zero size along axis {sizes.index(min(sizes))}; "
                "give two opposite corners"
            )
        if not all(lo < n and hi >= 0 for lo, hi, n in zip(box.lo, box.hi, shape)):
            raise PromptError(f"box {','.join(map(str, box.lo + box.hi))} is outside the image ({dims} voxels)")
        for p in prompts.positive:
            if not box.contains(p):
                raise PromptError(f"positive prompt at {_where(volume, p)} is outside the box")
    on_both = set(prompts.positive) & set(prompts.negative)
    if on_both:
        p = sorted(on_both)[0]
        raise PromptError(f"negative prompt at {_where(volume, p)} is on a positive prompt; remove one of them")


def clip_box(box: Box, shape: Sequence[int]) -> Box:
    """The part of ``box`` inside an image of ``shape``."""
    lo = tuple(max(0, v) for v in box.lo)
    hi = tuple(min(int(n) - 1, v) for v, n in zip(box.hi, shape))
    return Box(lo, hi)  # type: ignore[arg-type]
