"""Rendered tests: a real napari window on Xvfb with Mesa; screenshots show each label where the affine says.

Under CI these must run (the display fixture fails rather than skips when Xvfb is missing).
"""

from __future__ import annotations

import numpy as np
import pytest

from tests.viewer.conftest import phantom_files, world_to_source_index

LIVER = 3
LIVER_RGB = np.array([220, 90, 50])


def _settle(viewer) -> None:
    from medseg.viewer.launch import _process_events

    _process_events()


def expected_screen_labels(viewer, shape_hw, labels: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """Label value at each canvas pixel, from the camera and the source affine only (not the layer transform)."""
    h, w = shape_hw
    camera = viewer.scene.camera if hasattr(viewer, "scene") else viewer.camera  # napari >= 0.9: scene.camera
    zoom = camera.zoom  # canvas pixels per mm
    cy, cx = camera.center[-2:]
    rows, cols = np.mgrid[0:h, 0:w]
    world = np.empty((h * w, 3))
    world[:, 0] = viewer.dims.point[0]
    world[:, 1] = cy + (rows.ravel() + 0.5 - h / 2) / zoom
    world[:, 2] = cx + (cols.ravel() + 0.5 - w / 2) / zoom
    idx = np.rint(world_to_source_index(world, affine)).astype(int)
    inside = np.all((idx >= 0) & (idx < np.asarray(labels.shape)), axis=1)
    out = np.zeros(h * w, labels.dtype)
    out[inside] = labels[tuple(idx[inside].T)]
    return out.reshape(h, w)


@pytest.mark.parametrize("axcodes", ["RAS", "LPS"])
def test_screenshot_shows_liver_colour_where_the_liver_is(viewer, tmp_path, axcodes):
    from scipy import ndimage

    from medseg.viewer.launch import open_viewer

    image_path, labels_path, image, labels = phantom_files(tmp_path, 21, axcodes, False, spacing=(4.0, 4.0, 6.0))
    open_viewer(image_path, [labels_path], model="phantom-unet3d", widget=False, viewer=viewer)
    label_layer = viewer.layers[-1]
    label_layer.opacity = 1.0  # exact label colour on screen
    _settle(viewer)
    shot = np.asarray(viewer.screenshot(canvas_only=True, flash=False))[..., :3].astype(int)
    is_liver_colour = np.all(np.abs(shot - LIVER_RGB) <= 3, axis=-1)
    expected = expected_screen_labels(viewer, shot.shape[:2], labels.array, image.affine) == LIVER
    assert expected.sum() > 2000, "the middle axial slice should cut the liver"
    iou = (is_liver_colour & expected).sum() / (is_liver_colour | expected).sum()
    assert iou > 0.9, f"liver on screen overlaps where the affine puts it by IoU {iou:.3f}"
    near = ndimage.binary_dilation(expected, iterations=3)
    assert (is_liver_colour & ~near).sum() == 0, "liver colour appears away from the liver"
    # radiological convention: the patient's right (the liver) on the left of the screen, anterior up
    cols = np.nonzero(is_liver_colour)[1]
    assert cols.mean() < shot.shape[1] / 2
    # hiding the labels removes the colour: it came from the label layer, not the image
    label_layer.visible = False
    _settle(viewer)
    bare = np.asarray(viewer.screenshot(canvas_only=True, flash=False))[..., :3].astype(int)
    assert not np.any(np.all(np.abs(bare - LIVER_RGB) <= 3, axis=-1))


def _wait(condition, timeout=120.0) -> None:
    import time

    from qtpy.QtWidgets import QApplication

    end = time.monotonic() + timeout
    while not condition():
        QApplication.processEvents()
        if time.monotonic() > end:
            raise TimeoutError("the widget did not finish in time")
        time.sleep(0.02)


@pytest.fixture(scope="module")
def tiny_spec(tmp_path_factory):
    from tests.conftest import write_tiny_model

    return write_tiny_model(tmp_path_factory.mktemp("model"), spacing=(6.0, 6.0, 8.0))


def test_widget_segments_in_a_worker_then_cancels_and_saves(viewer, tmp_path, tiny_spec):
    import nibabel as nib

    from medseg.viewer._widget import MedsegWidget
    from medseg.viewer.launch import open_viewer

    image_path, _, image, _ = phantom_files(tmp_path, 9, "LPS", False)
    open_viewer(image_path, widget=False, viewer=viewer)
    widget = MedsegWidget(viewer)
    viewer.window.add_dock_widget(widget, name="medseg")
    widget.model_combo.setCurrentText(str(tiny_spec))
    widget.device_combo.setCurrentText("cpu")
    worker = widget.start_segmentation()
    assert not widget.run_button.isEnabled() and widget.cancel_button.isEnabled()
    _wait(lambda: widget.run_button.isEnabled())
    labels = viewer.layers[-1]
    assert type(labels).__name__ == "Labels" and labels.metadata["model"] == "tiny3d"
    assert labels.data.shape == viewer.layers[0].data.shape
    assert widget.progress_bar.value() == 100 and "done" in widget.status.text()
    assert widget.table.rowCount() == 2 and widget.table.item(0, 0).text() == "1 class1"
    del worker

    n_layers = len(viewer.layers)
    widget.start_segmentation()
    widget.cancel()
    _wait(lambda: widget.run_button.isEnabled())
    assert widget.status.text() == "cancelled" and len(viewer.layers) == n_layers

    labels.data[:] = 0
    labels.data[3, 4:6, 5:9] = 2
    written = widget.save(str(tmp_path / "edited.nii.gz"))
    saved = nib.load(written[0])
    assert saved.shape == image.shape and np.array_equal(saved.affine, nib.load(image_path).affine)
    assert int((np.asarray(saved.dataobj) == 2).sum()) == 8


def test_labels_made_by_napari_save_on_the_open_image_grid(viewer, tmp_path):
    """napari's own New Labels layer has no metadata (napari #5512): the writer takes the matching image's grid."""
    import nibabel as nib
    import npe2

    from medseg.viewer.launch import open_viewer

    image_path, _, image, _ = phantom_files(tmp_path, 10, "RAS", False)
    open_viewer(image_path, widget=False, viewer=viewer)
    img = viewer.layers[0]
    bare = viewer.add_labels(np.zeros(img.data.shape, np.uint8), scale=img.scale, translate=img.translate)
    bare.data[4, 1:4, 2:4] = 5
    out = tmp_path / "bare.nii.gz"
    npe2.write(str(out), [bare.as_layer_data_tuple()], plugin_name="medseg")
    saved = nib.load(out)
    assert saved.shape == image.shape and np.array_equal(saved.affine, nib.load(image_path).affine)
    assert int((np.asarray(saved.dataobj) == 5).sum()) == 6


def test_cli_view_screenshot(display, tmp_path):
    from click.testing import CliRunner
    from PIL import Image

    from medseg.cli import main
    from medseg.io import write_labels

    image_path, _, image, labels = phantom_files(tmp_path, 12, "LPS", False, spacing=(4.0, 4.0, 6.0))
    seg = write_labels(labels.array, image, tmp_path / "ct_seg.nii.gz")
    out = tmp_path / "shot.png"
    result = CliRunner().invoke(
        main, ["view", str(image_path), str(seg), "--model", "phantom-unet3d", "--screenshot", str(out)]
    )
    assert result.exit_code == 0, result.output
    shot = np.asarray(Image.open(out).convert("RGB")).astype(int)
    assert shot.shape[0] >= 600 and shot.shape[1] >= 1000
    # liver at 60% opacity over soft-tissue grey: its hue (red well above blue) covers a real area of the window
    reddish = (shot[..., 0] - shot[..., 2] > 60) & (shot[..., 1] < shot[..., 0])
    assert reddish.sum() > 5000
