"""nnU-Net v2 results folders: label parity with nnU-Net's own predictor, geometry, safe loading, errors.

The reference is ``nnUNetv2_predict_from_modelfolder`` itself (CPU, one preprocessing and one export
process), run on the same folder and the same NIfTI file as ``medseg infer``. The model is the shipped
``sample_data/models/nnunet-phantom`` (trained by nnU-Net's own code, ``scripts/train_nnunet_phantom.py``);
variants that need another head layout (region-based) get random weights in nnU-Net's checkpoint format.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from medseg.errors import ModelError
from medseg.inference.pipeline import infer_file
from medseg.models.nnunet import NnUNetModel, parse_folds, resolve_folder
from medseg.models.nnunet.folder import load_checkpoint
from tests.conftest import cropped_phantom, requires_cpu_bf16

pytest.importorskip("nnunetv2")

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = ROOT / "sample_data" / "models" / "nnunet-phantom" / "Dataset501_Phantom"
CONFIG = SHIPPED / "nnUNetTrainer__nnUNetPlans__3d_fullres"


def dice(a: np.ndarray, b: np.ndarray) -> float:
    s = int(a.sum() + b.sum())
    return 1.0 if s == 0 else 2.0 * int((a & b).sum()) / s


def _scan(path: Path, seed: int, spacing, axcodes="RAS", oblique=False, box_mm=(180.0, 150.0, 120.0)) -> Path:
    return cropped_phantom(path, seed, spacing, axcodes, oblique, box_mm)


def _reference(folder: Path, scan: Path, tmp: Path, folds, tta: bool, step: float = 0.5) -> nib.Nifti1Image:
    src, out = tmp / "ref_in", tmp / "ref_out"
    src.mkdir(exist_ok=True)
    shutil.copy(scan, src / "case_0000.nii.gz")
    cmd = ["nnUNetv2_predict_from_modelfolder", "-i", str(src), "-o", str(out), "-m", str(folder), "-f",
           *[str(f) for f in folds], "-device", "cpu", "-npp", "1", "-nps", "1", "--disable_progress_bar",
           "-step_size", str(step)]  # fmt: skip
    if not tta:
        cmd.append("--disable_tta")
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-1500:] + run.stderr[-1500:]
    return nib.load(out / "case.nii.gz")


def _medseg(folder: Path, scan: Path, tmp: Path, folds, tta: bool, step: float = 0.5) -> nib.Nifti1Image:
    out = tmp / "medseg_seg.nii.gz"
    options = {"folds": list(folds), "tta": tta, "step_size": step}
    infer_file(scan, output=out, model=str(folder), device="cpu", force_modality=True, model_options=options)
    return nib.load(out)


def _assert_parity(ref: nib.Nifti1Image, ours: nib.Nifti1Image, scan: Path) -> None:
    src = nib.load(scan)
    a, b = np.asarray(ref.dataobj), np.asarray(ours.dataobj)
    assert b.shape == src.shape and np.array_equal(ours.affine, src.affine)
    assert int(ours.header["sform_code"]) == int(src.header["sform_code"])
    assert int(ours.header["qform_code"]) == int(src.header["qform_code"])
    assert a.shape == b.shape
    labels = sorted(set(np.unique(a).tolist()) | set(np.unique(b).tolist()) - {0})
    assert labels, "the model found nothing: the comparison would say nothing"
    for k in labels:
        assert dice(a == k, b == k) >= 0.999, f"label {k}: Dice {dice(a == k, b == k):.5f}"


PARITY_CASES = {
    # name: (seed, spacing, axcodes, oblique, box_mm, folds, tta)
    "model_spacing": (9101, (3.0, 3.0, 3.0), "RAS", False, (180.0, 150.0, 120.0), (0,), False),
    "clinical_grid_tta": (9102, (0.8, 0.8, 1.5), "RAS", False, (110.0, 100.0, 70.0), (0,), True),
    "anisotropic_separate_z": (9103, (0.8, 0.8, 4.0), "RAS", False, (110.0, 100.0, 120.0), (0,), False),
    "lps_two_folds_tta": (9104, (2.5, 2.5, 3.5), "LPS", False, (150.0, 130.0, 100.0), (0, 1), True),
    "oblique": (9105, (3.0, 3.0, 3.0), "LPS", True, (150.0, 130.0, 100.0), (1,), False),
    "smaller_than_patch": (9106, (3.0, 3.0, 3.0), "RAS", False, (90.0, 75.0, 60.0), (0,), True),
}


@pytest.mark.slow
@pytest.mark.parametrize("case", list(PARITY_CASES))
def test_label_parity_with_nnunet_predictor(case, tmp_path):
    seed, spacing, axcodes, oblique, box, folds, tta = PARITY_CASES[case]
    if case == "anisotropic_separate_z":  # nnU-Net resamples this one axis apart, both ways
        from nnunetv2.preprocessing.resampling.default_resampling import get_do_separate_z

        assert get_do_separate_z(spacing[::-1])
    scan = _scan(tmp_path / "scan.nii.gz", seed, spacing, axcodes, oblique, box)
    ref = _reference(CONFIG, scan, tmp_path, folds, tta)
    ours = _medseg(CONFIG, scan, tmp_path, folds, tta)
    _assert_parity(ref, ours, scan)


def _random_variant(tmp: Path, regions: bool = False) -> Path:
    """A copy of the shipped folder with random weights saved as nnU-Net saves them; ``regions``
    makes it region-based (sigmoid heads, ``regions_class_order``)."""
    import torch
    from nnunetv2.utilities.label_handling.label_handling import determine_num_input_channels
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    from medseg.models.nnunet.model import _trainer_class

    dest = tmp / "Dataset502_Variant" / CONFIG.name
    dest.mkdir(parents=True)
    plans = json.loads((CONFIG / "plans.json").read_text())
    dataset = json.loads((CONFIG / "dataset.json").read_text())
    if regions:
        dataset["labels"] = {"background": 0, "torso": [1, 2, 3, 4, 5, 6, 7], "abdomen": [3, 4, 5], "liver": 3}
        dataset["regions_class_order"] = [1, 2, 3]
    (dest / "plans.json").write_text(json.dumps(plans))
    (dest / "dataset.json").write_text(json.dumps(dataset))
    pm = PlansManager(plans)
    cm = pm.get_configuration("3d_fullres")
    n_out = pm.get_label_manager(dataset).num_segmentation_heads
    torch.manual_seed(0)
    net = _trainer_class("nnUNetTrainer", dest).build_network_architecture(
        pm, cm, determine_num_input_channels(pm, cm, dataset), n_out, enable_deep_supervision=False
    )
    (dest / "fold_0").mkdir()
    checkpoint = {
        "network_weights": net.state_dict(),
        "init_args": {
            "plans": plans,
            "configuration": "3d_fullres",
            "fold": 0,
            "dataset_json": dataset,
            "device": torch.device("cpu"),
        },  # fmt: skip
        "trainer_name": "nnUNetTrainer",
        "inference_allowed_mirroring_axes": (0, 1, 2),
        "current_epoch": 1,
        "_best_ema": np.float64(0.5),
    }
    torch.save(checkpoint, dest / "fold_0" / "checkpoint_final.pth")
    return dest


@pytest.mark.slow
def test_region_based_model_parity(tmp_path):
    folder = _random_variant(tmp_path, regions=True)
    scan = _scan(tmp_path / "scan.nii.gz", 9107, (3.0, 3.0, 3.0), box_mm=(120.0, 120.0, 90.0))
    model = NnUNetModel(folder)
    assert {v.name for v in model.labels.values()} == {"background", "torso", "abdomen", "liver"}
    _assert_parity(_reference(folder, scan, tmp_path, (0,), False), _medseg(folder, scan, tmp_path, (0,), False), scan)


# ------------------------------------------------------------------ the folder, its options and errors


def test_shipped_folder_resolves_and_lists(tmp_path):
    from medseg.models.registry import model_names, open_model

    assert resolve_folder(SHIPPED) == CONFIG == resolve_folder(CONFIG) == resolve_folder(SHIPPED.parent)
    assert "nnunet-phantom" in model_names()
    model = open_model("nnunet-phantom", options={"folds": [1], "tta": False})
    assert isinstance(model, NnUNetModel) and model.folds == [1] and not model.tta
    assert model.accepts.modality == "CT" and model.labels[3].name == "liver"
    assert NnUNetModel(CONFIG).folds == [0, 1]  # every fold present by default
    assert parse_folds("0, 1") == [0, 1] and parse_folds("all") == ["all"] and parse_folds(None) is None


def test_folder_errors_name_what_is_missing(tmp_path):
    with pytest.raises(ModelError, match="no fold 4 .folds present: 0, 1"):
        NnUNetModel(CONFIG, folds=[4])
    with pytest.raises(ModelError, match="not an nnU-Net v2 results folder"):
        resolve_folder(tmp_path)
    two = tmp_path / "Dataset9_Two"
    for name in ("nnUNetTrainer__nnUNetPlans__3d_fullres", "nnUNetTrainer__nnUNetPlans__2d"):
        shutil.copytree(CONFIG, two / name, ignore=shutil.ignore_patterns("fold_*"))
    with pytest.raises(ModelError, match="several nnU-Net configurations .*2d.*3d_fullres"):
        resolve_folder(two)
    # a cascade stage
    cascade = tmp_path / "Dataset8_Cascade" / "nnUNetTrainer__nnUNetPlans__3d_cascade_fullres"
    shutil.copytree(CONFIG, cascade)
    plans = json.loads((cascade / "plans.json").read_text())
    plans["configurations"]["3d_cascade_fullres"] = {"inherits_from": "3d_fullres", "previous_stage": "3d_lowres"}
    (cascade / "plans.json").write_text(json.dumps(plans))
    with pytest.raises(ModelError, match="cascade stage .previous_stage '3d_lowres'"):
        NnUNetModel(cascade)


def test_unknown_trainer_is_named(tmp_path):
    import torch

    folder = tmp_path / "Dataset7_X" / CONFIG.name
    shutil.copytree(CONFIG, folder)
    path = folder / "fold_0" / "checkpoint_final.pth"
    checkpoint = load_checkpoint(path)
    checkpoint["trainer_name"] = "nnUNetTrainerFromSomewhereElse"
    torch.save(checkpoint, path)
    with pytest.raises(ModelError, match="trainer 'nnUNetTrainerFromSomewhereElse', which nnunetv2 does not have"):
        NnUNetModel(folder, folds=[0]).load()


class _Payload:
    """Stands for an arbitrary object in a checkpoint (unpickling it could run code)."""


def test_checkpoints_load_with_weights_only_and_an_allowlist(tmp_path):
    import torch

    shipped = load_checkpoint(CONFIG / "fold_0" / "checkpoint_final.pth")
    assert {"network_weights", "trainer_name", "init_args"} <= set(shipped)
    bad = tmp_path / "bad.pth"
    torch.save({"network_weights": {}, "extra": _Payload()}, bad)
    with pytest.raises(ModelError, match="beyond nnU-Net's own .* --trust-checkpoint"):
        load_checkpoint(bad)
    assert isinstance(load_checkpoint(bad, trust=True)["extra"], _Payload)


def test_sidecar_records_each_checkpoint(tmp_path):
    scan = _scan(tmp_path / "scan.nii.gz", 9108, (3.0, 3.0, 3.0), box_mm=(90.0, 75.0, 60.0))
    out = tmp_path / "scan_seg.nii.gz"
    infer_file(scan, output=out, model=str(CONFIG), device="cpu", model_options={"folds": [0], "tta": False})
    side = json.loads(out.with_name("scan_seg.json").read_text())
    record = side["model"]
    assert record["family"] == "nnunet-v2" and record["folds"] == ["0"] and record["tta"] is False
    (ck,) = record["checkpoints"]
    assert ck["fold"] == "0" and len(ck["sha256"]) == 64 and ck["bytes"] > 0
    assert record["weights_sha256"] == ck["sha256"]


def test_missing_extra_is_one_line(monkeypatch):
    import builtins

    from medseg.models.nnunet.model import require_nnunet

    real = builtins.__import__

    def fake(name, *args, **kwargs):
        if name == "nnunetv2" or name.startswith("nnunetv2."):
            raise ImportError("no nnunetv2", name="nnunetv2")
        return real(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", fake)
    expected = r"nnunet extra \(nnunetv2 is missing\): pip install torch==.* -e \"\.\[nnunet\]\""
    with pytest.raises(ModelError, match=expected):
        require_nnunet()


@pytest.mark.slow
def test_batch_and_plan_run_an_nnunet_folder(tmp_path):
    from click.testing import CliRunner

    from medseg.cli import main

    cohort = tmp_path / "cohort"
    cohort.mkdir()
    for i, seed in enumerate((9110, 9111)):
        _scan(cohort / f"case{i}.nii.gz", seed, (3.0, 3.0, 3.0), box_mm=(400.0, 400.0, 45.0))  # air around: CT
    out = tmp_path / "out"
    args = ["batch", str(cohort), "-o", str(out), "--model", "nnunet-phantom", "--folds", "1", "--no-tta"]
    res = CliRunner().invoke(main, [*args, "--workers", "1", "-q"])
    assert res.exit_code == 0, res.output
    for i in range(2):
        labels = nib.load(out / f"case{i}_seg.nii.gz")
        assert labels.shape == nib.load(cohort / f"case{i}.nii.gz").shape
        side = json.loads((out / f"case{i}_seg.json").read_text())
        assert side["model"]["folds"] == ["1"] and side["model"]["tta"] is False
    res = CliRunner().invoke(main, ["plan", str(cohort / "case0.nii.gz"), "--model", "nnunet-phantom", "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.output)["fits"] is True


@pytest.mark.slow
def test_old_plans_format_parity(tmp_path):
    """nnU-Net 2.0-2.2 plans (``UNet_class_name``... instead of ``architecture``), same weights."""
    folder = tmp_path / "Dataset503_Old" / CONFIG.name
    shutil.copytree(CONFIG, folder)
    plans = json.loads((folder / "plans.json").read_text())
    config = plans["configurations"]["3d_fullres"]
    arch = config.pop("architecture")["arch_kwargs"]
    features = arch["features_per_stage"]
    config.update(
        UNet_class_name="PlainConvUNet",
        UNet_base_num_features=features[0],
        unet_max_num_features=features[-1],
        n_conv_per_stage_encoder=arch["n_conv_per_stage"],
        n_conv_per_stage_decoder=arch["n_conv_per_stage_decoder"],
        num_pool_per_axis=[len(arch["strides"]) - 1] * 3,
        pool_op_kernel_sizes=arch["strides"],
        conv_kernel_sizes=arch["kernel_sizes"],
    )
    assert features == [min(features[0] * 2**i, features[-1]) for i in range(len(features))]
    (folder / "plans.json").write_text(json.dumps(plans))
    scan = _scan(tmp_path / "scan.nii.gz", 9109, (3.0, 3.0, 3.0), box_mm=(120.0, 120.0, 90.0))
    _assert_parity(_reference(folder, scan, tmp_path, (0,), False), _medseg(folder, scan, tmp_path, (0,), False), scan)


@pytest.mark.parametrize("model_shape", [(20, 24, 22), (37, 15, 30)])
def test_streamed_export_equals_nnunets_export(model_shape):
    """The slab-by-slab export against nnU-Net's own function, on random float16 logits: down- and
    upsampling by non-integer factors, a crop inside the image, every class present."""
    import torch
    from nnunetv2.inference.export_prediction import convert_predicted_logits_to_segmentation_with_correct_shape

    model = NnUNetModel(CONFIG, folds=[0]).load()
    torch.manual_seed(1)
    logits = (torch.randn((8, *model_shape)) * 3).to(torch.float16)
    props = {
        "spacing": [2.5, 1.9, 2.1],
        "shape_before_cropping": (40, 50, 45),
        "bbox_used_for_cropping": [[3, 33], [5, 45], [2, 43]],
        "shape_after_cropping_and_before_resampling": (30, 40, 41),
    }
    assert model._can_stream_export(props)
    ours = model._streamed_export(logits, props)
    theirs = convert_predicted_logits_to_segmentation_with_correct_shape(
        logits, model.plans_manager, model.configuration_manager, model.label_manager, props
    )
    assert ours.shape == theirs.shape == (40, 50, 45)
    assert np.mean(ours == theirs) > 0.9995  # measured: identical on both grids
    for k in range(1, 8):
        assert dice(ours == k, theirs == k) > 0.999


@requires_cpu_bf16
def test_bf16_precision_on_the_cpu_keeps_the_labels_and_is_recorded(tmp_path):
    """``--precision bf16``: bfloat16 autocast on the CPU (the window logits summed as without it). It is not
    the reference's arithmetic: voxels near a tie between two labels change (measured here: 99.8 % of
    the voxels equal, Dice 0.996-0.9996 on the labels of 1000+ voxels; labels of a few speckle voxels
    differ more)."""
    scan = _scan(tmp_path / "scan.nii.gz", 9109, (2.0, 2.0, 2.5), box_mm=(120.0, 100.0, 80.0))
    labels = {}
    for precision in ("fp32", "bf16"):
        out = tmp_path / precision / "scan_seg.nii.gz"
        options = {"folds": [0], "tta": False, "precision": precision}
        infer_file(scan, output=out, model=str(CONFIG), device="cpu", force_modality=True, model_options=options)
        assert json.loads(out.with_name("scan_seg.json").read_text())["model"]["precision"] == precision
        labels[precision] = np.asarray(nib.load(out).dataobj)
    a, b = labels["fp32"], labels["bf16"]
    assert 0.99 < np.mean(a == b) < 1.0  # bf16 did run (its rounding moves some boundary voxels)
    for k in set(np.unique(a).tolist()) - {0}:
        if np.sum(a == k) >= 1000:
            assert dice(a == k, b == k) > 0.99, k


def test_precision_is_checked_where_the_model_opens(monkeypatch):
    with pytest.raises(ModelError, match="precision must be one of fp32, bf16"):
        NnUNetModel(CONFIG, "cpu", precision="fp16")
    # a CPU without bfloat16 convolutions (AVX2 only): refused by name, before any weights load
    monkeypatch.setattr(
        "medseg.devices.cpu_bf16_problem", lambda: "this CPU (AVX2) has no bfloat16 convolution support"
    )
    with pytest.raises(ModelError, match=r"--precision bf16: this CPU \(AVX2\) has no bfloat16 .*use --precision fp32"):
        NnUNetModel(CONFIG, "cpu", precision="bf16")
    assert NnUNetModel(CONFIG, "cpu", precision="fp32").precision == "fp32"
