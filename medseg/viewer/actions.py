"""What the medseg dock widget does, as plain functions that tests (and scripts) call without a GUI.

:func:`segment_layer` runs a model on an image layer's source grid and returns a Labels layer tuple;
:func:`label_volume_rows`, :func:`new_labels_layer`, :func:`save_labels_layer` and :func:`apply_window`
back the widget's other buttons. :mod:`medseg.viewer._widget` only wires them to Qt.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from medseg.errors import MedsegError
from medseg.viewer.layers import (
    contrast_limits,
    empty_labels_like,
    geometry_of,
    info_from_layer,
    info_from_model,
    labels_layer_data,
    volume_from_layer,
)
from medseg.volume import Volume


class SegmentationCancelled(MedsegError):
    """The user pressed Cancel."""


class WidgetProgress:
    """medseg's progress protocol (``stage``/``update``) reporting to a callback, cancellable between steps.

    Example:
        >>> seen = []
        >>> p = WidgetProgress(lambda stage, f: seen.append((stage, f)))
        >>> p.stage("inference"); p.update(0.5); seen[-1]
        ('inference', 0.5)
    """

    def __init__(self, report: Callable[[str, float], None] | None = None, cancel: threading.Event | None = None):
        self.report = report or (lambda stage, fraction: None)
        self.cancel = cancel or threading.Event()
        self.current = ""

    def _check(self) -> None:
        if self.cancel.is_set():
            raise SegmentationCancelled("segmentation cancelled")

    def stage(self, name: str) -> None:
        self._check()
        self.current = name
        self.report(name, 0.0)

    def update(self, fraction: float) -> None:
        self._check()
        self.report(self.current, float(max(0.0, min(1.0, fraction))))

    def finish(self) -> None:
        self.current = "done"
        self.report("done", 1.0)


_SEGMENTERS: dict[tuple[str, str], Any] = {}
_SEGMENTERS_LOCK = threading.Lock()


def get_segmenter(model: str | Path | None, device: str = "auto"):
    """A :class:`~medseg.inference.pipeline.Segmenter`, loaded once per (model, device) and reused."""
    from medseg.devices import resolve_device
    from medseg.inference.pipeline import Segmenter

    resolve_device(device)  # a CUDA device this machine lacks: one line in the panel, before any loading
    key = (str(model or ""), device)
    with _SEGMENTERS_LOCK:
        if key not in _SEGMENTERS:
            _SEGMENTERS[key] = Segmenter(model, device)
        return _SEGMENTERS[key]


def segment_layer(
    image_data: np.ndarray,
    image_metadata: dict,
    model: str | Path | None = None,
    device: str = "auto",
    progress: WidgetProgress | None = None,
    image_name: str = "scan",
) -> tuple:
    """Run medseg on an image layer (on its source grid) and return a named, coloured Labels layer tuple."""
    from medseg.inference.modality import check_modality

    volume = volume_from_layer(image_data, image_metadata)
    segmenter = get_segmenter(model, device)
    check_modality(segmenter.model, volume)  # a CT model refuses an MR layer, as `medseg infer` does
    progress = progress or WidgetProgress()
    result = segmenter.segment(volume, progress=progress)
    progress.finish()
    labels = Volume(result.labels, volume.affine, dict(volume.meta))
    info = info_from_model(segmenter.model)
    data, kwargs, kind = labels_layer_data(labels, name=f"{image_name} {segmenter.model.name}", info=info, warn=False)
    kwargs["metadata"]["model"] = segmenter.model.name
    kwargs["metadata"]["device"] = segmenter.device
    kwargs["metadata"]["timings_s"] = {k: round(v, 3) for k, v in result.timings.items()}
    return data, kwargs, kind


def label_volume_rows(
    labels_data: np.ndarray,
    labels_metadata: dict,
    names: dict[int, str] | None = None,
    image_data: np.ndarray | None = None,
    image_metadata: dict | None = None,
) -> list[dict]:
    """Per label: voxels, volume (ml) and, with an image on the same grid, its mean/std intensity."""
    from medseg.postprocess import label_statistics

    labels = volume_from_layer(np.asarray(labels_data), labels_metadata)
    names = {k: v for k, v in (names or {}).items() if k != 0}
    image = None
    if image_data is not None and image_metadata is not None:
        image_geometry, labels_geometry = geometry_of(image_metadata), geometry_of(labels_metadata)
        if image_geometry is not None and labels_geometry is not None and image_geometry.same_grid(labels_geometry):
            image = volume_from_layer(image_data, image_metadata)
    label_map = np.ascontiguousarray(labels.array).astype(np.int64, copy=False)
    if image is None:  # volumes only
        rows = label_statistics(label_map, labels.with_array(np.zeros(labels.shape, np.float32)), names)
        for row in rows:
            row["mean_intensity"] = row["std_intensity"] = None
        return rows
    return label_statistics(label_map, image, names)


def new_labels_layer(image_data: np.ndarray, image_metadata: dict, model: str | Path | None = None) -> tuple:
    """An empty Labels layer on the image's source grid, with a model's names/colours when given."""
    info = info_from_model(model) if model else None
    return empty_labels_like(image_data, image_metadata, info)


def save_labels_layer(layer: Any, path: str | Path) -> list[str]:
    """Write a napari Labels layer with medseg's writer (exact source geometry, atomic)."""
    from medseg.viewer._writer import write_labels_layer

    state = layer._get_state() if hasattr(layer, "_get_state") else dict(layer)
    return write_labels_layer(str(path), layer.data, state)


def apply_window(layer: Any, preset: str) -> tuple[float, float]:
    """Set an Image layer's contrast to a CT window preset or its percentiles; returns the limits."""
    volume = Volume(np.asarray(layer.data), np.eye(4), {"modality": layer.metadata.get("modality")})
    limits = contrast_limits(volume, preset)
    low, high = layer.contrast_limits_range
    layer.contrast_limits_range = (min(low, limits[0]), max(high, limits[1]))
    layer.contrast_limits = limits
    return limits


def layer_names(layer: Any) -> dict[int, str]:
    return {k: v[0] for k, v in info_from_layer(layer.features, layer.colormap).items()}
