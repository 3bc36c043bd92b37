"""medseg Volumes <-> napari layer data tuples, without importing napari.

Every layer medseg makes carries ``metadata["medseg"]`` with the source grid (:class:`DisplayGeometry`)
and the source's own metadata (NIfTI header, DICOM identifiers), so a Labels layer can be written back
on the exact source grid. User-visible keys (``affine``, ``spacing_mm``, ``orientation``, ``source``)
sit beside it for napari's layer-metadata viewers and scripts.

Example:
    >>> from medseg.phantom import make_phantom
    >>> image, labels = make_phantom(1, axcodes="LPS", spacing=(6, 6, 8), oblique=False)
    >>> data, kwargs, kind = image_layer_data(image, name="ct")
    >>> kind, kwargs["scale"]
    ('image', (8.0, 6.0, 6.0))
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from medseg.inference.modality import look_at, regular_sample
from medseg.io.registry import sidecar_path as sidecar_path
from medseg.viewer.geometry import AXIS_LABELS, DisplayGeometry
from medseg.volume import Volume

META_KEY = "medseg"
#: CT display windows as (level, width) in HU
CT_WINDOWS: dict[str, tuple[float, float]] = {
    "soft-tissue": (40.0, 400.0),
    "lung": (-600.0, 1500.0),
    "bone": (400.0, 1800.0),
    "brain": (40.0, 80.0),
}
WINDOW_CHOICES = ("auto", *CT_WINDOWS, "percentile")
#: colour for label values no name/colour is known for (visible on grey, unlike transparent)
UNKNOWN_LABEL_RGB = (255, 0, 255)

LabelInfo = dict[int, tuple[str, tuple[int, int, int]]]
LayerData = tuple[Any, dict[str, Any], str]


# -- intensity --------------------------------------------------------------------------------------
def is_ct(volume: Volume) -> bool:
    """CT in HU if the source says CT or the values look like it (:func:`medseg.inference.modality.look_at`)."""
    return look_at(volume).kind == "CT"


def contrast_limits(volume: Volume, window: str = "auto") -> tuple[float, float]:
    """Display range: a CT window preset (``auto`` = soft tissue for CT) or the 0.5-99.5 percentiles."""
    if window not in WINDOW_CHOICES:
        raise ValueError(f"unknown window {window!r} (choose from {', '.join(WINDOW_CHOICES)})")
    if window == "auto":
        window = "soft-tissue" if is_ct(volume) else "percentile"
    if window in CT_WINDOWS:
        level, width = CT_WINDOWS[window]
        return level - width / 2.0, level + width / 2.0
    data = volume.array if volume.array.ndim == 3 else volume.array[..., 0]
    sample = regular_sample(data, 2_000_000, np.float64)
    nonzero = sample[sample != 0]
    low, high = np.percentile(nonzero if nonzero.size > 100 else sample, [0.5, 99.5])
    if high <= low:
        high = low + 1.0
    return float(low), float(high)


# -- metadata ---------------------------------------------------------------------------------------
def layer_metadata(volume: Volume, geometry: DisplayGeometry) -> dict[str, Any]:
    source_meta = {k: v for k, v in volume.meta.items() if k not in ("label_info",)}
    return {
        META_KEY: {"geometry": geometry.to_dict(), "source_meta": source_meta},
        "source": volume.meta.get("source", "<memory>"),
        "affine": geometry.source_affine.copy(),
        "shape": list(geometry.source_shape),
        "spacing_mm": [round(s, 6) for s in volume.spacing],
        "orientation": geometry.source_axcodes,
        "oblique_deg": round(geometry.oblique_deg, 3),
        "qform_code": volume.meta.get("qform_code"),
        "sform_code": volume.meta.get("sform_code"),
        "modality": volume.meta.get("modality"),
    }


def geometry_of(metadata: Mapping[str, Any] | None) -> DisplayGeometry | None:
    """The source grid recorded in a layer's metadata, or None for layers medseg did not make."""
    info = (metadata or {}).get(META_KEY)
    if not info or "geometry" not in info:
        return None
    return DisplayGeometry.from_dict(info["geometry"])


def source_meta_of(metadata: Mapping[str, Any] | None) -> dict[str, Any]:
    return dict(((metadata or {}).get(META_KEY) or {}).get("source_meta") or {})


def volume_from_layer(data: np.ndarray, metadata: Mapping[str, Any]) -> Volume:
    """A layer's data back on its source grid, as a Volume (for inference, statistics, writing)."""
    geometry = geometry_of(metadata)
    if geometry is None:
        raise ValueError("layer has no medseg source geometry")
    array = np.asarray(data)
    if array.ndim == 4 and array.shape[1:] == geometry.display_shape:  # (c, S, P, L) from channel_axis=0
        array = np.moveaxis(array, 0, -1)
    return Volume(geometry.to_source(array), geometry.source_affine, source_meta_of(metadata))


