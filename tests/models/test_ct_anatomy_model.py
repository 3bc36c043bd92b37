"""``ct-anatomy`` is a model like any other: infer (the default for CT), plan, batch, DICOM SEG,
statistics, preview, ``medseg models``; notes for what the field of view does not hold."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from click.testing import CliRunner

from medseg.cli import main
from medseg.models.ct_anatomy import labels as L
from medseg.models.ct_anatomy.model import LABELS, CtAnatomyModel
from medseg.models.registry import DEFAULT_MODEL, model_names, open_model

ROOT = Path(__file__).resolve().parents[2]
SAMPLE_CT = ROOT / "sample_data" / "chest_ct.nii.gz"
NAMES = ["body", "lung_left", "lung_right", "airway", "bone", "subcutaneous_fat", "torso_fat", "skeletal_muscle"]


def test_it_is_the_default_and_listed_first():
    assert DEFAULT_MODEL == "ct-anatomy" and model_names()[0] == "ct-anatomy"
    model = open_model(None)
    assert isinstance(model, CtAnatomyModel) and not model.has_network and model.weights_sha256 is None
    assert [label.name for _, label in sorted(model.foreground().items())] == NAMES
    assert model.accepts.modality == "CT"
    assert all(label.code and label.code["scheme"] == "SCT" for label in model.foreground().values())
    res = CliRunner().invoke(main, ["models"])
    assert res.exit_code == 0, res.output
    first = res.output.splitlines()[0]
    assert first.split()[:4] == ["ct-anatomy", "no", "network", "classical"] and "(default for CT)" in first


def test_infer_without_a_model_segments_the_sample_ct(tmp_path):
    src = tmp_path / "chest_ct.nii.gz"
    shutil.copy(SAMPLE_CT, src)
    res = CliRunner().invoke(main, ["infer", str(src), "--stats", "--preview", "-q"])
    assert res.exit_code == 0, res.output
    assert "(ct-anatomy, cpu)" in res.output
    img, out = nib.load(str(src)), nib.load(str(tmp_path / "chest_ct_seg.nii.gz"))
    assert out.shape == img.shape and np.array_equal(out.affine, img.affine)
    assert int(out.header["sform_code"]) == int(img.header["sform_code"])
    assert int(out.header["qform_code"]) == int(img.header["qform_code"])
    labels = np.asarray(out.dataobj)
    assert set(np.unique(labels)) <= set(range(9))
    sidecar = json.loads((tmp_path / "chest_ct_seg.json").read_text())
    assert sidecar["model"]["name"] == "ct-anatomy" and sidecar["model"]["family"] == "classical"
    assert [sidecar["labels"][str(i)]["name"] for i in range(1, 9)] == NAMES
    assert sidecar["modality"]["looks_like"] == "CT" and "notes" in sidecar
    for name in ("body", "lung_left", "lung_right", "bone", "subcutaneous_fat", "skeletal_muscle"):
        assert sidecar["label_voxels"][name] > 0, name
    # physical sides: RAS x grows towards the patient's right
    ijk = {k: np.argwhere(labels == k).mean(axis=0) for k in (L.LUNG_LEFT, L.LUNG_RIGHT)}
    x = {k: (img.affine @ [*v, 1])[0] for k, v in ijk.items()}
    assert x[L.LUNG_RIGHT] > x[L.LUNG_LEFT]
    rows = json.loads((tmp_path / "chest_ct_seg_stats.json").read_text())
    by_name = {r["name"]: r for r in rows}
    voxel_ml = abs(np.linalg.det(img.affine[:3, :3])) / 1000
    assert by_name["lung_left"]["volume_ml"] == pytest.approx(by_name["lung_left"]["voxels"] * voxel_ml, rel=1e-3)
    assert (tmp_path / "chest_ct_seg_preview.png").stat().st_size > 1000


def test_plan_reports_the_algorithm_memory(tmp_path):
    res = CliRunner().invoke(main, ["plan", str(SAMPLE_CT), "--json"])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.output)
    assert doc["model"] == "ct-anatomy" and doc["predicted_bytes"]["host.algorithm"] > 0


def test_a_leg_gets_empty_lungs_and_a_note(test_data, tmp_path):
    leg = test_data / "ct" / "ibsi_validation" / "STS_025" / "CT" / "image"  # 8 of its 47 slices
    res = CliRunner().invoke(main, ["infer", str(leg), "-o", str(tmp_path / "leg_seg.nii.gz"), "-q"])
    assert res.exit_code == 0, res.output
    sidecar = json.loads((tmp_path / "leg_seg.json").read_text())
    assert sidecar["label_voxels"]["lung_left"] == sidecar["label_voxels"]["lung_right"] == 0
    assert sidecar["label_voxels"]["airway"] == 0 and sidecar["label_voxels"]["bone"] > 0
    assert any("lung" in note for note in sidecar["notes"])


def test_dicom_seg_carries_snomed_codes(tmp_path):
    pytest.importorskip("highdicom")
    import pydicom

    series = ROOT / "sample_data" / "chest_ct_dicom"  # CIP's ct-64Dicom
    out = tmp_path / "ct64_seg.dcm"
    res = CliRunner().invoke(main, ["infer", str(series), "-o", str(out), "--format", "dicom-seg", "-q"])
    assert res.exit_code == 0, res.output
    seg = pydicom.dcmread(str(out))
    codes = {
        s.SegmentLabel: (s.SegmentedPropertyTypeCodeSequence[0].CodeValue, s.SegmentedPropertyCategoryCodeSequence[0])
        for s in seg.SegmentSequence
    }
    assert codes["lung_left"][0] == "44029006" and codes["lung_right"][0] == "3341006"
    assert codes["skeletal_muscle"][0] == "127954009" and codes["skeletal_muscle"][1].CodeMeaning == "Tissue"
    assert codes["lung_left"][1].CodeMeaning == "Anatomical Structure"
    for name, (value, _) in codes.items():
        assert value == LABELS[NAMES.index(name) + 1].code["value"]


def test_batch_runs_it_and_one_mr_fails_alone(tmp_path):
    cohort = tmp_path / "cohort"
    cohort.mkdir()
    shutil.copy(SAMPLE_CT, cohort / "chest.nii.gz")
    rng = np.random.default_rng(0)
    mr = nib.Nifti1Image(rng.gamma(2.0, 100.0, (20, 20, 10)).astype(np.float32), np.eye(4))
    nib.save(mr, str(cohort / "t1.nii.gz"))
    res = CliRunner().invoke(main, ["batch", str(cohort), "-o", str(tmp_path / "out"), "--workers", "1", "-q"])
    assert res.exit_code == 3, res.output
    assert (tmp_path / "out" / "chest_seg.nii.gz").exists() and not (tmp_path / "out" / "t1_seg.nii.gz").exists()
    assert "needs CT in Hounsfield units" in res.output
