"""The one image type every stage of medseg speaks.

A :class:`Volume` is an array in nibabel index order ``(i, j, k[, c])``, a 4x4 affine that maps
voxel indices to RAS+ millimetres, and a ``meta`` dict with what the writers need to put results
back on the source grid (source path, NIfTI header, modality, ...).

Example:
    >>> import numpy as np
    >>> v = Volume(np.zeros((4, 5, 6), np.float32), np.diag([2.0, 2.0, 3.0, 1.0]))
    >>> v.spacing, v.axcodes
    ((2.0, 2.0, 3.0), ('R', 'A', 'S'))
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

#: DICOM/ITK world (LPS+) -> RAS+ and back (its own inverse): ``ras_affine = LPS_TO_RAS @ lps_affine``.
#: The io readers and writers apply it at the boundary, once; read-only because it is shared.
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
LPS_TO_RAS.setflags(write=False)


@dataclass
class Volume:
    """An image (or label map) with its geometry.

    Attributes:
        array: voxel data, indexed ``(i, j, k)`` (nibabel order), optionally a trailing channel axis.
        affine: 4x4 float64 matrix, voxel index -> RAS+ mm.
        meta: free-form metadata; ``source`` (path), ``nifti_header`` (for writing back) and
            ``modality`` are the keys medseg itself uses.
    """

    array: np.ndarray
    affine: np.ndarray
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.affine = np.asarray(self.affine, dtype=np.float64)
        if self.affine.shape != (4, 4):
            raise ValueError(f"affine must be 4x4, got {self.affine.shape}")

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(int(s) for s in self.array.shape[:3])

    @property
    def spacing(self) -> tuple[float, float, float]:
        """Voxel size in mm along each array axis (column norms of the affine)."""
        return tuple(float(x) for x in np.sqrt((self.affine[:3, :3] ** 2).sum(axis=0)))

    @property
    def axcodes(self) -> tuple[str, str, str]:
        """Direction in which each array index grows, e.g. ``('L', 'P', 'S')``."""
        import nibabel as nib

        return tuple(nib.aff2axcodes(self.affine))

    @property
    def voxel_volume_ml(self) -> float:
        return float(abs(np.linalg.det(self.affine[:3, :3])) / 1000.0)

    @property
    def source(self) -> str:
        return str(self.meta.get("source", "<memory>"))

    def with_array(self, array: np.ndarray, affine: np.ndarray | None = None) -> Volume:
        """Same metadata, new data (and optionally a new affine)."""
        return Volume(array, self.affine if affine is None else affine, dict(self.meta))
