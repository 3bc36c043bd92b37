"""Does a scan look like what a model accepts? The modality check before any work is done.

A model says what it accepts (:class:`~medseg.models.base.Accepts`: ``CT`` in Hounsfield units,
``MR`` or ``any``). :func:`look_at` says what a scan looks like: the DICOM Modality tag where the
reader kept one, otherwise its intensity distribution. CT in HU has air near -1000 (outside the
body, in the lungs) and soft tissue near 0..100 with fat below 0; CT stored without its rescale
has air near 0 and water near 1000; MR and PET have no negative values and no such peaks.
:func:`check_modality` refuses a mismatch with one line (what the model needs, what the scan looks
like); ``force`` lets it run and returns the note the sidecar keeps.

Example:
    >>> look_at(Volume(np.full((8, 8, 8), -1000.0), np.eye(4))).kind  # doctest: +SKIP
    'CT'
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from medseg.errors import InputError
from medseg.volume import Volume

#: at most this many voxels are looked at (a regular subsample of the scan)
SAMPLE_VOXELS = 1_000_000


@dataclass(frozen=True)
class Look:
    """What a scan looks like: ``kind`` (``CT``, ``CT-raw`` for CT without its rescale, ``MR``,
    ``PT``, another DICOM modality, or ``unknown``), whether its values are HU, and why."""

    kind: str
    hu: bool
    reason: str

    @property
    def words(self) -> str:
        return {
            "CT": "CT in HU",
            "CT-raw": "CT stored without its rescale (not HU)",
            "MR": "MR or PET (non-negative intensities)",
            "PT": "PET",
            "unknown": "not CT in HU",
        }.get(self.kind, self.kind)

    def to_dict(self) -> dict:
        return {"looks_like": self.kind, "hu": self.hu, "reason": self.reason}


def regular_sample(array: np.ndarray, max_voxels: int = SAMPLE_VOXELS, dtype=np.float32) -> np.ndarray:
    """Every n-th voxel along each axis (of the first channel), at most about ``max_voxels`` of them."""
    data = array if array.ndim == 3 else array[..., 0]
    step = max(1, int(np.ceil((data.size / max_voxels) ** (1 / 3))))
    return np.asarray(data[::step, ::step, ::step], dtype=dtype)


def intensity_look(array: np.ndarray) -> Look:
    """What the values alone say (no header)."""
    values = regular_sample(array).ravel()
    values = values[np.isfinite(values)]
    if values.size == 0:
        return Look("unknown", False, "no finite values")
    lo, p50, hi = (float(x) for x in np.percentile(values, [0.5, 50, 99.5]))
    span = f"values {lo:.0f}..{hi:.0f}, median {p50:.0f}"
    air = float(np.mean((values >= -1200) & (values <= -800)))
    tissue = float(np.mean((values >= -200) & (values <= 250)))
    padding_ok = lo >= -3100
    if air >= 0.005 and tissue >= 0.02 and padding_ok and hi <= 4000:
        return Look("CT", True, f"air near -1000 HU ({air:.0%} of voxels) and soft tissue near 0..100 HU; {span}")
    if lo >= -1 and hi > 200:
        low = float(np.mean(values <= 50))
        water = float(np.mean((values >= 900) & (values <= 1150)))
        integral = bool(np.all(values == np.round(values)))
        if integral and low >= 0.005 and water >= 0.02 and hi <= 4100:
            return Look("CT-raw", False, f"air near 0 and water near 1000, as CT without RescaleIntercept; {span}")
        return Look("MR", False, f"no negative values and no air peak near -1000 HU; {span}")
    fat = float(np.mean((values >= -200) & (values <= -30)))
    if tissue >= 0.5 and fat >= 0.01 and lo > -500 and hi < 1500:  # a crop inside the body: no air
        return Look("CT", True, f"soft-tissue values only (a crop inside the body?); {span}")
    return Look("unknown", False, f"no air peak near -1000 HU and no soft tissue near 0..100 HU; {span}")


def look_at(volume: Volume) -> Look:
    """The DICOM Modality tag where there is one (and, for CT, values in HU); else the intensities."""
    tag = str(volume.meta.get("modality") or "").strip().upper()
    if tag and tag != "CT":
        return Look(tag, False, f"DICOM Modality is {tag}")
    seen = intensity_look(volume.array)
    if tag == "CT":
        if seen.kind == "CT-raw":
            return seen
        return Look("CT", True, "DICOM Modality is CT")
    return seen


def check_modality(model, volume: Volume, force: bool = False) -> dict | None:
    """Refuse ``volume`` if it does not look like what ``model`` accepts (``InputError``, one line).

    Returns the sidecar's ``modality`` record (None for a model that accepts any modality); with
    ``force`` a mismatch is recorded there as a warning instead of refused.
    """
    wanted = str(model.accepts.modality or "any").upper()
    if wanted == "ANY":
        return None
    look = look_at(volume)
    ok = look.kind == "CT" and look.hu if wanted == "CT" else look.kind == wanted
    record = {"required": wanted, **look.to_dict()}
    if ok:
        return record
    need = "CT in Hounsfield units" if wanted == "CT" else wanted
    message = f"model '{model.name}' needs {need}, but this scan looks like {look.words} ({look.reason})"
    if not force:
        raise InputError(f"{message}; pass --force-modality to run it anyway", volume.source)
    return {**record, "forced": True, "warning": message}
