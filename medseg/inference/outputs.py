"""Where a case's outputs go and how they are written: labels (NIfTI and/or DICOM SEG), statistics,
preview, and last the JSON sidecar, each atomically (temp file + rename).

The sidecar is written last, so its presence means the case is complete; if any write fails, the
files already written are removed.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import platform
import shutil
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as _package_version
from pathlib import Path

import numpy as np
import torch

from medseg import __version__
from medseg.errors import InputError, MedsegError
from medseg.inference.plan import Plan
from medseg.io import write_labels
from medseg.io.atomic import TMP_MARKER, sha256_of, write_text_atomic
from medseg.io.dicom_seg import missing_references, require_highdicom, write_dicom_seg
from medseg.io.nifti import write_label_masks
from medseg.io.preview import write_preview
from medseg.io.registry import output_stem as output_stem  # re-exported: its home before
from medseg.models.base import Model
from medseg.postprocess import label_counts as count_labels
from medseg.postprocess import label_statistics
from medseg.volume import Volume

OUTPUT_FORMATS = ("nifti", "dicom-seg", "nifti+dicom-seg")
#: what medseg appends to a scan's name for its labels: ``scan.nii.gz`` -> ``scan_seg.nii.gz``
SEG_SUFFIX = "_seg"
#: output kinds, in the order :func:`write_outputs` writes them (the sidecar is always last)
OUTPUT_KINDS = ("labels", "dicom_seg", "masks", "stats_csv", "stats_json", "preview", "sidecar")


def labels_name(stem: str) -> str:
    """The label NIfTI's file name for a scan or case named ``stem``."""
    return f"{stem}{SEG_SUFFIX}.nii.gz"


def default_output(input_path: Path) -> Path:
    return input_path.parent / labels_name(output_stem(input_path))


def _outputs_for(labels_path: Path) -> dict[str, Path]:
    stem = output_stem(labels_path)
    folder = labels_path.parent
    return {
        "labels": labels_path,
        "sidecar": folder / f"{stem}.json",
        "stats_csv": folder / f"{stem}_stats.csv",
        "stats_json": folder / f"{stem}_stats.json",
        "preview": folder / f"{stem}_preview.png",
    }


def output_paths(
    input_path: str | Path, output: str | Path | None = None, output_format: str = "nifti", split_masks: bool = False
) -> dict[str, Path]:
    """Where ``infer`` writes for ``input_path``: labels, DICOM SEG, sidecar, stats and preview paths.

    With ``output_format="dicom-seg"`` the output (default ``<stem>_seg.dcm``) is the SEG file;
    with ``nifti+dicom-seg`` the SEG goes beside the label NIfTI under the same stem. ``split_masks``:
    a folder ``<stem>_masks`` for one mask per label, beside the labels.
    """
    paths = _output_paths(input_path, output, output_format)
    if split_masks:
        paths["masks"] = paths["sidecar"].with_name(f"{output_stem(paths['sidecar'])}_masks")
    return paths


def _output_paths(input_path: str | Path, output: str | Path | None, output_format: str) -> dict[str, Path]:
    if output_format not in OUTPUT_FORMATS:
        raise MedsegError(f"unknown output format '{output_format}' (choose from {', '.join(OUTPUT_FORMATS)})")
    if output_format == "dicom-seg":
        seg_path = (
            Path(output)
            if output
            else default_output(Path(input_path)).with_name(f"{output_stem(Path(input_path))}{SEG_SUFFIX}.dcm")
        )
        if not seg_path.name.lower().endswith(".dcm"):
            raise MedsegError("DICOM SEG output must be a .dcm file", seg_path)
        if TMP_MARKER in seg_path.name:
            raise MedsegError("output name is reserved for temporary files", seg_path)
        paths = _outputs_for(seg_path.with_name(seg_path.name[: -len(".dcm")] + ".nii.gz"))
        del paths["labels"]  # keys present are exactly the files this run writes
        paths["dicom_seg"] = seg_path
        return paths
    labels_path = Path(output) if output else default_output(Path(input_path))
    if not labels_path.name.lower().endswith((".nii", ".nii.gz")):
        raise MedsegError("output must be a .nii or .nii.gz file", labels_path)
    if TMP_MARKER in labels_path.name:
        raise MedsegError("output name is reserved for temporary files", labels_path)
    paths = _outputs_for(labels_path)
    if output_format == "nifti+dicom-seg":
        paths["dicom_seg"] = labels_path.parent / f"{output_stem(labels_path)}.dcm"
    return paths


def check_dicom_seg_input(volume: Volume) -> None:
    """Fail before inference when a DICOM SEG cannot be written for this input."""
    require_highdicom()
    dicom = volume.meta.get("dicom")
    if not dicom:
        raise InputError("DICOM SEG output needs a DICOM input series; use --format nifti", volume.source)
    if dicom.get("n_volumes", 1) > 1 or any(f.get("mosaic") is not None for f in dicom["frames"]):
        raise InputError("DICOM SEG output is not supported for 4D or Siemens mosaic series", volume.source)
    problem = missing_references(dicom)
    if problem:
        raise InputError(problem, volume.source)


def _stats_csv(rows: list[dict]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0].keys()) if rows else ["label", "name"], lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


@dataclass
class Written:
    """What :func:`write_outputs` wrote: ``outputs`` (kind -> path), the label voxel counts by name,
    the per-label statistics (when computed) and the case's final timing record, as in the sidecar."""

    outputs: dict[str, str]
    label_counts: dict[str, int]
    statistics: list[dict] | None
    timings: dict[str, float]


