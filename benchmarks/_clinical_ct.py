"""Clinical-size CT grids made from a real scan, for the whole-process benchmarks.

The shared real chest CT (ChestImagingPlatform ``TestInput.nrrd``: 64 x 64 x 50 at 5.3 x 5.3 x 7 mm,
chest to upper abdomen with the couch) is resampled (linear) to a clinical voxel size and, where
asked, centred in a wider field of view filled with air, as a scanner's 500 mm reconstruction
circle holds a body with air around it. Voxels are HU, int16, written as NIfTI.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def shared_ct(name: str = "chestimagingplatform/TestInput.nrrd") -> Path:
    for base in (ROOT.parent, *ROOT.parent.parents):
        path = base / "shared" / "data" / "ct" / name
        if path.exists():
            return path
    raise SystemExit(f"../shared/data/ct/{name} not found")


def clinical_ct(
    out: Path, spacing: tuple[float, float, float], shape: tuple[int, int, int], source: Path | None = None
) -> Path:
    """Resample ``source`` to ``spacing`` on a grid of ``shape`` centred on the scan; air (-1000) outside it."""
    import SimpleITK as sitk

    image = sitk.ReadImage(str(source or shared_ct()))
    size = np.array(image.GetSize())
    centre = image.TransformContinuousIndexToPhysicalPoint([float(x) for x in (size - 1) / 2.0])
    direction = np.array(image.GetDirection()).reshape(3, 3)
    new_spacing, new_size = np.array(spacing, float), np.array(shape, int)
    origin = np.array(centre) - direction @ ((new_size - 1) / 2.0 * new_spacing)
    resampled = sitk.Resample(
        image,
        [int(x) for x in new_size],
        sitk.Transform(),
        sitk.sitkLinear,
        origin.tolist(),
        new_spacing.tolist(),
        image.GetDirection(),
        -1000.0,
        sitk.sitkInt16,
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(resampled, str(out), True)
    return out
