"""The widget's logic as plain functions, on napari's ViewerModel (no display): segment, cancel, volumes, windows."""

from __future__ import annotations

import threading

import nibabel as nib
import numpy as np
import pytest

from medseg.phantom import make_phantom
from tests.conftest import write_tiny_model


@pytest.fixture(scope="module")
def tiny_spec(tmp_path_factory):
    return write_tiny_model(tmp_path_factory.mktemp("model"), spacing=(6.0, 6.0, 8.0))


@pytest.fixture
def ct_layer(napari_mod):
    from napari.components import ViewerModel

    from medseg.viewer.launch import add_layer_data
    from medseg.viewer.layers import image_layer_data

    image, _ = make_phantom(8, axcodes="LPS", spacing=(6.0, 6.0, 8.0), oblique=False)
    viewer = ViewerModel()
    (layer,) = add_layer_data(viewer, image_layer_data(image, name="ct"))
    return viewer, layer, image


def test_segment_layer_matches_the_pipeline_on_the_source_grid(ct_layer, tiny_spec):
    from medseg.inference.pipeline import Segmenter
    from medseg.viewer.actions import WidgetProgress, segment_layer
    from medseg.viewer.launch import add_layer_data
    from medseg.viewer.layers import volume_from_layer

    viewer, layer, image = ct_layer
    seen = []
    result = segment_layer(layer.data, layer.metadata, tiny_spec, "cpu", WidgetProgress(lambda s, f: seen.append(s)))
    (labels,) = add_layer_data(viewer, result)
    expected = Segmenter(tiny_spec, "cpu").segment(image).labels
    assert np.array_equal(volume_from_layer(labels.data, labels.metadata).array, expected)
    assert labels.scale.tolist() == layer.scale.tolist() and labels.translate.tolist() == layer.translate.tolist()
    assert list(labels.features["name"]) == ["background", "class1", "class2"]
    assert np.allclose(labels.colormap.map(np.array([2]))[0][:3], np.array([80, 100, 200]) / 255, atol=1e-3)
    assert labels.metadata["model"] == "tiny3d"
    assert {"preprocess", "inference", "done"} <= set(seen)


def test_cancel_stops_before_the_next_step(ct_layer, tiny_spec):
    from medseg.viewer.actions import SegmentationCancelled, WidgetProgress, segment_layer

    _, layer, _ = ct_layer
    cancel = threading.Event()
    stages = []

    def report(stage, fraction):
        stages.append(stage)
        if stage == "inference":
            cancel.set()

    with pytest.raises(SegmentationCancelled):
        segment_layer(layer.data, layer.metadata, tiny_spec, "cpu", WidgetProgress(report, cancel))
    assert "to source grid" not in stages


def test_label_volumes_come_from_the_source_voxel_size(ct_layer, tmp_path):
    from medseg.viewer.actions import label_volume_rows, new_labels_layer, save_labels_layer
    from medseg.viewer.launch import add_layer_data

    viewer, layer, image = ct_layer
    (labels,) = add_layer_data(viewer, new_labels_layer(layer.data, layer.metadata, "phantom-unet3d"))
    labels.data[5:8, 10:20, 10:15] = 3  # 3 * 10 * 5 voxels of "liver"
    labels.data[2, 2, 2] = 7
    rows = {
        r["name"]: r
        for r in label_volume_rows(labels.data, labels.metadata, {3: "liver", 7: "aorta"}, layer.data, layer.metadata)
    }
    voxel_ml = 6.0 * 6.0 * 8.0 / 1000.0
    assert rows["liver"]["voxels"] == 150 and rows["liver"]["volume_ml"] == pytest.approx(150 * voxel_ml)
    shown = layer.data[5:8, 10:20, 10:15]
    assert rows["liver"]["mean_intensity"] == pytest.approx(float(shown.mean()), abs=1e-3)
    assert rows["aorta"]["voxels"] == 1
    path = save_labels_layer(labels, tmp_path / "edit.nii.gz")[0]
    saved = nib.load(path)
    # no source file behind this volume: the affine is written as given (float32 in the header), codes 1
    assert np.allclose(saved.affine, image.affine, atol=1e-4)
    assert (int(saved.header["qform_code"]), int(saved.header["sform_code"])) == (1, 1)
    assert int((np.asarray(saved.dataobj) == 3).sum()) == 150


def test_window_presets(ct_layer):
    from medseg.viewer.actions import apply_window
    from medseg.viewer.layers import WINDOW_CHOICES

    _, layer, _ = ct_layer
    assert apply_window(layer, "lung") == (-1350.0, 150.0)
    assert tuple(layer.contrast_limits) == (-1350.0, 150.0)
    assert apply_window(layer, "bone") == (-500.0, 1300.0)
    low, high = apply_window(layer, "percentile")
    assert np.percentile(layer.data, 0.5) - 1 <= low < high <= layer.data.max()
    from medseg.cli import view

    cli_choices = next(p for p in view.params if p.name == "window").type.choices
    assert tuple(cli_choices) == WINDOW_CHOICES  # the CLI lists the presets without importing napari


def test_widget_runs_the_default_ct_model_and_refuses_mr(napari_mod):
    from napari.components import ViewerModel

    from medseg.errors import InputError
    from medseg.io.registry import read_volume
    from medseg.models.registry import model_names
    from medseg.viewer._sample_data import CHEST_CT
    from medseg.viewer.actions import segment_layer
    from medseg.viewer.launch import add_layer_data
    from medseg.viewer.layers import image_layer_data, volume_from_layer

    assert model_names()[0] == "ct-anatomy"  # what the widget's model list shows first
    viewer = ViewerModel()
    chest = read_volume(CHEST_CT)
    (layer,) = add_layer_data(viewer, image_layer_data(chest, name="chest"))
    (labels,) = add_layer_data(viewer, segment_layer(layer.data, layer.metadata, None, "cpu"))
    names = list(labels.features["name"])
    assert names[:4] == ["background", "body", "lung_left", "lung_right"] and "skeletal_muscle" in names
    back = volume_from_layer(labels.data, labels.metadata)
    assert back.shape == chest.shape and np.allclose(back.affine, chest.affine)
    assert {2, 3, 5, 6, 8} <= set(np.unique(back.array).tolist())
    mr = chest.with_array(np.clip(np.asarray(chest.array, np.float32) + 1024, 0, None) / 10)  # non-negative
    (mr_layer,) = add_layer_data(viewer, image_layer_data(mr, name="mr-like"))
    with pytest.raises(InputError, match="needs CT in Hounsfield units"):
        segment_layer(mr_layer.data, mr_layer.metadata, None, "cpu")
