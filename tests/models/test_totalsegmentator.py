"""TotalSegmentator weights: label parity with the ``totalsegmentator`` package itself, errors, outputs.

The weights are the stand-ins in ``sample_data/models/totalseg-standins`` (small nnU-Net models trained
here by ``scripts/train_totalseg_standins.py`` under TotalSegmentator's folder names, trainer folder names,
spacings and label ids). The reference is TotalSegmentator's Python API, run in a subprocess on a copy
of that home folder (it writes its config there), offline, with usage statistics off.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from click.testing import CliRunner

from medseg.cli import main
from medseg.errors import ModelError
from medseg.io import read_volume
from medseg.models.registry import model_names, open_model
from medseg.models.totalsegmentator import TotalSegmentatorModel, parse_task
from tests.conftest import cropped_phantom

pytest.importorskip("nnunetv2")
pytest.importorskip("totalsegmentator")

ROOT = Path(__file__).resolve().parents[2]
STANDINS = ROOT / "sample_data" / "models" / "totalseg-standins"

_REFERENCE = """
import json, sys
import nibabel as nib
from totalsegmentator.python_api import totalsegmentator

def main():
    scan, out, task, mode, roi = sys.argv[1:6]
    img = totalsegmentator(scan, None, task=task, fast=mode == "fast", fastest=mode == "fastest", device="cpu",
                           ml=True, quiet=True, roi_subset=roi.split(",") if roi else None)
    nib.save(img, out)

if __name__ == "__main__":
    main()