# -- layers -----------------------------------------------------------------------------------------
def image_layer_data(volume: Volume, name: str | None = None, window: str = "auto", warn: bool = True) -> LayerData:
    """An Image layer tuple: reoriented view of the data, physical scale, CT window or percentiles."""
    geometry = DisplayGeometry.from_affine(volume.affine, volume.shape)
    name = name or _layer_name(volume)
    kwargs: dict[str, Any] = {
        "name": name,
        **geometry.layer_transform(warn=warn, name=name),
        "colormap": "gray",
        "rgb": False,  # a scan with 3 or 4 slices along the last display axis is not a colour image
        "contrast_limits": contrast_limits(volume, window),
        "metadata": layer_metadata(volume, geometry),
        "units": ("mm",) * 3,
        "axis_labels": AXIS_LABELS,
    }
    data = geometry.to_display(volume.array)
    if data.ndim == 4:  # channels: one layer each, napari splits them
        data = np.moveaxis(data, -1, 0)
        kwargs["channel_axis"] = 0
        kwargs["name"] = [f"{name} [{c}]" for c in range(data.shape[0])]
        kwargs["colormap"] = "gray"
        kwargs["contrast_limits"] = [
            contrast_limits(volume.with_array(volume.array[..., c]), window) for c in range(data.shape[0])
        ]
        kwargs["metadata"] = [kwargs["metadata"]] * data.shape[0]
    return data, kwargs, "image"


def label_colormap(info: LabelInfo) -> dict[int | None, tuple[float, ...]]:
    """A napari ``DirectLabelColormap`` dict: background transparent, named labels in their RGB."""
    colors: dict[int | None, tuple[float, ...]] = {None: (*[c / 255 for c in UNKNOWN_LABEL_RGB], 1.0)}
    colors[0] = (0.0, 0.0, 0.0, 0.0)
    for index, (_, rgb) in info.items():
        if index != 0:
            colors[int(index)] = (*[c / 255 for c in rgb], 1.0)
    return colors


def label_features(info: LabelInfo) -> dict[str, list]:
    """Features table (one row per label value) so hovering shows the structure name."""
    indices = [0, *sorted(i for i in info if i != 0)]
    return {"index": indices, "name": ["background", *[info[i][0] for i in indices[1:]]]}


def labels_layer_data(
    labels: Volume, name: str | None = None, info: LabelInfo | None = None, warn: bool = True
) -> LayerData:
    """A Labels layer tuple on ``labels``' own grid, named and coloured from ``info`` when given."""
    if labels.array.ndim != 3:
        raise ValueError(f"a label map must be 3D, got shape {labels.array.shape}")
    if not np.issubdtype(labels.array.dtype, np.integer):
        rounded = np.rint(labels.array)
        if not np.array_equal(rounded, labels.array) or rounded.min(initial=0) < 0:
            raise ValueError("a label map must hold non-negative whole numbers")
        labels = labels.with_array(rounded.astype(np.uint16 if rounded.max(initial=0) > 255 else np.uint8))
    geometry = DisplayGeometry.from_affine(labels.affine, labels.shape)
    name = name or _layer_name(labels)
    metadata = layer_metadata(labels, geometry)
    kwargs: dict[str, Any] = {
        "name": name,
        **geometry.layer_transform(warn=warn, name=name),
        "metadata": metadata,
        "opacity": 0.6,
        "units": ("mm",) * 3,
        "axis_labels": AXIS_LABELS,
    }
    if info:
        kwargs["colormap"] = label_colormap(info)
        kwargs["features"] = label_features(info)
        metadata["label_names"] = {int(k): v[0] for k, v in info.items()}
    return geometry.to_display(labels.array), kwargs, "labels"


def empty_labels_like(image_data: np.ndarray, metadata: Mapping[str, Any], info: LabelInfo | None = None) -> LayerData:
    """A blank Labels layer on an image layer's source grid (geometry recorded, ready to paint and save)."""
    geometry = geometry_of(metadata)
    if geometry is None:
        raise ValueError("the image layer was not opened by medseg, so its source grid is unknown")
    source = Volume(np.zeros(geometry.source_shape, np.uint8), geometry.source_affine, source_meta_of(metadata))
    name = f"{Path(str(metadata.get('source', 'scan'))).name} labels"
    return labels_layer_data(source, name=name, info=info, warn=False)


def _layer_name(volume: Volume) -> str:
    from medseg.inference.outputs import output_stem

    source = volume.meta.get("source")
    return output_stem(Path(source)) if source else "scan"


# -- label names and colours ------------------------------------------------------------------------


def info_from_sidecar(labels_path: str | Path) -> LabelInfo | None:
    """Label names and colours from the JSON sidecar beside a label file, if there is one."""
    path = sidecar_path(labels_path)
    if not path.is_file():
        return None
    try:
        labels = json.loads(path.read_text()).get("labels") or {}
        return {
            int(k): (str(v["name"]), tuple(int(c) for c in v.get("color", UNKNOWN_LABEL_RGB)))
            for k, v in labels.items()
        }
    except (ValueError, KeyError, TypeError, AttributeError):
        return None


def info_from_model(model: Any) -> LabelInfo:
    """Label names and colours of a model (a :class:`~medseg.models.base.Model`, a name or a path)."""
    from medseg.models.registry import open_model

    return {k: (v.name, tuple(v.color)) for k, v in open_model(model).labels.items()}


def info_from_layer(features: Any, colormap: Any) -> LabelInfo:
    """Names (features ``index``/``name``) and colours (a direct colormap) of a Labels layer."""
    names: dict[int, str] = {}
    if features is not None and "name" in features:
        index = list(features["index"]) if "index" in features else list(range(len(features["name"])))
        names = {int(i): str(n) for i, n in zip(index, list(features["name"]))}
    color_dict = getattr(colormap, "color_dict", None)
    if color_dict is None and isinstance(colormap, Mapping):
        color_dict = colormap
    info: LabelInfo = {}
    for index, name in names.items():
        rgba = color_dict.get(index) if color_dict is not None else None
        rgb = tuple(int(round(float(c) * 255)) for c in rgba[:3]) if rgba is not None else UNKNOWN_LABEL_RGB
        info[index] = (name, rgb)
    return info
