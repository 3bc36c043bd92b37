"""napari writer: a Labels layer -> label NIfTI on the exact source grid (shape, affine, qform/sform codes).

The layer's data is in medseg's display orientation; the writer undoes the flips/transposes (no
resampling) and hands the result to :func:`medseg.io.write_labels`, which copies the source header's
geometry fields verbatim and writes atomically as uint8/uint16. Label names and colours go to the
JSON sidecar beside it (an existing ``medseg infer`` sidecar is updated and marked as edited).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from medseg.errors import MedsegError
from medseg.io.nifti import NIFTI_SUFFIXES
from medseg.postprocess import label_counts
from medseg.viewer.geometry import DisplayGeometry
from medseg.viewer.layers import META_KEY, geometry_of, info_from_layer, sidecar_path, source_meta_of
from medseg.volume import Volume


def write_labels_layer(path: str, data: Any, meta: dict) -> list[str]:
    """npe2 single-layer writer: ``meta`` is the layer's state (metadata, features, colormap, ...)."""
    path = _nifti_path(path)
    metadata = dict(meta.get("metadata") or {})
    geometry = geometry_of(metadata)
    data = np.asarray(data)
    if geometry is None:
        geometry, metadata = _geometry_from_open_images(data.shape, meta)
    labels = source_labels(data, geometry)
    like = Volume(labels, geometry.source_affine, source_meta_of(metadata))
    from medseg.io import write_labels

    written = [str(write_labels(labels, like, path))]
    info = info_from_layer(meta.get("features"), meta.get("colormap"))
    if info:
        written.append(str(write_sidecar(path, labels, like, info)))
    return written


def source_labels(data: np.ndarray, geometry: DisplayGeometry) -> np.ndarray:
    """Display-oriented label data -> a contiguous label map on the source grid, checked."""
    if data.ndim != 3:
        raise MedsegError(f"a label layer must be 3D to save as NIfTI, got shape {data.shape}")
    if tuple(data.shape) != geometry.display_shape:
        raise MedsegError(
            f"the label layer's shape {tuple(data.shape)} does not match its source grid "
            f"{geometry.display_shape}; it cannot be saved on the source geometry"
        )
    if data.dtype.kind not in "iub":
        raise MedsegError(f"label data must be integers, got {data.dtype}")
    if data.size and int(data.min()) < 0:
        raise MedsegError("label values must not be negative")
    if data.size and int(data.max()) > 65535:
        raise MedsegError(f"label values above 65535 cannot be saved (max is {int(data.max())})")
    return np.ascontiguousarray(geometry.to_source(data))


def write_sidecar(labels_path: Path, labels: np.ndarray, like: Volume, info: dict) -> Path:
    """Names/colours and voxel counts beside the label file; keeps an existing sidecar's provenance."""
    from medseg.io.atomic import write_text_atomic

    path = sidecar_path(labels_path)
    record: dict[str, Any] = {}
    if path.is_file():
        try:
            record = json.loads(path.read_text())
        except ValueError:
            record = {}
    counts = label_counts(labels, max(info, default=0) + 1)
    record["labels"] = {str(k): {"name": name, "color": list(rgb)} for k, (name, rgb) in sorted(info.items())}
    record["label_voxels"] = {info.get(i, (f"label_{i}",))[0]: int(counts[i]) for i in range(1, len(counts))}
    record.setdefault("input", {"path": like.meta.get("source"), "shape": list(like.shape)})
    record["edited"] = {
        "tool": "medseg napari plugin",
        "time": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "labels_path": str(labels_path),
    }
    return write_text_atomic(path, json.dumps(record, indent=2) + "\n")


def _nifti_path(path: str) -> Path:
    p = Path(path)
    if not p.name.lower().endswith(NIFTI_SUFFIXES):
        p = p.with_name(p.name + ".nii.gz")
    return p


def _geometry_from_open_images(shape: tuple[int, ...], meta: Mapping) -> tuple[DisplayGeometry, dict]:
    """A Labels layer napari made (New labels button) has no metadata: take the grid of the open image it fits.

    It must match exactly one medseg image layer in the current viewer by shape and, when set, scale.
    """
    candidates: list[tuple[DisplayGeometry, dict]] = []
    try:
        import napari

        viewer = napari.current_viewer()
    except ImportError:  # pragma: no cover - the writer only runs inside napari
        viewer = None
    for layer in viewer.layers if viewer is not None else ():
        geometry = geometry_of(layer.metadata)
        if geometry is None or geometry.display_shape != tuple(shape[:3]):
            continue
        scale = meta.get("scale")
        if scale is not None and not np.allclose(np.asarray(scale)[-3:], geometry.scale, rtol=1e-4):
            continue
        if not any(geometry.same_grid(g) for g, _ in candidates):
            candidates.append((geometry, {META_KEY: layer.metadata[META_KEY]}))
    if len(candidates) == 1:
        return candidates[0]
    why = "no open medseg image has its shape and scale" if not candidates else "several open images fit it"
    raise MedsegError(
        f"this label layer has no source geometry ({why}); create it with the medseg widget's "
        "'New labels' button, or open the image with medseg, then save again"
    )