"""


@pytest.fixture(scope="module")
def home(tmp_path_factory) -> Path:
    """A TOTALSEG_HOME_DIR holding the stand-ins, usage statistics off (TotalSegmentator writes here)."""
    dest = tmp_path_factory.mktemp("totalseg") / "home"
    shutil.copytree(STANDINS / "nnunet", dest / "nnunet")
    config = {"totalseg_id": "medseg-tests", "send_usage_stats": False, "prediction_counter": 0}
    (dest / "config.json").write_text(json.dumps(config))
    return dest


@pytest.fixture
def env_home(home, monkeypatch) -> Path:
    monkeypatch.setenv("TOTALSEG_HOME_DIR", str(home))
    monkeypatch.delenv("TOTALSEG_WEIGHTS_PATH", raising=False)
    return home


def _scan(path: Path, seed: int, spacing, axcodes="RAS", oblique=False, box_mm=(200.0, 160.0, 150.0)) -> Path:
    return cropped_phantom(path, seed, spacing, axcodes, oblique, box_mm)


def _reference(home: Path, scan: Path, tmp: Path, spec: str, roi: str = "") -> np.ndarray:
    task, mode = parse_task(spec)
    script = tmp / "reference.py"
    script.write_text(_REFERENCE)
    out = tmp / "reference.nii.gz"
    env = {**os.environ, "TOTALSEG_HOME_DIR": str(home)}
    env.pop("TOTALSEG_WEIGHTS_PATH", None)
    run = subprocess.run([sys.executable, str(script), str(scan), str(out), task, mode, roi], env=env,
                         capture_output=True, text=True, timeout=900)  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    return np.asarray(nib.load(out).dataobj)


def _dice_per_label(ref: np.ndarray, ours: np.ndarray) -> dict[int, float]:
    out = {}
    for value in np.union1d(np.unique(ref), np.unique(ours)):
        if value == 0:
            continue
        a, b = ref == value, ours == value
        out[int(value)] = 2.0 * int((a & b).sum()) / int(a.sum() + b.sum())
    return out


PARITY_CASES = {
    # spec, roi subset, phantom spacing, orientation, oblique
    "total-5-parts-lps": ("total", "", (2.0, 2.0, 2.5), "LPS", False),
    "total-fast-oblique": ("total-fast", "", (1.2, 1.2, 2.0), "RAS", True),
    "total-fastest-at-task-spacing": ("total-fastest", "", (6.0, 6.0, 6.0), "LAS", False),
    "total-roi-subset": ("total", "liver,spleen,kidney_left", (1.6, 1.6, 3.0), "RAS", False),
}


@pytest.mark.slow
@pytest.mark.parametrize("case", list(PARITY_CASES))
def test_label_parity_with_totalsegmentator(case, home, env_home, tmp_path):
    spec, roi, spacing, axcodes, oblique = PARITY_CASES[case]
    box = (160.0, 130.0, 120.0) if spec == "total" else (200.0, 160.0, 150.0)  # five models at 1.5 mm: smaller
    scan = _scan(tmp_path / "scan.nii.gz", 300 + len(case), spacing, axcodes, oblique, box)
    ref = _reference(home, scan, tmp_path, spec, roi)
    out = tmp_path / "ours.nii.gz"
    args = ["infer", str(scan), "-o", str(out), "--model", f"totalsegmentator:{spec}", "--device", "cpu", "-q"]
    if roi:
        args += ["--roi-subset", roi]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    ours_img, scan_img = nib.load(out), nib.load(scan)
    assert ours_img.shape == scan_img.shape
    assert np.array_equal(ours_img.affine, scan_img.affine)
    ours = np.asarray(ours_img.dataobj)
    assert len(np.unique(ref)) > 2, "the stand-ins predict structures on a phantom"
    scores = _dice_per_label(ref, ours)
    assert min(scores.values()) >= 0.999, {k: round(v, 4) for k, v in scores.items() if v < 0.999}
    if roi:
        names = roi.split(",")
        model = open_model(f"totalsegmentator:{spec}", options={"roi_subset": names})
        assert {label.name for label in model.foreground().values()} == set(names)
        assert set(np.unique(ours)) <= set(model.foreground()) | {0}


def test_task_names_and_modes():
    assert parse_task("totalsegmentator:total") == ("total", "default")
    assert parse_task("totalsegmentator:total-fast") == ("total", "fast")
    assert parse_task("total_fastest") == ("total", "fastest")
    assert parse_task("total_mr-fast") == ("total_mr", "fast")


def test_labels_are_totalsegmentators_with_snomed_codes(env_home):
    from totalsegmentator.map_to_binary import class_map

    model = open_model("totalsegmentator:total")
    names = {value: label.name for value, label in model.foreground().items()}
    assert names == {int(k): v for k, v in class_map["total"].items()}
    liver = next(label for label in model.labels.values() if label.name == "liver")
    assert liver.code["scheme"] == "SCT" and liver.code["meaning"].lower() == "liver"
    assert len(model.folders) == 5  # one nnU-Net folder per part
    assert "totalsegmentator:total" in model_names() and "totalsegmentator:total-fastest" in model_names()


def test_roi_subset_runs_only_the_parts_that_hold_it(env_home):
    model = open_model("totalsegmentator:total", options={"roi_subset": ["liver", "aorta"]})
    assert sorted(model.folders) == [291, 293]  # organs and cardiac parts
    assert model.crop_model is not None and model.crop_model.task_ids == [298]  # the 6 mm model crops first


def test_missing_weights_name_the_folder_and_the_download_command(tmp_path, monkeypatch):
    monkeypatch.setenv("TOTALSEG_HOME_DIR", str(tmp_path / "empty"))
    with pytest.raises(ModelError) as err:
        open_model("totalsegmentator:total-fast")
    message = str(err.value)
    assert "Dataset297_TotalSegmentator_total_3mm_1559subj" in message and "totalseg_download_weights" in message
    assert "\n" not in message
    result = CliRunner().invoke(main, ["infer", str(tmp_path / "x.nii.gz"), "--model", "totalsegmentator:total"])
    assert result.exit_code != 0


@pytest.mark.parametrize(
    "spec, options, match",
    [
        ("totalsegmentator:nonsense", {}, "has no task 'nonsense'"),
        ("totalsegmentator:body", {}, "task-specific post-processing"),
        ("totalsegmentator:total", {"roi_subset": ["livr"]}, "livr not among"),
        ("totalsegmentator:total", {"tta": True}, "--folds, --tta and --step-size are for nnU-Net folders"),
    ],
)
def test_clear_errors(env_home, spec, options, match):
    with pytest.raises(ModelError, match=match):
        open_model(spec, options=options)


def test_split_masks_on_the_cli(env_home, tmp_path):
    scan = _scan(tmp_path / "scan.nii.gz", 11, (3.0, 3.0, 3.0))
    out = tmp_path / "scan_seg.nii.gz"
    args = ["infer", str(scan), "-o", str(out), "--model", "totalsegmentator:total-fastest", "--device", "cpu", "-q",
            "--split-masks", "--stats"]  # fmt: skip
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    labels = np.asarray(nib.load(out).dataobj)
    masks = tmp_path / "scan_seg_masks"
    files = sorted(p.name for p in masks.iterdir())
    assert len(files) == 117 and "liver.nii.gz" in files  # every structure, empty ones too (as TotalSegmentator)
    model = open_model("totalsegmentator:total-fastest")
    for value, label in model.foreground().items():
        mask = nib.load(masks / f"{label.name}.nii.gz")
        assert mask.shape == labels.shape and np.array_equal(mask.affine, nib.load(scan).affine)
        assert np.array_equal(np.asarray(mask.dataobj) > 0, labels == value)
    sidecar = json.loads((tmp_path / "scan_seg.json").read_text())
    assert sidecar["outputs"]["masks"] == str(masks)
    assert sidecar["model"]["family"] == "totalsegmentator"


def test_run_on_a_volume_keeps_the_grid(env_home, tmp_path):
    scan = _scan(tmp_path / "scan.nii.gz", 5, (4.0, 3.5, 5.0), axcodes="PSL", box_mm=(150, 150, 120))
    model = TotalSegmentatorModel("total-fastest")
    model.load()
    volume = read_volume(scan)
    out = model.run_algorithm(volume, None)
    assert out.labels.shape == volume.shape and out.labels.dtype == np.uint8
    assert {"totalseg.resample", "nnunet.windows", "totalseg.back"} <= set(out.timings)


def test_plan_and_models_commands_know_the_tasks(env_home, tmp_path):
    scan = _scan(tmp_path / "scan.nii.gz", 3, (3.0, 3.0, 3.0), box_mm=(120, 120, 90))
    result = CliRunner().invoke(main, ["plan", str(scan), "--model", "totalsegmentator:total", "--json"])
    assert result.exit_code == 0, result.output
    plan = json.loads(result.output)
    assert plan["fits"] and plan["model"] == "totalsegmentator:total"
    assert plan["predicted_bytes"]["host.algorithm"] > 4 * np.prod(nib.load(scan).shape)  # more than the scan
    listed = CliRunner().invoke(main, ["models"])
    assert listed.exit_code == 0
    line = next(x for x in listed.output.splitlines() if x.startswith("totalsegmentator:total "))
    assert "117 structures" in line and "TotalSegmentator" in line
