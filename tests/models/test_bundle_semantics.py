"""A MONAI bundle run by medseg gives the labels of the bundle's own MONAI pipeline.

The reference is :class:`tests.reference.bundle_pipeline.BundleReference`: the bundle's config
instantiated by MONAI's ConfigParser (preprocessing, inferer, postprocessing with ``Invertd``).
The bundles are written here from the shipped phantom U-Net (trained weights, so the labels are
not trivial) and run on a real chest CT resampled to a clinical-style grid.
"""

from __future__ import annotations

import json
import sys

import nibabel as nib
import numpy as np
import pytest
import torch
from click.testing import CliRunner

from medseg.cli import main
from medseg.errors import ModelError
from medseg.models.bundle import spec_from_bundle
from medseg.models.registry import resolve_spec
from tests.conftest import ROOT
from tests.models.test_bundle import WHOLEBODY, WHOLEBODY_META, write_bundle
from tests.reference.bundle_pipeline import BundleReference, write_bundle_from_spec


def _clinical(out, spacing, shape):
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        from _clinical_ct import clinical_ct
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    return clinical_ct(out, spacing, shape, ROOT / "sample_data" / "chest_ct.nii.gz")  # CIP's TestInput.nrrd


@pytest.fixture(scope="module")
def real_ct(tmp_path_factory):
    """The sample real chest CT at 1.5 x 1.5 x 2.5 mm on a 230 x 190 x 110 grid (air around it)."""
    return _clinical(tmp_path_factory.mktemp("ct") / "ct.nii.gz", (1.5, 1.5, 2.5), (230, 190, 110))


def _dice_per_label(a: np.ndarray, b: np.ndarray) -> dict[int, float]:
    out = {}
    for label in sorted((set(np.unique(a)) | set(np.unique(b))) - {0}):
        x, y = a == label, b == label
        out[int(label)] = float(2 * np.sum(x & y) / (x.sum() + y.sum()))
    return out


def _with_inference(spec, **changes):
    return spec.model_copy(update={"inference": spec.inference.model_copy(update=changes)})


@pytest.mark.slow
@pytest.mark.parametrize("postprocessing", ["probabilities", "labels"])
def test_bundle_labels_equal_the_bundles_own_pipeline_on_a_real_ct(tmp_path, real_ct, postprocessing):
    """Spleen-style (softmax -> Invertd -> argmax) and whole-body-style (argmax -> Invertd nearest)."""
    bundle = write_bundle_from_spec(resolve_spec("phantom-unet3d"), tmp_path / "bundle", postprocessing)
    reference = BundleReference(bundle)(real_ct)
    out = tmp_path / "out" / "ct_seg.nii.gz"
    res = CliRunner().invoke(main, ["infer", str(real_ct), "-o", str(out), "--model", str(bundle), "-q"])
    assert res.exit_code == 0, res.output
    ours = np.asarray(nib.load(str(out)).dataobj)
    assert ours.shape == reference.shape == nib.load(str(real_ct)).shape
    dice = _dice_per_label(ours, reference)
    assert len(dice) >= 5, dice  # body, lungs, ... : the labels are not trivial
    assert min(dice.values()) >= 0.999, dice
    semantics = json.loads(out.with_name("ct_seg.json").read_text())["model"]["semantics"]
    assert semantics["grid"] == "monai" and semantics["invert"] == postprocessing


@pytest.mark.slow
def test_replicate_padding_of_a_scan_thinner_than_a_window(tmp_path):
    """The whole-body bundle pads small scans by replication: a 100 mm slab on a 3 mm grid is
    34 planes, thinner than the 64-plane window."""
    ct = _clinical(tmp_path / "thin.nii.gz", (1.5, 1.5, 2.5), (200, 170, 40))
    spec = _with_inference(resolve_spec("phantom-unet3d"), padding_mode="replicate")
    bundle = write_bundle_from_spec(spec, tmp_path / "bundle", "labels")
    assert spec_from_bundle(bundle).inference.padding_mode == "replicate"
    reference = BundleReference(bundle)(ct)
    out = tmp_path / "seg.nii.gz"
    res = CliRunner().invoke(main, ["infer", str(ct), "-o", str(out), "--model", str(bundle), "-q"])
    assert res.exit_code == 0, res.output
    dice = _dice_per_label(np.asarray(nib.load(str(out)).dataobj), reference)
    assert dice and min(dice.values()) >= 0.999, dice


def test_wholebody_preprocessing_equals_monais_transforms(tmp_path, real_ct):
    """z-score of the non-zero voxels then ScaleIntensityd(-1, 1), on MONAI Spacingd's grid: the
    tensor the network sees equals the one MONAI's own transforms make, voxel for voxel."""
    from medseg.io import read_volume
    from medseg.models.monai import BundleModel

    config = json.loads(json.dumps(WHOLEBODY))
    config["pixdim"] = [2.0, 2.0, 3.0]
    bundle = write_bundle(tmp_path / "wb", config, WHOLEBODY_META)
    torch.save({}, bundle / "models" / "model.pt")
    model = BundleModel(bundle)
    it = model.spec.preprocessing.intensity
    assert (it.kind, it.nonzero, it.rescale) == ("zscore", True, (-1.0, 1.0))
    ours, record = model.prepare(read_volume(real_ct))

    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(bundle / "configs" / "inference.json"))
    theirs = parser.get_parsed_content("preprocessing")({"image": str(real_ct)})["image"]
    assert tuple(ours.shape) == tuple(theirs.shape)
    np.testing.assert_allclose(record.model_affine, np.asarray(theirs.affine, dtype=float), atol=1e-6)
    close = np.isclose(ours.numpy(), theirs.numpy(), rtol=0, atol=2e-5)
    # NormalizeIntensityd(nonzero=True) leaves voxels that are exactly 0 after the resampling alone;
    # where two neighbours of 0 HU meet, float rounding of the two resamplings decides "exactly 0"
    # (measured: 104 of 2.3 M voxels here)
    assert close.mean() > 0.9999, close.mean()
    assert float(ours.min()) == -1.0 and float(ours.max()) == 1.0


