"""How a scan's voxel grid is shown in napari, and how painted labels go back onto that grid.

napari slices well only when a layer's transform is a scale and a translation; a permuted or
rotated affine makes 2D slicing drop components (napari warns "non-orthogonal slicing"). So medseg
shows every volume **reoriented** (flips and transposes only: numpy views, no resampling) to one
display orientation, and keeps the exact source grid beside it:

* napari world axes are ``(S, P, L)`` in mm, i.e. DICOM/ITK patient (LPS) coordinates in ``(z, y, x)``
  order. The default 2D view is then axial in the radiological convention: anterior at the top, the
  patient's right on the left of the screen, the slider running inferior -> superior.
* the layer gets ``scale`` (spacing) and ``translate`` only. For an oblique scan the residual
  rotation cannot be shown; it is dropped around the volume centre (with a warning) and kept in
  :class:`DisplayGeometry`, so labels saved from the layer land on the exact oblique grid.

Example:
    >>> import numpy as np
    >>> geo = DisplayGeometry.from_affine(np.diag([-2.0, -2.0, 3.0, 1.0]), (4, 5, 6))  # LPS grid
    >>> geo.display_shape, geo.scale
    ((6, 5, 4), (3.0, 2.0, 2.0))
    >>> labels = np.zeros(geo.display_shape, np.uint8)
    >>> geo.to_source(labels).shape
    (4, 5, 6)
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

import nibabel as nib
import numpy as np
from nibabel.orientations import apply_orientation, axcodes2ornt, inv_ornt_aff, io_orientation, ornt_transform

#: direction each displayed array axis grows in (nibabel axis codes): napari world = LPS (z, y, x)
DISPLAY_AXCODES = ("S", "P", "L")
#: labels napari shows on the dims sliders, one per world axis
AXIS_LABELS = ("S", "P", "L")
#: RAS+ (x, y, z, 1) -> napari world (S, P, L, 1)
RAS_TO_WORLD = np.array(
    [[0.0, 0.0, 1.0, 0.0], [0.0, -1.0, 0.0, 0.0], [-1.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 1.0]],
)
#: rotations below this are float noise, not an oblique acquisition
OBLIQUE_TOLERANCE_DEG = 0.01


class ObliqueDisplayWarning(UserWarning):
    """napari cannot show an oblique grid's rotation; the saved labels keep it."""

    medseg_warning = True  # the CLI prints it as one line


