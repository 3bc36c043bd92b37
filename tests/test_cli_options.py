"""Every numeric option is checked where it enters: a value out of range is a usage error (exit 2, the
option named, nothing run); a value in range parses to itself. Property-based (hypothesis)."""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import click
import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

from medseg.cli import batch, infer, main, phantom, plan, train

ROOT = Path(__file__).resolve().parents[1]

FLOATS = st.floats(allow_nan=True, allow_infinity=True, width=64)
INTS = st.integers(min_value=-(10**6), max_value=10**6)


def _parse(command: click.Command, args: list[str]) -> dict:
    """The command's parameters after click's conversion and checks, without running it."""
    with command.make_context(command.name, args, resilient_parsing=False) as ctx:
        return dict(ctx.params)


def _refused(command: click.Command, args: list[str]) -> bool:
    try:
        _parse(command, args)
    except click.BadParameter:
        return True
    return False


@settings(max_examples=150, deadline=None)
@given(value=FLOATS)
def test_overlap_is_in_0_to_1(value):
    ok = math.isfinite(value) and 0.0 <= value < 1.0
    for command, extra in ((infer, ["scan.nii.gz"]), (plan, ["sample_data/chest_ct.nii.gz"])):
        assert _refused(command, [*extra, "--overlap", repr(value)]) == (not ok)
    if ok:
        assert _parse(infer, ["scan.nii.gz", "--overlap", repr(value)])["overlap"] == value


@settings(max_examples=100, deadline=None)
@given(value=FLOATS)
def test_step_size_is_in_0_to_1(value):
    ok = math.isfinite(value) and 0.0 < value <= 1.0
    assert _refused(infer, ["scan.nii.gz", "--step-size", repr(value)]) == (not ok)


@settings(max_examples=100, deadline=None)
@given(count=INTS, steps=INTS, batch_size=INTS, every=INTS)
def test_counts_are_positive(count, steps, batch_size, every):
    assert _refused(phantom, ["out", "-n", str(count)]) == (count < 1)
    args = ["configs/models/phantom-unet3d.yaml", "--data", "d", "--out", "o", "--steps", str(steps)]
    args += ["--batch-size", str(batch_size), "--checkpoint-every", str(every)]
    assert _refused(train, args) == (min(steps, batch_size, every) < 1)


@settings(max_examples=100, deadline=None)
@given(parts=INTS, part=INTS)
def test_parts_and_part_ids(parts, part):
    refused = _refused(batch, ["in", "-o", "out", "--num-parts", str(parts), "--part-id", str(part)])
    assert refused == (parts < 1 or part < 0)  # part < num_parts is checked before any work (below)


@settings(max_examples=100, deadline=None)
@given(hundredths=st.integers(min_value=-(10**6), max_value=10**6), unit=st.sampled_from(["", "GB", "MB", "GiB", "x"]))
def test_memory_budgets_are_positive_sizes(hundredths, unit):
    text = f"{hundredths / 100:.2f}{unit}"
    refused = _refused(infer, ["scan.nii.gz", "--host-memory", text])
    assert refused == (hundredths <= 0 or unit == "x")
    assert _refused(plan, ["sample_data/chest_ct.nii.gz", "--gpu-memory", text]) == refused


@settings(max_examples=50, deadline=None)
@given(values=st.lists(FLOATS, min_size=3, max_size=3))
def test_phantom_spacing_is_positive_and_finite(values):
    ok = all(math.isfinite(v) and v > 0 for v in values)
    assert _refused(phantom, ["out", "--spacing", *map(repr, values)]) == (not ok)


@pytest.mark.parametrize(
    "args, option",
    [
        (["infer", "x.nii.gz", "--overlap", "-0.5"], "--overlap"),
        (["infer", "x.nii.gz", "--overlap", "1"], "--overlap"),
        (["infer", "x.nii.gz", "--host-memory", "lots"], "--host-memory"),
        (["infer", "x.nii.gz", "--gpu-memory", "0GB"], "--gpu-memory"),
        (["infer", "x.nii.gz", "--folds", "0,x"], "--folds"),
        (["infer", "x.nii.gz", "-o", "labels.txt"], "-o"),
        (["batch", "in", "-o", "out", "--num-parts", "2", "--part-id", "2"], "--part-id"),
        (["batch", "in", "-o", "out", "--workers", "0"], "--workers"),
        (["phantom", "out", "--spacing", "1", "0", "1"], "--spacing"),
    ],
)
def test_usage_errors_exit_2_at_once_naming_the_option(args, option, tmp_path):
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2, result.output
    assert option in result.output
    assert "Traceback" not in result.output


# -- options a model's family does not take: refused by name, exit 2, before anything is written -------------------
@pytest.mark.parametrize(
    "model, args, message",
    [
        ("phantom-unet3d", ["--folds", "0"], "--folds is for nnU-Net v2 folders; phantom-unet3d (monai-spec)"),
        ("phantom-unet3d", ["--no-tta"], "--tta/--no-tta is for nnU-Net v2 folders"),
        ("ct-anatomy", ["--step-size", "0.5"], "--step-size is for nnU-Net v2 folders; ct-anatomy (classical)"),
        ("phantom-unet2d", ["--roi-subset", "liver"], "--roi-subset is for TotalSegmentator tasks"),
        ("nnunet-phantom", ["--roi-subset", "liver"], "--roi-subset is for TotalSegmentator tasks"),
        ("phantom-unet3d", ["--precision", "fp32"], "--precision is for nnU-Net v2 folders and TotalSegmentator"),
        ("phantom-unet3d", ["--trust-checkpoint"], "--trust-checkpoint is for nnU-Net v2 folders"),
        ("nnunet-phantom", ["--overlap", "0.25"], "tiles by --step-size (overlap = 1 - step: --step-size 0.75"),
        ("ct-anatomy", ["--overlap", "0.5"], "ct-anatomy (classical) takes no --overlap"),
    ],
)
@pytest.mark.parametrize("command", ["infer", "plan", "batch"])
def test_an_option_the_family_does_not_take_is_refused_by_name(model, args, message, command, tmp_path):
    scans = tmp_path / "in"
    scans.mkdir()
    shutil.copy(ROOT / "sample_data" / "phantom_ct.nii.gz", scans / "phantom_ct.nii.gz")
    where = {"infer": [str(scans / "phantom_ct.nii.gz"), "-o", str(tmp_path / "out" / "x.nii.gz")]}
    where["plan"] = [str(scans / "phantom_ct.nii.gz")]
    where["batch"] = [str(scans), "-o", str(tmp_path / "out")]
    result = CliRunner().invoke(main, [command, *where[command], "--model", model, *args])
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], result.stderr
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").rglob("*.nii.gz"))


def test_the_library_refuses_the_same_options_where_the_model_opens():
    from medseg.errors import OptionError
    from medseg.models.registry import open_model

    with pytest.raises(OptionError, match="--folds is for nnU-Net v2 folders"):
        open_model("phantom-unet3d", options={"roi_subset": None, "folds": [0]})
    with pytest.raises(OptionError, match="--roi-subset is for TotalSegmentator"):
        open_model("ct-anatomy", options={"roi_subset": ["liver"]})
    assert open_model("phantom-unet3d", options={"folds": None, "tta": None, "trust_checkpoint": False}).name
