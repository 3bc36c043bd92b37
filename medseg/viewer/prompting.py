"""The widget's prompt mode as plain functions: napari points/box -> a mask, accepted into a Labels layer.

napari shows a scan reoriented (:class:`~medseg.viewer.geometry.DisplayGeometry`): the prompt layers
share the image layer's scale and translate, so their data are display voxel indices. A
:class:`PromptSession` turns those into source voxel indices, segments with one
:class:`~medseg.prompt.PromptSegmenter` kept for the image (its work region is reused from click to
click) and hands back the mask in display orientation; :func:`accept_mask` paints it into a Labels
layer as the chosen label. :mod:`medseg.viewer._widget` only wires these to Qt and layer events.

Example:
    >>> session = PromptSession(image_layer.data, image_layer.metadata)  # doctest: +SKIP
    >>> preview = session.segment(positive_points.data, negative_points.data, box_shapes.data)  # doctest: +SKIP
    >>> accept_mask(labels_layer, preview, name="liver")  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from medseg.errors import MedsegError
from medseg.prompt import Box, Prompts, PromptSegmenter
from medseg.viewer.layers import geometry_of, volume_from_layer

#: names of the layers prompt mode adds
POSITIVE_LAYER = "prompt +"
NEGATIVE_LAYER = "prompt -"
BOX_LAYER = "prompt box"
PREVIEW_LAYER = "prompt preview"


class PromptSession:
    """Prompts on one image layer -> masks in its display orientation.

    Args:
        image_data: the image layer's data (display orientation).
        image_metadata: its metadata (medseg's source geometry).
    """

    def __init__(self, image_data: np.ndarray, image_metadata: Mapping[str, Any]) -> None:
        geometry = geometry_of(image_metadata)
        if geometry is None:
            raise MedsegError("prompt mode needs an image opened by medseg (its layer has no source geometry)")
        self.geometry = geometry
        self.volume = volume_from_layer(image_data, image_metadata)
        self.segmenter = PromptSegmenter(self.volume)
        #: display voxel index -> source voxel index
        self.display_to_source = np.linalg.solve(geometry.source_affine, geometry.display_affine)

    def source_voxel(self, display_index: Sequence[float]) -> tuple[int, int, int]:
        point = np.asarray(display_index, float)[-3:]
        ijk = self.display_to_source[:3, :3] @ point + self.display_to_source[:3, 3]
        return tuple(int(v) for v in np.floor(ijk + 0.5))  # type: ignore[return-value]

    def source_box(self, vertices: np.ndarray) -> Box:
        """A Shapes rectangle (display indices) -> a source-voxel box; a flat rectangle, drawn on one
        slice, spans every slice along the axis it is flat in."""
        vertices = np.asarray(vertices, float)[:, -3:]
        lo, hi = np.floor(vertices.min(axis=0) + 0.5), np.floor(vertices.max(axis=0) + 0.5)
        shape = np.array(self.geometry.display_shape)
        flat = hi - lo < 1
        lo = np.where(flat, 0, lo)
        hi = np.where(flat, shape - 1, hi)
        corners = np.array([[(lo, hi)[b][a] for a, b in enumerate(bits)] for bits in np.ndindex(2, 2, 2)])
        source = np.array([self.source_voxel(c) for c in corners])
        return Box.from_corners(source.min(axis=0), source.max(axis=0))

    def segment(
        self,
        positive: np.ndarray,
        negative: np.ndarray | None = None,
        boxes: Sequence[np.ndarray] | None = None,
    ) -> np.ndarray | None:
        """Points layers' data (display indices) and Shapes rectangles -> a display-oriented bool mask.

        None while there is no positive point. With several rectangles the last one counts.
        """
        positive = np.asarray(positive if positive is not None else np.zeros((0, 3)), float).reshape(-1, 3)
        if len(positive) == 0:
            return None
        negative = np.asarray(negative if negative is not None else np.zeros((0, 3)), float).reshape(-1, 3)
        box = self.source_box(boxes[-1]) if boxes is not None and len(boxes) else None
        prompts = Prompts.of([self.source_voxel(p) for p in positive], [self.source_voxel(p) for p in negative], box)
        return np.ascontiguousarray(self.geometry.to_display(self.segmenter.segment(prompts)))


def label_value(features: Any, name: str) -> int:
    """The value of the label called ``name`` in a Labels layer's features, else the next free one."""
    names: dict[int, str] = {}
    if features is not None and "name" in features:
        index = list(features["index"]) if "index" in features else list(range(len(features["name"])))
        names = {int(i): str(n) for i, n in zip(index, list(features["name"]))}
    for value, known in names.items():
        if known == name and value > 0:
            return value
    return max([0, *names]) + 1


def accept_mask(labels_layer: Any, mask: np.ndarray, name: str | None = None, value: int | None = None) -> int:
    """Paint ``mask`` (display orientation) into ``labels_layer`` as ``value`` (or the label called
    ``name``, added to the layer's features when new), undoable as napari's own edits (Ctrl+Z);
    returns the value painted."""
    if mask is None or not np.any(mask):
        raise MedsegError("nothing to accept: the prompt mask is empty")
    data = labels_layer.data
    if tuple(np.shape(data)) != tuple(mask.shape):
        raise MedsegError(f"the labels layer {np.shape(data)} is not on the image's grid {mask.shape}")
    if value is None:
        value = label_value(labels_layer.features, name or "prompt")
    if hasattr(labels_layer, "data_setitem"):  # napari's own edit: one step of the layer's undo history
        labels_layer.data_setitem(np.nonzero(mask), value)
    else:
        data[mask] = value
        labels_layer.data = data
    if name:
        _name_label(labels_layer, value, name)
    return int(value)


def _name_label(labels_layer: Any, value: int, name: str) -> None:
    import pandas as pd

    features = labels_layer.features
    if features is not None and "name" in features and "index" in features:
        table = pd.DataFrame({"index": list(features["index"]), "name": list(features["name"])})
    else:
        table = pd.DataFrame({"index": [0], "name": ["background"]})
    table = table[table["index"] != value]
    table = pd.concat([table, pd.DataFrame({"index": [value], "name": [name]})]).sort_values("index")
    try:
        labels_layer.features = table.reset_index(drop=True)
    except (ValueError, TypeError):  # a layer whose features napari will not replace: keep the paint
        pass
