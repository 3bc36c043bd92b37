"""The model interface: a model without a network runs through the same pipeline, planner and
writers as a MONAI network; MONAI ModelSpecs and bundles are implementations of it."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
from click.testing import CliRunner

from medseg.errors import InputError, MedsegError, ModelError
from medseg.inference.pipeline import Segmenter, infer_file
from medseg.models.base import Accepts, Label, Model
from medseg.models.monai import MonaiModel
from medseg.models.registry import open_model
from medseg.volume import Volume
from tests.conftest import save_nifti


class BrightVoxels(Model):
    """Weights-free: label 1 where the scan is above a threshold (what a classical model does)."""

    family = "test-classical"

    def __init__(self, threshold: float = 100.0) -> None:
        super().__init__()
        self.name, self.version = "bright", "0.1"
        self.labels = {0: Label("background", (0, 0, 0)), 1: Label("bright", (250, 250, 0))}
        self.accepts = Accepts("CT", 1, "HU")
        self.threshold = threshold
        self.calls = 0

    def model_grid(self, volume):
        raise ModelError("has no model space", self.name)

    def prepare(self, volume):
        raise ModelError("has no model space", self.name)

    def run_algorithm(self, volume, progress, host_budget=None):
        self.calls += 1
        return (np.asarray(volume.array) > self.threshold).astype(np.uint8)

    def algorithm_bytes(self, volume, host_budget=None):
        return 2 * int(np.prod(volume.shape))


def _scan(tmp_path, affine=None):
    data = np.zeros((20, 16, 12), np.int16)  # soft tissue (0 HU) with air around it: CT in HU
    data[:3] = -1000
    data[5:12, 4:9, 2:7] = 400
    affine = np.array([[-1.5, 0, 0, 10], [0, -1.5, 0, 20], [0, 0, 3.0, -5], [0, 0, 0, 1]]) if affine is None else affine
    return save_nifti(tmp_path / "scan.nii.gz", data, affine), data


def test_a_model_without_a_network_runs_through_the_pipeline(tmp_path):
    src, data = _scan(tmp_path)
    model = BrightVoxels()
    result = infer_file(src, model=model, stats=True, preview=True)
    out = nib.load(str(result.labels_path))
    assert np.array_equal(np.asarray(out.dataobj), (data > 100).astype(np.uint8))
    assert np.array_equal(out.affine, nib.load(str(src)).affine)
    sidecar = json.loads(result.sidecar_path.read_text())
    assert sidecar["model"] == {
        "name": "bright",
        "version": "0.1",
        "family": "test-classical",
        "weights_sha256": None,
        "accepts": {"modality": "CT", "channels": 1},
    }
    assert sidecar["label_voxels"] == {"bright": int((data > 100).sum())}
    assert sidecar["plan"]["roi_size"] == [] and sidecar["plan"]["predicted_bytes"]["host.algorithm"] == 2 * data.size
    assert set(sidecar["timings_s"]) == {"read", "model_load", "plan", "inference", "write", "total"}
    assert model.calls == 1
    assert (tmp_path / "scan_seg_preview.png").stat().st_size > 0


def test_a_model_without_a_network_is_planned_against_the_budget(tmp_path):
    src, data = _scan(tmp_path)
    seg = Segmenter(BrightVoxels(), host_memory=1)  # one byte: nothing fits
    with pytest.raises(MedsegError, match="nothing fits the budget .* the model needs"):
        seg.run(src)
    assert not (tmp_path / "scan_seg.nii.gz").exists()


def test_the_interface_refuses_the_wrong_channel_count_for_every_family(tmp_path):
    vol = Volume(np.zeros((4, 4, 4, 2), np.float32), np.eye(4), {"source": "two.nii.gz"})
    with pytest.raises(InputError, match=r"^two\.nii\.gz: is a 4D image with 2 volumes; model 'bright'"):
        BrightVoxels().check_input(vol)


def test_monai_specs_and_bundles_are_models_behind_one_door(tiny_model):
    model = open_model(str(tiny_model))
    assert isinstance(model, MonaiModel) and model.family == "monai-spec"
    assert model.weights_sha256 is None and model.network is None  # opened, not loaded
    assert model.windows.roi_size == (32, 32, 32) and model.windows.roi_divisor == 2
    assert model.labels[1] == Label("class1", (40, 100, 200)) and model.out_channels == 3
    model.load()
    assert len(model.weights_sha256) == 64 and model.network is not None
    assert open_model(model) is model
    with pytest.raises(ModelError, match="unknown model"):
        open_model("no-such-model")


def test_models_command_lists_through_the_interface():
    from medseg.cli import main

    res = CliRunner().invoke(main, ["models"])
    assert res.exit_code == 0, res.output
    rows = {line.split()[0]: line.split() for line in res.output.splitlines() if not line.startswith(" ")}
    assert rows["phantom-unet2d"][1:3] == ["2D", "monai-spec"] and "[weights ok]" in res.output
    assert rows["ct-anatomy"][1:4] == ["no", "network", "classical"]
    assert "CT, window [-1000, 1000] -> [0, 1], clipped" in res.output
