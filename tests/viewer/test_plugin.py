"""The npe2 plugin without a display: manifest, reader, writer round trip (RAS, LPS, oblique, real scans), samples."""

from __future__ import annotations

import json
import subprocess
import sys
import warnings

import nibabel as nib
import numpy as np
import pytest

from medseg.viewer.launch import add_layer_data
from tests.viewer.conftest import MANIFEST, phantom_files

PAINT = 9  # a label value the phantom does not use


@pytest.fixture
def plugin(napari_mod, npe2pm):
    """medseg's manifest registered in npe2's test plugin manager (as the napari.manifest entry point would)."""
    with npe2pm.tmp_plugin(manifest=str(MANIFEST)) as p:
        yield p


def _read(path):
    import npe2

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # oblique display warning is tested separately
        return npe2.read([str(path)], stack=False, plugin_name="medseg")


def test_manifest_validates_and_imports(napari_mod):
    done = subprocess.run(
        [sys.executable, "-m", "npe2", "validate", str(MANIFEST), "--imports"], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "valid" in done.stdout


def test_reader_keeps_affine_and_finds_labels_by_intent(plugin, tmp_path):
    from medseg.io import write_labels

    image_path, _, image, labels = phantom_files(tmp_path, 1, "LPS", False)
    seg_path = write_labels(labels.array, image, tmp_path / "ct_LPS_seg.nii.gz")  # NIFTI_INTENT_LABEL
    (data, kwargs, kind) = _read(image_path)[0]
    assert kind == "image"
    assert np.array_equal(kwargs["metadata"]["affine"], nib.load(image_path).affine)
    assert kwargs["metadata"]["shape"] == list(image.shape)
    assert kwargs["contrast_limits"] == (-160.0, 240.0)  # CT soft-tissue window
    assert kwargs["scale"] == pytest.approx((8.0, 6.0, 6.0))
    (ldata, lkwargs, lkind) = _read(seg_path)[0]
    assert lkind == "labels" and ldata.shape == data.shape
    assert lkwargs["metadata"]["sform_code"] == int(nib.load(image_path).header["sform_code"])


@pytest.mark.parametrize("axcodes, oblique", [("RAS", False), ("LPS", False), ("PSR", False), ("LPS", True)])
def test_paint_save_reload_is_exact(plugin, tmp_path, axcodes, oblique):
    """open -> paint -> save through the plugin's writer -> nibabel: same grid, edits on the voxels painted."""
    import npe2
    from napari.components import ViewerModel

    from medseg.io import read_volume
    from medseg.viewer._reader import volume_layer

    image_path, labels_path, image, labels = phantom_files(tmp_path, 4, axcodes, oblique)
    viewer = ViewerModel()
    (img_layer,) = add_layer_data(viewer, _read(image_path)[0])
    # the ground truth has no sidecar or label intent: open it as labels, as `medseg view IMAGE LABELS` does
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        (lab_layer,) = add_layer_data(viewer, volume_layer(read_volume(labels_path), as_labels=True))
    # paint a brush stroke in the middle axial slice, in world coordinates as the mouse would
    centre = np.asarray(img_layer.extent.world).mean(axis=0)
    lab_layer.brush_size = 3
    lab_layer.paint(lab_layer.world_to_data(centre), PAINT, refresh=False)
    painted_display = np.argwhere(lab_layer.data == PAINT)
    assert len(painted_display) > 0
    out = tmp_path / "edited_seg.nii.gz"
    written = npe2.write(str(out), [lab_layer.as_layer_data_tuple()], plugin_name="medseg")
    assert str(out) in [str(w) for w in written]

    saved, source = nib.load(out), nib.load(image_path)
    assert saved.shape == source.shape
    assert np.array_equal(saved.affine, source.affine)
    assert np.array_equal(saved.header.get_qform(), source.header.get_qform())
    assert np.array_equal(saved.header.get_sform(), source.header.get_sform())
    assert int(saved.header["qform_code"]) == int(source.header["qform_code"])
    assert int(saved.header["sform_code"]) == int(source.header["sform_code"])
    assert saved.get_data_dtype() == np.uint8
    out_data = np.asarray(saved.dataobj)
    # the image values under the brush (as displayed) are the source image's values at the saved edit
    shown_under_brush = np.sort(img_layer.data[tuple(painted_display.T)])
    assert np.array_equal(np.sort(np.asarray(source.dataobj)[out_data == PAINT]), shown_under_brush)
    # everything not painted is the original ground truth, voxel for voxel
    untouched = out_data != PAINT
    assert np.array_equal(out_data[untouched], labels.array[untouched])
    if not oblique:  # where napari drew the stroke is where the saved file has it, in true patient space
        from tests.viewer.conftest import world_to_source_index

        world = np.array([lab_layer.data_to_world(p) for p in painted_display])
        src = np.rint(world_to_source_index(world, source.affine)).astype(int)
        assert np.all(out_data[tuple(src.T)] == PAINT)


def test_real_mr_round_trip_keeps_qform_sform_code_2(plugin, test_data, tmp_path):
    """A real MR (nibabel's anatomical.nii: LAS, big-endian int16, qform/sform code 2)."""
    import npe2
    from napari.components import ViewerModel

    from medseg.viewer.layers import empty_labels_like

    path = test_data / "nifti" / "nibabel" / "tests_data" / "anatomical.nii"
    (data, kwargs, kind) = _read(path)[0]
    assert kind == "image"
    low, high = kwargs["contrast_limits"]
    assert np.percentile(np.asarray(nib.load(path).dataobj), 1) <= high and low < high  # MR: percentiles
    viewer = ViewerModel()
    image_layer = viewer.add_image(data, **kwargs)
    (labels,) = add_layer_data(viewer, empty_labels_like(image_layer.data, image_layer.metadata))
    labels.data[10, 5:9, 7:12] = 2
    out = tmp_path / "anat_seg.nii"
    npe2.write(str(out), [labels.as_layer_data_tuple()], plugin_name="medseg")
    saved, source = nib.load(out), nib.load(path)
    assert saved.shape == source.shape and np.array_equal(saved.affine, source.affine)
    assert (int(saved.header["qform_code"]), int(saved.header["sform_code"])) == (2, 2)
    assert int((np.asarray(saved.dataobj) == 2).sum()) == 4 * 5


def test_dicom_folder_opens_and_labels_save_on_its_oblique_grid(plugin, test_data, tmp_path):
    """Hitachi double-oblique MR series (real DICOM): read through medseg's io, saved on its exact grid."""
    import npe2
    from napari.components import ViewerModel

    from medseg.io import read_volume
    from medseg.viewer.layers import empty_labels_like

    folder = test_data / "dicom" / "dicom2nifti" / "tests_data" / "hitachi" / "anatomical" / "001"
    reference = read_volume(folder)
    layers = _read(folder)
    assert len(layers) == 1
    data, kwargs, kind = layers[0]
    assert kind == "image" and kwargs["metadata"]["oblique_deg"] > 1
    assert np.array_equal(kwargs["metadata"]["affine"], reference.affine)
    viewer = ViewerModel()
    image_layer = viewer.add_image(data, **kwargs)
    (labels,) = add_layer_data(viewer, empty_labels_like(image_layer.data, image_layer.metadata))
    labels.data[1, :3, :3] = 1
    out = tmp_path / "dicom_seg.nii.gz"
    npe2.write(str(out), [labels.as_layer_data_tuple()], plugin_name="medseg")
    saved = nib.load(out)
    assert saved.shape == reference.shape
    assert np.allclose(saved.affine, reference.affine, atol=1e-5)  # float32 qform/sform in the NIfTI header
    assert int((np.asarray(saved.dataobj) == 1).sum()) == 9


def test_writer_keeps_names_colours_and_marks_the_sidecar_edited(plugin, tmp_path):
    import npe2
    from napari.components import ViewerModel

    from medseg.viewer._reader import read_layers

    image_path, _, image, labels = phantom_files(tmp_path, 2, "RAS", False)
    sidecar = tmp_path / "ct_RAS_seg.json"
    sidecar.write_text(
        json.dumps({"model": {"name": "phantom-unet3d"}, "labels": {"3": {"name": "liver", "color": [220, 90, 50]}}})
    )
    from medseg.io import write_labels

    seg_path = write_labels(labels.array, image, tmp_path / "ct_RAS_seg.nii.gz")
    ((data, kwargs, kind),) = read_layers(str(seg_path))
    assert kind == "labels" and kwargs["features"]["name"] == ["background", "liver"]
    viewer = ViewerModel()
    (layer,) = add_layer_data(viewer, (data, kwargs, kind))
    assert np.allclose(layer.colormap.map(np.array([3]))[0][:3], np.array([220, 90, 50]) / 255, atol=1e-3)
    assert layer.get_status(layer.data_to_world(np.argwhere(layer.data == 3)[0]), world=True)["value"].endswith(
        "name: liver"
    )
    npe2.write(str(seg_path), [layer.as_layer_data_tuple()], plugin_name="medseg")
    record = json.loads(sidecar.read_text())
    assert record["model"] == {"name": "phantom-unet3d"}  # provenance kept
    assert record["labels"]["3"] == {"name": "liver", "color": [220, 90, 50]}
    assert record["label_voxels"]["liver"] == int((labels.array == 3).sum())
    assert record["edited"]["tool"] == "medseg napari plugin"


def test_sample_data_is_a_ct_phantom_with_named_ground_truth(plugin):
    from npe2 import PluginManager

    pm = PluginManager.instance()
    samples = {s.key: s for s in pm.get_manifest("medseg").contributions.sample_data}
    assert set(samples) == {"chest_ct", "phantom_ct", "phantom_ct_labels"}
    ((chest, ckw, ckind),) = pm.get_command(samples["chest_ct"].command).exec()
    assert ckind == "image" and chest.ndim == 3 and chest.size == 64 * 64 * 50
    assert chest.min() <= -900 and chest.max() > 300  # HU: air and bone
    (image, ikw, ikind), (labels, lkw, lkind) = pm.get_command(samples["phantom_ct_labels"].command).exec()
    assert (ikind, lkind) == ("image", "labels")
    assert image.min() <= -900 and ikw["contrast_limits"] == (-160.0, 240.0)
    assert "liver" in lkw["features"]["name"] and labels.shape == image.shape
    assert set(np.unique(labels)) <= set(lkw["features"]["index"])
