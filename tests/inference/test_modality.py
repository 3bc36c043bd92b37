"""The modality check: a model refuses a scan that does not look like what it accepts."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from medseg.cli import main
from medseg.errors import InputError
from medseg.inference.modality import check_modality, intensity_look, look_at
from medseg.models.base import Accepts, Model
from medseg.volume import Volume
from tests.conftest import save_nifti


def _ct(rng, shape=(40, 40, 30)):
    """Air around a water-like body with fat and a little bone, in HU, with noise."""
    hu = np.full(shape, -1000.0, np.float32)
    hu[8:32, 8:32, :] = 40.0
    hu[10:14, 10:30, :] = -100.0
    hu[18:22, 18:22, :] = 700.0
    return (hu + rng.normal(0, 15, shape)).astype(np.int16)


class _Needs(Model):
    def __init__(self, modality):
        super().__init__()
        self.name, self.accepts = f"needs-{modality}", Accepts(modality, 1, "")

    def model_grid(self, volume):  # pragma: no cover - not run
        raise NotImplementedError

    def prepare(self, volume):  # pragma: no cover - not run
        raise NotImplementedError


def test_ct_in_hu_raw_ct_and_mr_are_told_apart_by_their_values():
    rng = np.random.default_rng(0)
    ct = _ct(rng)
    assert intensity_look(ct).kind == "CT" and intensity_look(ct).hu
    assert intensity_look(np.where(ct < -1500, -3024, ct)).kind == "CT"
    raw = (ct.astype(np.int32) + 1024).clip(0).astype(np.uint16)  # stored without RescaleIntercept
    assert intensity_look(raw).kind == "CT-raw" and not intensity_look(raw).hu
    mr = rng.gamma(2.0, 150.0, (40, 40, 30)).astype(np.float32)
    assert intensity_look(mr).kind == "MR"
    zscored = rng.normal(0, 1, (40, 40, 30)).astype(np.float32)
    assert intensity_look(zscored).kind == "unknown"


def test_the_dicom_modality_tag_decides_where_there_is_one():
    rng = np.random.default_rng(1)
    ct = _ct(rng)
    assert look_at(Volume(ct, np.eye(4), {"modality": "MR"})).kind == "MR"
    assert look_at(Volume(ct, np.eye(4), {"modality": "CT"})).reason == "DICOM Modality is CT"
    raw = (ct.astype(np.int32) + 1024).clip(0).astype(np.uint16)
    assert look_at(Volume(raw, np.eye(4), {"modality": "CT"})).kind == "CT-raw"


def test_a_mismatch_is_refused_in_one_line_unless_forced():
    rng = np.random.default_rng(2)
    mr = Volume(rng.gamma(2.0, 150.0, (30, 30, 20)).astype(np.float32), np.eye(4), {"source": "t1.nii.gz"})
    with pytest.raises(InputError) as err:
        check_modality(_Needs("CT"), mr)
    line = str(err.value)
    assert line.startswith("t1.nii.gz: model 'needs-CT' needs CT in Hounsfield units, but this scan looks like MR")
    assert "--force-modality" in line and "\n" not in line
    record = check_modality(_Needs("CT"), mr, force=True)
    assert record["forced"] and record["looks_like"] == "MR" and "needs CT" in record["warning"]
    assert check_modality(_Needs("any"), mr) is None
    assert check_modality(_Needs("MR"), mr)["looks_like"] == "MR"
    with pytest.raises(InputError, match="needs MR"):
        check_modality(_Needs("MR"), Volume(_ct(rng), np.eye(4)))


def test_infer_refuses_an_mr_for_a_ct_model_and_writes_nothing(tmp_path):
    rng = np.random.default_rng(3)
    src = save_nifti(tmp_path / "t1.nii.gz", rng.gamma(2.0, 150.0, (30, 30, 20)).astype(np.float32), np.eye(4))
    for model in ("ct-anatomy", "phantom-unet3d"):
        res = CliRunner().invoke(main, ["infer", str(src), "--model", model, "-q"])
        assert res.exit_code == 1, res.output
        assert f"model '{model}' needs CT in Hounsfield units, but this scan looks like MR" in res.output
        assert "Traceback" not in res.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t1.nii.gz"]


def test_force_modality_runs_and_keeps_the_warning_in_the_sidecar(tmp_path):
    rng = np.random.default_rng(4)
    src = save_nifti(tmp_path / "t1.nii.gz", rng.gamma(2.0, 150.0, (24, 24, 12)).astype(np.float32), np.eye(4))
    res = CliRunner().invoke(main, ["infer", str(src), "--model", "ct-anatomy", "--force-modality", "-q"])
    assert res.exit_code == 0, res.output
    assert "warning: model 'ct-anatomy' needs CT" in res.output
    sidecar = json.loads((tmp_path / "t1_seg.json").read_text())
    assert sidecar["modality"]["forced"] is True and sidecar["modality"]["looks_like"] == "MR"
