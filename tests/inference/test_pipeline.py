"""End-to-end inference with a tiny model: outputs exist, geometry is exact, failures leave nothing."""

import json

import nibabel as nib
import numpy as np
import pytest
import torch

from medseg.errors import InputError, ModelError
from medseg.inference.pipeline import Segmenter, infer_file
from medseg.models.monai import MonaiModel
from medseg.models.spec import spec_from_dict
from medseg.volume import Volume
from tests.conftest import save_nifti, write_tiny_model

AFFINES = {
    "ras": np.diag([1.0, 1.0, 1.0, 1.0]),
    "lps-aniso": np.array([[-0.9, 0, 0, 50], [0, -0.9, 0, 60], [0, 0, 4.0, -20], [0, 0, 0, 1]]),
    "oblique": np.array([[1.8, -0.6, 0.2, 5], [0.6, 1.8, 0.0, -7], [0.0, 0.1, 3.0, 2], [0, 0, 0, 1]]),
    "flipped-permuted": np.array([[0, 0, -2.5, 30], [2.0, 0, 0, -40], [0, -2.0, 0, 10], [0, 0, 0, 1]]),
}


@pytest.mark.parametrize("name", list(AFFINES))
def test_infer_writes_labels_on_the_exact_input_grid(tmp_path, tiny_model, name):
    data = np.random.default_rng(1).normal(0, 300, size=(37, 29, 23)).astype(np.int16)
    src = save_nifti(tmp_path / "scan.nii.gz", data, AFFINES[name], qform_code=1, sform_code=2)
    result = infer_file(src, model=str(tiny_model), device="cpu", stats=True, preview=True)
    out = nib.load(str(result.labels_path))
    ref = nib.load(str(src))
    assert result.labels_path == tmp_path / "scan_seg.nii.gz"
    assert out.shape == ref.shape
    assert np.array_equal(out.affine, ref.affine)
    assert (int(out.header["qform_code"]), int(out.header["sform_code"])) == (1, 2)
    assert out.get_data_dtype() == np.uint8
    sidecar = json.loads((tmp_path / "scan_seg.json").read_text())
    assert sidecar["model"]["name"] == "tiny3d" and len(sidecar["model"]["weights_sha256"]) == 64
    assert sidecar["labels"]["1"]["name"] == "class1"
    assert sidecar["plan"]["roi_size"] == [32, 32, 32]
    assert set(sidecar["timings_s"]) == {"read", "model_load", "plan", "preprocess", "inference", "write", "total"}
    assert sidecar["timings_s"]["total"] == round(result.seconds, 3) == result.timings["total"]
    for suffix in ("_seg_stats.csv", "_seg_stats.json", "_seg_preview.png"):
        assert (tmp_path / f"scan{suffix}").stat().st_size > 0
    # with --stats the counts come from the statistics rows: they agree with the labels written
    direct = np.bincount(np.asarray(out.dataobj).reshape(-1), minlength=3)
    assert sidecar["label_voxels"] == {"class1": int(direct[1]), "class2": int(direct[2])}
    assert result.label_counts == sidecar["label_voxels"]


class ThresholdNet(torch.nn.Module):
    """Logits that say 'class 1 where the input is bright': the right answer is known exactly."""

    def forward(self, x):
        return torch.cat([0.5 - x, x - 0.5], dim=1)


class ThresholdModel(MonaiModel):
    """A MONAI-family model whose 'weights' are :class:`ThresholdNet` (no file to load)."""

    def _load(self) -> None:
        self.network = ThresholdNet()


def test_labels_align_voxel_for_voxel_with_the_input(tmp_path):
    """A bright box in an oblique LPS scan comes back exactly where it is, after resampling."""
    spec = spec_from_dict(
        {
            "name": "threshold",
            "network": {"class": "UNet", "out_channels": 2},
            "labels": {0: {"name": "bg"}, 1: {"name": "box"}},
            "preprocessing": {
                "orientation": "RAS",
                "spacing": [1.0, 1.0, 1.0],
                "intensity": {"kind": "ct_window", "a_min": 0, "a_max": 1000},
            },
            "inference": {"roi_size": [24, 24, 24]},
        }
    )
    data = np.zeros((40, 36, 30), np.int16)
    data[10:25, 8:20, 12:21] = 1000
    vol = Volume(data, AFFINES["oblique"] @ np.diag([0.5, 0.5, 0.5, 1.0]), {"source": "mem"})
    labels = Segmenter(ThresholdModel(spec)).segment(vol).labels
    truth = (data > 500).astype(np.uint8)
    assert labels.shape == data.shape
    assert (labels == truth).mean() > 0.995
    # the box's centre of mass does not move (no flips or shifts), within a quarter voxel
    assert np.allclose(np.argwhere(labels).mean(0), np.argwhere(truth).mean(0), atol=0.25)


def test_2d_model_runs_slice_by_slice(tmp_path):
    model = write_tiny_model(tmp_path / "m2", spatial_dims=2, spacing=(4.0, 4.0, None))
    src = save_nifti(tmp_path / "scan.nii.gz", np.zeros((30, 20, 9), np.int16), AFFINES["lps-aniso"])
    result = infer_file(src, output=tmp_path / "out" / "lab.nii", model=str(model), device="cpu")
    assert nib.load(str(result.labels_path)).shape == (30, 20, 9)
    assert (tmp_path / "out" / "lab.json").exists()


def test_wrong_channel_count_is_refused_before_writing(tmp_path, tiny_model):
    src = save_nifti(tmp_path / "scan.nii.gz", np.zeros((10, 10, 10, 2), np.int16), np.eye(4))
    with pytest.raises(InputError, match="2 volumes"):
        infer_file(src, model=str(tiny_model), device="cpu")
    model2 = write_tiny_model(tmp_path / "m2", in_channels=3)
    with pytest.raises(InputError, match="in_channels=3"):
        infer_file(src, model=str(model2), device="cpu")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m2", "model", "scan.nii.gz"]


def test_multichannel_input_when_the_model_wants_it(tmp_path):
    model = write_tiny_model(tmp_path / "m", in_channels=2)
    src = save_nifti(tmp_path / "scan.nii.gz", np.zeros((12, 12, 12, 2), np.int16), np.eye(4))
    result = infer_file(src, model=str(model), device="cpu")
    assert nib.load(str(result.labels_path)).shape == (12, 12, 12)


def test_bad_output_suffix(tmp_path, tiny_model):
    from medseg.errors import MedsegError

    src = save_nifti(tmp_path / "scan.nii.gz", np.zeros((8, 8, 8), np.int16), np.eye(4))
    with pytest.raises(MedsegError, match=r"x\.png: output must be a \.nii or \.nii\.gz file$") as err:
        infer_file(src, output=tmp_path / "x.png", model=str(tiny_model), device="cpu")
    assert type(err.value) is MedsegError and err.value.path == str(tmp_path / "x.png")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model", "scan.nii.gz"]  # nothing written


def test_unknown_model_name():
    with pytest.raises(ModelError, match="unknown model"):
        Segmenter("no-such-model", device="cpu")
