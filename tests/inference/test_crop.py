"""``--crop-to-body``: the model sees the body's box with the right affine; outside is background."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest

from medseg.errors import InputError
from medseg.inference.crop import Region, crop, paste
from medseg.inference.pipeline import infer_file
from medseg.models.base import Accepts, Label, Model
from medseg.models.ct_anatomy.body import body_region
from medseg.volume import Volume
from tests.conftest import save_nifti


class WorldSide(Model):
    """Labels tissue (> -500 HU) by the world side it lies on: 1 where RAS x < 0, 2 where x >= 0.

    Its labels depend on the affine, so a crop whose affine is off by a voxel changes them."""

    family = "test-classical"

    def __init__(self):
        super().__init__()
        self.name, self.version = "world-side", "0.1"
        self.labels = {0: Label("background"), 1: Label("left_side"), 2: Label("right_side")}
        self.accepts = Accepts("CT", 1, "HU")
        self.shapes = []

    def model_grid(self, volume):  # pragma: no cover - no model space
        raise NotImplementedError

    def prepare(self, volume):  # pragma: no cover - no model space
        raise NotImplementedError

    def run_algorithm(self, volume, progress, host_budget=None):
        self.shapes.append(volume.shape)
        ijk = np.indices(volume.shape).reshape(3, -1)
        x = (volume.affine[:3, :3] @ ijk + volume.affine[:3, 3:])[0].reshape(volume.shape)
        tissue = np.asarray(volume.array) > -500
        return np.where(tissue, np.where(x < 0, 1, 2), 0).astype(np.uint8)


def _torso(shape=(70, 60, 30)):
    hu = np.full(shape, -1000, np.int16)
    i, j = np.ogrid[: shape[0], : shape[1]]
    inside = ((i - 30) / 18.0) ** 2 + ((j - 28) / 14.0) ** 2 <= 1
    hu[inside, :] = 40
    hu[12:16, 20:24, :] = -100
    return hu


AFFINE = np.array([[0.0, -1.6, 0.0, 50.0], [-1.4, 0.0, 0.0, 30.0], [0.0, 0.0, 3.0, -40.0], [0, 0, 0, 1]])


def test_body_region_is_the_body_box_with_a_margin():
    hu = _torso()
    vol = Volume(hu, np.diag([1.0, 1.0, 3.0, 1.0]))
    region = body_region(vol, margin_mm=4.0)
    assert region.start == (12 - 4, 14 - 4, 0) and region.stop == (49 + 4, 43 + 4, 30)
    assert body_region(Volume(np.full((20, 20, 5), -1000, np.int16), np.eye(4))) is None


def test_crop_keeps_world_coordinates_and_paste_restores_the_grid():
    vol = Volume(_torso(), AFFINE)
    region = Region((10, 12, 3), (50, 45, 25))
    sub = crop(vol, region)
    assert sub.shape == region.shape
    assert np.allclose(sub.affine @ [0, 0, 0, 1], vol.affine @ [10, 12, 3, 1])
    labels = np.ones(region.shape, np.uint8)
    full = paste(labels, vol.shape, region)
    assert full.sum() == labels.sum() and full[10, 12, 3] == 1 and full[9, 12, 3] == 0


def test_crop_to_body_gives_the_uncropped_labels_and_records_the_box(tmp_path):
    hu = _torso()
    src = save_nifti(tmp_path / "torso.nii.gz", hu, AFFINE)
    plain_model, cropped_model = WorldSide(), WorldSide()
    plain = infer_file(src, tmp_path / "plain_seg.nii.gz", model=plain_model)
    cropped = infer_file(src, tmp_path / "crop_seg.nii.gz", model=cropped_model, crop_to_body=True)
    a = np.asarray(nib.load(str(plain.labels_path)).dataobj)
    b = np.asarray(nib.load(str(cropped.labels_path)).dataobj)
    assert np.array_equal(a, b) and a.any()
    assert np.array_equal(nib.load(str(cropped.labels_path)).affine, nib.load(str(src)).affine)
    assert cropped_model.shapes[0] != hu.shape and np.prod(cropped_model.shapes[0]) < 0.6 * hu.size
    sidecar = json.loads(cropped.sidecar_path.read_text())
    assert (
        tuple(np.subtract(sidecar["crop_to_body"]["stop"], sidecar["crop_to_body"]["start"]))
        == (cropped_model.shapes[0])
    )
    assert "crop" in sidecar["timings_s"] and sidecar["crop_to_body"]["fraction"] < 0.6


def test_crop_to_body_needs_ct(tmp_path):
    rng = np.random.default_rng(0)
    src = save_nifti(tmp_path / "mr.nii.gz", rng.gamma(2.0, 100.0, (20, 20, 10)).astype(np.float32), np.eye(4))
    model = WorldSide()
    model.accepts = Accepts("any", 1, "")
    with pytest.raises(InputError, match="--crop-to-body needs CT in HU"):
        infer_file(src, model=model, crop_to_body=True)


def test_box_is_aligned_to_the_model_grid():
    from medseg.inference.crop import align_to_model_grid
    from medseg.inference.preprocess import plan_grid
    from medseg.models.spec import PreprocessSpec

    # 0.8 mm voxels, a 3 mm model grid: 15 voxels hold 4 model voxels; y is flipped (LPS -> RAS)
    affine = np.diag([0.8, -0.8, 1.5, 1.0])
    shape = (100, 90, 40)
    vol = Volume(np.zeros(shape, np.int16), affine)
    record = plan_grid(vol, PreprocessSpec(orientation="RAS", spacing=(3.0, 3.0, 3.0)))
    region = align_to_model_grid(Region((22, 10, 5), (80, 61, 33)), shape, record)
    assert region.start == (15, 10, 4) and region.stop == (80, 75, 33)
    # the crop's model grid starts on a sample of the whole scan's model grid
    sub = plan_grid(crop(vol, region), PreprocessSpec(orientation="RAS", spacing=(3.0, 3.0, 3.0)))
    first = sub.model_affine @ [0, 0, 0, 1]
    index = np.linalg.solve(record.model_affine, first)
    assert np.allclose(index, np.round(index), atol=1e-6)