def test_the_zoo_wholebody_config_maps_with_its_rescaling_and_order(tmp_path):
    config = json.loads(json.dumps(WHOLEBODY))
    config["inferer"]["padding_mode"] = "replicate"
    config["inferer"]["device"] = "$torch.device('cuda:0' if torch.cuda.is_available() else 'cpu')"
    config["postprocessing"] = {
        "_target_": "Compose",
        "transforms": [
            {"_target_": "Activationsd", "keys": "pred", "softmax": True},
            {"_target_": "AsDiscreted", "keys": "pred", "argmax": True},
            {"_target_": "Invertd", "keys": "pred", "transform": "@preprocessing", "orig_keys": "image"},
            {"_target_": "SaveImaged", "keys": "pred", "output_dir": "$@bundle_root + '/eval'"},
        ],
    }
    bundle = write_bundle(tmp_path / "wb", config, WHOLEBODY_META)
    (bundle / "models" / "model.pt").write_bytes(b"")
    spec = spec_from_bundle(bundle)  # the device and output_dir expressions are not needed, so not read
    assert spec.preprocessing.grid == "monai" and spec.preprocessing.intensity.rescale == (-1.0, 1.0)
    assert spec.inference.invert == "labels" and spec.inference.padding_mode == "replicate"
    config["pixdim"] = "$[1.5, 1.5, 1.5] if @displayable_configs#highres else [3.0, 3.0, 3.0]"
    bundle2 = write_bundle(tmp_path / "wb2", config, WHOLEBODY_META)
    with pytest.raises(ModelError, match="'pixdim' is a Python expression.*--trust-bundle"):
        spec_from_bundle(bundle2)


@pytest.mark.parametrize(
    "steps,expected",
    [
        (["softmax", "invert_linear", "argmax"], "probabilities"),
        (["softmax", "argmax", "invert_nearest"], "labels"),
        (["invert_linear", "softmax", "argmax"], "logits"),
        (["softmax", "invert_nearest", "argmax"], "labels"),
        ([], "logits"),
    ],
)
def test_postprocessing_order_decides_what_is_inverted(tmp_path, steps, expected):
    bundle = _bundle_with_post(tmp_path, steps)
    assert spec_from_bundle(bundle).inference.invert == expected


@pytest.mark.parametrize(
    "steps,match",
    [
        (["sigmoid", "invert_linear"], "sigmoid"),
        (["softmax", "argmax", "invert_linear"], "interpolates label indices linearly"),
        (["softmax", "invert_linear", "argmax", "lcc"], "KeepLargestConnectedComponentd .* no medseg equivalent"),
    ],
)
def test_postprocessing_medseg_cannot_reproduce_is_named(tmp_path, steps, match):
    with pytest.raises(ModelError, match=match):
        spec_from_bundle(_bundle_with_post(tmp_path, steps))


def _bundle_with_post(tmp_path, steps):
    from tests.models.test_bundle import SPLEEN, SPLEEN_META

    table = {
        "softmax": {"_target_": "Activationsd", "keys": "pred", "softmax": True},
        "sigmoid": {"_target_": "Activationsd", "keys": "pred", "sigmoid": True},
        "argmax": {"_target_": "AsDiscreted", "keys": "pred", "argmax": True},
        "invert_linear": {
            "_target_": "Invertd",
            "keys": "pred",
            "transform": "@preprocessing",
            "nearest_interp": False,
        },
        "invert_nearest": {"_target_": "Invertd", "keys": "pred", "transform": "@preprocessing"},
        "lcc": {"_target_": "KeepLargestConnectedComponentd", "keys": "pred", "applied_labels": [1]},
    }
    config = {**SPLEEN, "postprocessing": {"_target_": "Compose", "transforms": [table[s] for s in steps]}}
    bundle = write_bundle(tmp_path / "b", config, SPLEEN_META)
    (bundle / "models" / "model.pt").write_bytes(b"")
    return bundle


def test_medseg_models_keep_logit_interpolation_and_say_so(tmp_path):
    spec = resolve_spec("phantom-unet3d")
    assert spec.preprocessing.grid == "medseg" and spec.inference.invert == "logits"
    out = tmp_path / "seg.nii.gz"
    res = CliRunner().invoke(
        main,
        ["infer", str(ROOT / "sample_data" / "phantom_ct.nii.gz"), "-o", str(out), "-q", "--model", "phantom-unet3d"],
    )
    assert res.exit_code == 0, res.output
    semantics = json.loads(out.with_name("seg.json").read_text())["model"]["semantics"]
    assert semantics["invert"] == "logits" and semantics["grid"] == "medseg"
