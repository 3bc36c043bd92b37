"""A prompt's mask as a named label: alone, or added to (or replacing one label of) a label file.

Label names and colours live in medseg's JSON sidecar beside the label file (``scan_seg.nii.gz`` ->
``scan_seg.json``, ``"labels": {"3": {"name": "liver", "color": [r, g, b]}}``), as ``medseg infer``
and the napari writer write them; an existing sidecar keeps its other keys and gains an ``edited``
record. The label NIfTI is written atomically on the image's exact grid by
:func:`medseg.io.write_labels`.
"""

from __future__ import annotations

import hashlib
import json
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from medseg.io.atomic import write_text_atomic
from medseg.io.nifti import NIFTI_SUFFIXES, read_nifti, write_labels
from medseg.io.registry import sidecar_path as sidecar_of
from medseg.prompt.prompts import PromptError
from medseg.volume import Volume


def colour_of(name: str) -> list[int]:
    """The phantom/ct-anatomy colour for a known structure name, else a stable colour from the name."""
    from medseg.phantom import LABELS

    for known, rgb in LABELS.values():
        if known == name.strip().lower():
            return list(rgb)
    digest = hashlib.sha256(name.encode()).digest()
    return [64 + b % 192 for b in digest[:3]]


def _read_sidecar(path: Path) -> dict:
    if not path.is_file():
        return {}
    try:
        record = json.loads(path.read_text())
    except ValueError:
        raise PromptError("the label sidecar is not valid JSON; fix or remove it", path) from None
    return record if isinstance(record, dict) else {}


def write_prompt_labels(
    mask: np.ndarray,
    image: Volume,
    output: str | Path,
    name: str | None = None,
    labels_path: str | Path | None = None,
) -> tuple[Path, int]:
    """Write ``mask`` and return ``(path, label value)``.

    Without ``labels_path``: a 0/1 label file on ``image``'s grid (and a sidecar naming label 1 when
    ``name`` is given). With it: the label file's map with ``name`` added as a new value, or replacing
    the voxels of the label already called ``name`` (its value kept); other labels are kept except
    where the new mask covers them. The label file must lie on ``image``'s grid.
    """
    output = Path(output)
    if not output.name.lower().endswith(NIFTI_SUFFIXES):
        raise PromptError("the output must be a .nii or .nii.gz file", output)
    if labels_path is None:
        labels = np.zeros(image.shape, np.uint8)
        like = image
        record: dict = {}
    else:
        labels_path = Path(labels_path)
        existing = read_nifti(labels_path)
        if existing.shape != image.shape or not np.allclose(existing.affine, image.affine, atol=1e-4):
            raise PromptError(
                f"the label file's grid ({'x'.join(map(str, existing.shape))}) is not the image's "
                f"({'x'.join(map(str, image.shape))}, same affine needed)",
                labels_path,
            )
        if existing.array.dtype.kind not in "iu" or existing.array.ndim != 3:
            raise PromptError(f"not a 3D integer label map ({existing.array.dtype})", labels_path)
        labels = np.array(existing.array, dtype=np.uint16 if existing.array.max() < 65535 else np.uint32)
        like = existing
        record = _read_sidecar(sidecar_of(labels_path))
    names = {int(k): v for k, v in (record.get("labels") or {}).items() if isinstance(v, dict)}
    value = next((k for k, v in names.items() if name is not None and k > 0 and v.get("name") == name), None)
    if value is None:
        value = max([int(labels.max()) if labels.size else 0, *names]) + 1 if labels_path is not None else 1
    if value > 65535:
        raise PromptError("no free label value below 65536")
    labels[labels == value] = 0
    labels[mask] = value
    written = write_labels(labels, like, output)
    if name is not None:
        names[value] = {"name": name, "color": colour_of(name)}
        counts = np.bincount(labels.ravel(), minlength=max(names) + 1)
        record["labels"] = {str(k): v for k, v in sorted(names.items())}
        record["label_voxels"] = {v.get("name", f"label_{k}"): int(counts[k]) for k, v in sorted(names.items())}
        record.setdefault("input", {"path": image.meta.get("source"), "shape": list(image.shape)})
        record["edited"] = {
            "tool": "medseg prompt",
            "time": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "labels_path": str(output),
            "label": {"value": value, "name": name},
        }
        write_text_atomic(sidecar_of(output), json.dumps(record, indent=2) + "\n")
    return written, value
