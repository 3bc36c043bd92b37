"""Prompt mode's logic without a GUI: napari points/boxes on a reoriented image -> masks on the source grid."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage as ndi

from medseg.phantom import make_phantom


@pytest.fixture(scope="module")
def kidney_layer(napari_mod):
    """An LPS phantom shown in napari's display orientation, and the centre of its largest kidney."""
    from napari.components import ViewerModel

    from medseg.viewer.launch import add_layer_data
    from medseg.viewer.layers import image_layer_data

    image, labels = make_phantom(11, axcodes="LPS", spacing=(3.0, 3.0, 4.0), oblique=False)
    viewer = ViewerModel()
    (layer,) = add_layer_data(viewer, image_layer_data(image, name="ct"))
    lab, _ = ndi.label(labels.array == 5)
    ref = lab == (np.argmax(np.bincount(lab.ravel())[1:]) + 1)
    depth = ndi.distance_transform_edt(ref, sampling=image.spacing)
    centre = np.unravel_index(np.argmax(depth), ref.shape)
    return viewer, layer, image, ref, centre


def _display_index(layer, source_voxel):
    from medseg.viewer.layers import geometry_of

    geometry = geometry_of(layer.metadata)
    to_display = np.linalg.solve(geometry.display_affine, geometry.source_affine)
    return (to_display @ np.array([*source_voxel, 1.0]))[:3]


def test_points_in_display_space_segment_on_the_source_grid(kidney_layer):
    from medseg.prompt import segment_from_prompts
    from medseg.viewer.layers import geometry_of
    from medseg.viewer.prompting import PromptSession

    _, layer, image, ref, centre = kidney_layer
    session = PromptSession(layer.data, layer.metadata)
    point = _display_index(layer, centre)
    assert session.source_voxel(point) == tuple(int(c) for c in centre)
    mask = session.segment(np.array([point]))
    assert mask.shape == layer.data.shape
    source = geometry_of(layer.metadata).to_source(mask)
    assert np.array_equal(source, segment_from_prompts(image, [centre]))
    assert 2 * (source & ref).sum() / (source.sum() + ref.sum()) > 0.93
    assert session.segment(np.zeros((0, 3))) is None


def test_flat_box_spans_its_flat_axis(kidney_layer):
    from medseg.viewer.layers import geometry_of
    from medseg.viewer.prompting import PromptSession

    _, layer, _, _, centre = kidney_layer
    session = PromptSession(layer.data, layer.metadata)
    p = _display_index(layer, centre)
    rect = np.array(
        [[p[0], p[1] - 5, p[2] - 5], [p[0], p[1] - 5, p[2] + 5], [p[0], p[1] + 5, p[2] + 5], [p[0], p[1] + 5, p[2] - 5]]
    )
    box = session.source_box(rect)
    assert box.contains(centre)
    geometry = geometry_of(layer.metadata)
    flat_axis = int(np.flatnonzero(geometry.ornt[:, 0] == 0)[0])  # the source axis shown as display axis 0
    assert (box.lo[flat_axis], box.hi[flat_axis]) == (0, geometry.source_shape[flat_axis] - 1)
    mask = session.segment(np.array([p]), boxes=[rect])
    outside = np.ones_like(mask)
    lo = np.floor(rect.min(axis=0) + 0.5).astype(int)
    hi = np.floor(rect.max(axis=0) + 0.5).astype(int)
    outside[:, lo[1] : hi[1] + 1, lo[2] : hi[2] + 1] = False
    assert mask.any() and not (mask & outside).any()


def test_accept_paints_a_named_label(kidney_layer):
    from medseg.viewer.actions import new_labels_layer
    from medseg.viewer.launch import add_layer_data
    from medseg.viewer.prompting import PromptSession, accept_mask, label_value

    viewer, layer, _, _, centre = kidney_layer
    (labels,) = add_layer_data(viewer, new_labels_layer(layer.data, layer.metadata))
    session = PromptSession(layer.data, layer.metadata)
    mask = session.segment(np.array([_display_index(layer, centre)]))
    value = accept_mask(labels, mask, name="kidney")
    assert value >= 1 and np.array_equal(labels.data == value, mask)
    assert label_value(labels.features, "kidney") == value
    assert accept_mask(labels, mask, name="kidney") == value  # the same name paints the same value
    assert label_value(labels.features, "spleen") == value + 1


def test_widget_prompt_mode_previews_and_accepts(viewer, tmp_path):
    from medseg.viewer._widget import MedsegWidget
    from medseg.viewer.launch import open_viewer
    from medseg.viewer.prompting import POSITIVE_LAYER, PREVIEW_LAYER
    from tests.viewer.conftest import phantom_files

    image_path, _, image, labels = phantom_files(tmp_path, 11, "LPS", False, spacing=(3.0, 3.0, 4.0))
    open_viewer(image_path, widget=False, viewer=viewer)
    widget = MedsegWidget(viewer)
    positive = widget.start_prompts()
    assert positive.name == POSITIVE_LAYER and PREVIEW_LAYER not in [
        widget.labels_combo.itemText(i) for i in range(widget.labels_combo.count())
    ]
    lab, _ = ndi.label(labels.array == 5)
    ref = lab == (np.argmax(np.bincount(lab.ravel())[1:]) + 1)
    centre = np.unravel_index(np.argmax(ndi.distance_transform_edt(ref, sampling=image.spacing)), ref.shape)
    positive.add(_display_index(viewer.layers[0], centre))
    preview = viewer.layers[PREVIEW_LAYER].data
    assert preview.sum() > 0.9 * ref.sum() and "voxels" in widget.status.text()
    widget.prompt_name.setText("kidney")
    value = widget.accept_prompt()
    painted = widget.labels_layer()
    assert value is not None and (painted.data == value).sum() == preview.sum()
    assert len(viewer.layers[POSITIVE_LAYER].data) == 0 and viewer.layers[PREVIEW_LAYER].data.sum() == 0


def test_accept_is_one_undoable_edit_of_a_napari_labels_layer():
    napari = pytest.importorskip("napari")
    from medseg.viewer.prompting import accept_mask

    layer = napari.layers.Labels(np.zeros((6, 7, 8), np.uint8))
    mask = np.zeros((6, 7, 8), bool)
    mask[1:3, 2:5, 3:6] = True
    value = accept_mask(layer, mask, name="liver")
    assert value > 0 and np.array_equal(layer.data == value, mask)
    layer.undo()
    assert not layer.data.any()