def write_outputs(
    input_path: Path,
    volume: Volume,
    labels: np.ndarray,
    plan: Plan,
    model: Model,
    paths: dict[str, Path],
    timings: dict[str, float],
    t0: float,
    *,
    stats: bool = False,
    preview: bool = False,
    statistics: bool = False,
    input_sha256: str | None = None,
    extra: dict | None = None,
) -> Written:
    """Write labels (NIfTI and/or DICOM SEG), optional stats/preview, then the sidecar.

    ``timings``: the case's stage timings so far; this adds ``write`` (statistics included) and
    ``total`` (since ``t0``, the case's start, up to the sidecar) and returns the record the
    sidecar holds. ``statistics``: compute per-label statistics even without ``stats`` (a batch
    needs them for its cohort table); the label counts are then read from them. ``input_sha256``:
    the input file's sha256 when the caller has already hashed it (a batch does, for its ledger).
    ``extra``: more sidecar keys (the modality check, the crop, the model's notes).
    """
    t = time.perf_counter()
    names = model.label_names()
    rows = None
    if stats or statistics:
        rows = label_statistics(labels, volume, {k: v for k, v in names.items() if k != 0})
    if rows is None:
        counts = count_labels(labels, model.out_channels)
    else:  # every label present or named has a row; the rest are absent
        found = {int(r["label"]): int(r["voxels"]) for r in rows}
        counts = [found.get(i, 0) for i in range(max(model.out_channels, max(found, default=0) + 1))]
    label_counts = {names.get(i, f"label_{i}"): int(counts[i]) for i in range(1, len(counts))}
    written: list[Path] = []
    try:
        outputs = {}
        if paths.get("labels") is not None:
            written.append(write_labels(labels, volume, paths["labels"]))
            outputs["labels"] = str(paths["labels"])
        if paths.get("dicom_seg") is not None:
            label_info = {k: (v.name, tuple(v.color), v.code) for k, v in model.foreground().items()}
            written.append(write_dicom_seg(labels, volume, paths["dicom_seg"], label_info, model.name))
            outputs["dicom_seg"] = str(paths["dicom_seg"])
        if paths.get("masks") is not None:
            names_by_value = {k: v.name for k, v in model.labels.items()}
            written.append(write_label_masks(labels, volume, paths["masks"], names_by_value))
            outputs["masks"] = str(paths["masks"])
        if stats:
            written.append(write_text_atomic(paths["stats_csv"], _stats_csv(rows)))
            written.append(write_text_atomic(paths["stats_json"], json.dumps(rows, indent=2) + "\n"))
            outputs.update(stats_csv=str(paths["stats_csv"]), stats_json=str(paths["stats_json"]))
        if preview:
            colors = {k: v.color for k, v in model.labels.items()}
            written.append(write_preview(paths["preview"], volume, labels, colors, names))
            outputs["preview"] = str(paths["preview"])
        outputs["sidecar"] = str(paths["sidecar"])
        if input_sha256 is None and input_path.is_file():
            input_sha256 = sha256_of(input_path)
        now = time.perf_counter()
        final = {**timings, "write": now - t, "total": now - t0}
        final = {k: round(v, 3) for k, v in final.items()}
        record = sidecar(input_path, volume, model, plan, label_counts, outputs, final, input_sha256)
        record.update(extra or {})
        written.append(write_text_atomic(paths["sidecar"], json.dumps(record, indent=2) + "\n"))
    except BaseException:
        for p in written:
            if p.is_dir():
                shutil.rmtree(p, ignore_errors=True)
            with contextlib.suppress(FileNotFoundError):
                p.unlink()
        raise
    return Written(outputs, label_counts, rows, final)


def _dicom_input(volume: Volume) -> dict:
    dicom = volume.meta.get("dicom")
    if not dicom:
        return {}
    keys = ("stack_id", "series_instance_uid", "study_instance_uid", "series_number", "series_description")
    return {
        "dicom": {
            **{k: dicom.get(k) for k in keys},
            "resampled": dicom.get("resampled"),
            "n_files": len(dicom.get("files", [])),
        },
        "warnings": list(volume.meta.get("warnings", [])),
    }


def sidecar(input_path, volume, model, plan, label_counts, outputs, timings, input_sha256) -> dict:
    """The JSON sidecar of a case: input geometry, model, labels, plan, timings, outputs, environment."""
    return {
        "medseg_version": __version__,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "input": {
            "path": str(input_path),
            "sha256": input_sha256,
            "shape": list(volume.shape),
            "spacing_mm": [round(s, 6) for s in volume.spacing],
            "orientation": "".join(volume.axcodes),
            "affine": volume.affine.tolist(),
            **_dicom_input(volume),
        },
        "model": model.describe(),
        "labels": {str(k): {"name": v.name, "color": list(v.color)} for k, v in sorted(model.labels.items())},
        "label_voxels": label_counts,
        "plan": plan.to_dict(),
        "timings_s": timings,
        "outputs": outputs,
        "environment": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "monai": _version("monai"),
            "device": model.device,
        },
    }


def _version(package: str) -> str | None:
    """An installed package's version without importing it (MONAI takes seconds to import)."""
    try:
        return _package_version(package)
    except PackageNotFoundError:
        return None