@dataclass(frozen=True)
class DisplayGeometry:
    """A source voxel grid and the reorientation that shows it in napari.

    Attributes:
        source_affine: 4x4 voxel -> RAS+ mm of the source grid (what labels are saved with).
        source_shape: the source grid's ``(i, j, k)`` shape.
        ornt: nibabel orientation transform, source axes -> display axes (flips and transposes).
    """

    source_affine: np.ndarray
    source_shape: tuple[int, int, int]
    ornt: np.ndarray

    @classmethod
    def from_affine(cls, affine: np.ndarray, shape: tuple[int, ...]) -> DisplayGeometry:
        affine = np.asarray(affine, dtype=np.float64)
        ornt = ornt_transform(io_orientation(affine), axcodes2ornt(DISPLAY_AXCODES))
        return cls(affine, tuple(int(s) for s in shape[:3]), ornt)

    # -- serialisable form, for napari layer metadata (survives deepcopy, layer duplication) --
    def to_dict(self) -> dict[str, Any]:
        return {
            "source_affine": self.source_affine.tolist(),
            "source_shape": list(self.source_shape),
            "ornt": self.ornt.tolist(),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DisplayGeometry:
        return cls(
            np.asarray(data["source_affine"], dtype=np.float64),
            tuple(int(s) for s in data["source_shape"]),
            np.asarray(data["ornt"], dtype=np.float64),
        )

    # -- arrays --
    @property
    def display_shape(self) -> tuple[int, int, int]:
        order = self.ornt[:, 0].astype(int)
        shape = [0, 0, 0]
        for src_axis, dst_axis in enumerate(order):
            shape[dst_axis] = self.source_shape[src_axis]
        return tuple(shape)

    def to_display(self, array: np.ndarray) -> np.ndarray:
        """Source-grid array (any trailing axes kept) -> display orientation; a view, never a copy."""
        return apply_orientation(array, self.ornt)

    def to_source(self, array: np.ndarray) -> np.ndarray:
        """Display-oriented array -> the source grid, voxel for voxel (exact inverse of :meth:`to_display`)."""
        if tuple(array.shape[:3]) != self.display_shape:
            raise ValueError(f"array shape {tuple(array.shape[:3])} is not the display grid {self.display_shape}")
        return apply_orientation(array, _inverse_ornt(self.ornt))

    # -- transforms --
    @property
    def display_affine(self) -> np.ndarray:
        """Display voxel index -> RAS+ mm (exact, rotation included)."""
        return self.source_affine @ inv_ornt_aff(self.ornt, self.source_shape)

    @property
    def world_affine(self) -> np.ndarray:
        """Display voxel index -> napari world (S, P, L) mm, exact (rotation included)."""
        return RAS_TO_WORLD @ self.display_affine

    @property
    def scale(self) -> tuple[float, float, float]:
        return tuple(float(s) for s in np.linalg.norm(self.world_affine[:3, :3], axis=0))

    @property
    def rotation(self) -> np.ndarray:
        """The part of the world transform napari cannot show (identity unless oblique)."""
        return self.world_affine[:3, :3] / np.asarray(self.scale)

    @property
    def oblique_deg(self) -> float:
        """Angle between the voxel grid and the patient axes (0 for an axis-aligned scan)."""
        cos = (np.trace(self.rotation) - 1.0) / 2.0
        return float(np.degrees(np.arccos(np.clip(cos, -1.0, 1.0))))

    @property
    def is_oblique(self) -> bool:
        return self.oblique_deg > OBLIQUE_TOLERANCE_DEG

    @property
    def translate(self) -> tuple[float, float, float]:
        """World position of display voxel 0; for oblique grids chosen so the volume centre is exact."""
        world = self.world_affine
        if not self.is_oblique:
            return tuple(float(t) for t in world[:3, 3])
        centre = (np.asarray(self.display_shape, dtype=np.float64) - 1.0) / 2.0
        true_centre = world[:3, :3] @ centre + world[:3, 3]
        return tuple(float(t) for t in true_centre - np.asarray(self.scale) * centre)

    @property
    def source_axcodes(self) -> str:
        return "".join(nib.aff2axcodes(self.source_affine))

    def layer_transform(self, warn: bool = True, name: str = "scan") -> dict[str, tuple[float, ...]]:
        """``scale`` and ``translate`` for a napari layer; warns once for an oblique grid."""
        if warn and self.is_oblique:
            warnings.warn(
                f"{name}: the voxel grid is oblique ({self.oblique_deg:.1f} degrees from the patient axes); "
                "napari shows it on the nearest patient axes without the rotation. Saved labels keep the "
                "exact oblique geometry.",
                ObliqueDisplayWarning,
                stacklevel=2,
            )
        return {"scale": self.scale, "translate": self.translate}

    def display_index_to_world(self, index: np.ndarray) -> np.ndarray:
        """Where napari draws display voxel ``index`` (rotation dropped, as shown)."""
        index = np.asarray(index, dtype=np.float64)
        return index * np.asarray(self.scale) + np.asarray(self.translate)

    def same_grid(self, other: DisplayGeometry, atol: float = 1e-4) -> bool:
        return self.source_shape == other.source_shape and np.allclose(
            self.source_affine, other.source_affine, atol=atol
        )


def _inverse_ornt(ornt: np.ndarray) -> np.ndarray:
    """The orientation transform that undoes ``ornt`` (axis ``i`` went to ``ornt[i, 0]``, flipped if -1)."""
    inverse = np.zeros_like(ornt)
    for src_axis, (dst_axis, flip) in enumerate(ornt):
        inverse[int(dst_axis)] = (src_axis, flip)
    return inverse
