"""`medseg prompt` end to end on a real chest CT (CIP ct-64, tests/data): exact grid, named labels, errors."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
from click.testing import CliRunner

from medseg.cli import main

RIGHT_LUNG = "19,32,62"  # the voxel deepest inside the right lung of lm-64 (regions 12-14)
LEFT_LUNG = "47,37,26"


@pytest.fixture(scope="module")
def chest(test_data, tmp_path_factory):
    """ct-64.nrrd as NIfTI (so qform/sform codes can be compared) and its CIP lung regions."""
    from medseg.io import read_volume, write_nifti

    folder = test_data / "ct" / "chestimagingplatform"
    image = read_volume(folder / "ct-64.nrrd")
    path = tmp_path_factory.mktemp("chest") / "ct64.nii.gz"
    write_nifti(image, path)
    region = read_volume(folder / "lm-64.nrrd").array % 256  # CIP: value = 256 * type + region
    return path, (region >= 12) & (region <= 14), (region >= 9) & (region <= 11)


def _run(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def test_mask_on_the_exact_grid(chest, tmp_path):
    image, right, _ = chest
    out = tmp_path / "right.nii.gz"
    result = _run("prompt", image, "--voxel", RIGHT_LUNG, "-o", out)
    assert result.exit_code == 0, result.output
    src, seg = nib.load(str(image)), nib.load(str(out))
    assert seg.shape == src.shape
    assert np.array_equal(seg.affine, src.affine)
    assert np.array_equal(seg.header.get_qform(), src.header.get_qform())
    assert np.array_equal(seg.header.get_sform(), src.header.get_sform())
    assert int(seg.header["qform_code"]) == int(src.header["qform_code"])
    assert int(seg.header["sform_code"]) == int(src.header["sform_code"])
    mask = np.asarray(seg.dataobj) > 0
    assert seg.get_data_dtype() == np.uint8
    assert 2 * (mask & right).sum() / (mask.sum() + right.sum()) >= 0.95  # measured 0.981


def test_point_in_mm_equals_the_voxel(chest, tmp_path):
    image, _, _ = chest
    affine = nib.load(str(image)).affine
    xyz = affine @ np.array([*map(float, RIGHT_LUNG.split(",")), 1.0])
    a, b = tmp_path / "a.nii.gz", tmp_path / "b.nii.gz"
    assert _run("prompt", image, "--voxel", RIGHT_LUNG, "-o", a).exit_code == 0
    assert _run("prompt", image, "--point", ",".join(f"{v:.3f}" for v in xyz[:3]), "-o", b).exit_code == 0
    assert np.array_equal(np.asarray(nib.load(str(a)).dataobj), np.asarray(nib.load(str(b)).dataobj))


def test_labels_as_adds_and_replaces_named_labels(chest, tmp_path):
    image, right, left = chest
    labels = tmp_path / "ct64_seg.nii.gz"
    assert _run("prompt", image, "--voxel", RIGHT_LUNG, "--as", "right lung", "-o", labels).exit_code == 0
    result = _run("prompt", image, "--voxel", LEFT_LUNG, "--labels", labels, "--as", "left lung")
    assert result.exit_code == 0, result.output
    assert "label 2 'left lung'" in result.output
    data = np.asarray(nib.load(str(labels)).dataobj)
    assert set(np.unique(data)) == {0, 1, 2}
    sidecar = json.loads((tmp_path / "ct64_seg.json").read_text())
    assert {k: v["name"] for k, v in sidecar["labels"].items()} == {"1": "right lung", "2": "left lung"}
    assert sidecar["edited"]["tool"] == "medseg prompt"
    # the same name again replaces that label, keeping its value; the other label stays
    out = tmp_path / "edited_seg.nii.gz"
    result = _run(
        "prompt",
        image,
        "--voxel",
        RIGHT_LUNG,
        "--box",
        "0,0,55,63,63,70",
        "--labels",
        labels,
        "--as",
        "right lung",
        "-o",
        out,
    )
    assert result.exit_code == 0, result.output
    edited = np.asarray(nib.load(str(out)).dataobj)
    assert np.array_equal(edited == 2, data == 2)
    assert (edited == 1).sum() < (data == 1).sum() and not (edited[..., :55] == 1).any()
    assert json.loads((tmp_path / "edited_seg.json").read_text())["labels"]["1"]["name"] == "right lung"


@pytest.mark.parametrize(
    "args, message",
    [
        (["--voxel", "99,32,62"], "outside the image"),
        (["--point", "10000,0,0"], "outside the image"),
        (["--voxel", RIGHT_LUNG, "--box", "0,0,62,63,63,62"], "zero size"),
        (["--voxel", RIGHT_LUNG, "--negative", RIGHT_LUNG], "on a positive prompt"),
        (["--voxel", "2,2,40"], "air outside the body"),
        (["--voxel", "1,2"], "3 finite numbers"),
    ],
)
def test_bad_prompts_exit_1_with_one_line(chest, tmp_path, args, message):
    image, _, _ = chest
    result = CliRunner().invoke(main, ["prompt", str(image), *args, "-o", str(tmp_path / "m.nii.gz")])
    assert result.exit_code == 1
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("medseg: error:") and message in lines[0], result.output
    assert not (tmp_path / "m.nii.gz").exists()


def test_labels_needs_a_name(chest, tmp_path):
    image, _, _ = chest
    result = CliRunner().invoke(main, ["prompt", str(image), "--voxel", RIGHT_LUNG, "--labels", str(image)])
    assert result.exit_code == 2 and "--as" in result.output


def test_from_labels_takes_the_model_component_under_the_click(chest, test_data, tmp_path):
    from scipy import ndimage as ndi

    from medseg.io import read_volume

    image, _, _ = chest
    seg_path = test_data / "ct" / "chestimagingplatform" / "lm-64.nrrd"
    out = tmp_path / "component.nii.gz"
    result = _run("prompt", image, "--voxel", RIGHT_LUNG, "--from-labels", seg_path, "-o", out)
    assert result.exit_code == 0, result.output
    lm = read_volume(seg_path).array
    value = lm[tuple(map(int, RIGHT_LUNG.split(",")))]
    lab, _ = ndi.label(lm == value, structure=np.ones((3, 3, 3)))
    expected = lab == lab[tuple(map(int, RIGHT_LUNG.split(",")))]
    assert np.array_equal(np.asarray(nib.load(str(out)).dataobj) > 0, expected)


def test_labels_on_another_grid_are_refused(chest, tmp_path):
    image, _, _ = chest
    other = tmp_path / "other_seg.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((8, 8, 8), np.uint8), np.eye(4)), str(other))
    result = CliRunner().invoke(
        main, ["prompt", str(image), "--voxel", RIGHT_LUNG, "--labels", str(other), "--as", "lung"]
    )
    assert result.exit_code == 1 and "not the image's" in result.output and str(other) in result.output
    assert np.asarray(nib.load(str(other)).dataobj).max() == 0
