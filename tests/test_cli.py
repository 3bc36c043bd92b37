"""The command line: one-line errors with exit code 1, no traceback, nothing left behind."""

import subprocess
import sys
import time

import numpy as np
import pytest
from click.testing import CliRunner

from medseg.cli import main
from tests.conftest import save_nifti, write_tiny_model


def _run(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def test_help_is_fast_and_does_not_import_torch():
    code = "import sys, medseg.cli; assert 'torch' not in sys.modules and 'monai' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
    t = time.perf_counter()
    out = subprocess.run([sys.executable, "-m", "medseg.cli", "--help"], capture_output=True, text=True, check=True)
    assert "infer" in out.stdout and time.perf_counter() - t < 5  # generous for a loaded CI box


def _bad_inputs(tmp):
    cases = {"missing": tmp / "absent.nii.gz"}
    (tmp / "empty_dir").mkdir()
    (tmp / "empty_dir" / "readme.txt").write_text("x")
    cases["dir_without_images"] = tmp / "empty_dir"
    (tmp / "notes.nii.gz").write_text("plain text")
    cases["non_image"] = tmp / "notes.nii.gz"
    full = save_nifti(
        tmp / "full.nii.gz", np.random.default_rng(0).normal(size=(40, 40, 40)).astype(np.float32), np.eye(4)
    )
    (tmp / "truncated.nii.gz").write_bytes(full.read_bytes()[: full.stat().st_size // 2])
    cases["truncated"] = tmp / "truncated.nii.gz"
    cases["2d"] = save_nifti(tmp / "flat.nii.gz", np.zeros((20, 20), np.int16), np.eye(4))
    cases["4d"] = save_nifti(tmp / "fmri.nii.gz", np.zeros((10, 10, 10, 3), np.int16), np.eye(4))
    nan = np.zeros((10, 10, 10), np.float32)
    nan[2, 2, 2] = np.nan
    cases["nan"] = save_nifti(tmp / "nan.nii.gz", nan, np.eye(4))
    inf = np.zeros((10, 10, 10), np.float32)
    inf[3, 3, 3] = np.inf
    cases["inf"] = save_nifti(tmp / "inf.nii.gz", inf, np.eye(4))
    cases["zero_size"] = save_nifti(tmp / "zero.nii.gz", np.zeros((10, 0, 10), np.int16), np.eye(4))
    return cases


EXPECTED = {
    "missing": "no such file",
    "dir_without_images": "no readable image",
    "non_image": "NIfTI",
    "truncated": "truncated",
    "2d": "2D image",
    "4d": "3 volumes",
    "nan": "NaN",
    "inf": "Inf",
    "zero_size": "zero-size",
}


@pytest.mark.parametrize("case", list(EXPECTED))
def test_bad_input_one_line_error_exit_1_no_output(tmp_path, case):
    model = write_tiny_model(tmp_path / "model")
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    path = _bad_inputs(inputs)[case]
    before = set(p.name for p in inputs.rglob("*"))
    result = _run("infer", path, "--model", model, "--device", "cpu", "--stats", "--preview")
    assert result.exit_code == 1
    err = result.stderr.strip()
    assert len(err.splitlines()) == 1, err
    assert err.startswith("medseg: error:") and path.name in err and EXPECTED[case] in err
    assert "Traceback" not in result.output + result.stderr
    assert set(p.name for p in inputs.rglob("*")) == before  # nothing written


def test_model_channel_mismatch_is_one_line(tmp_path):
    model = write_tiny_model(tmp_path / "model", in_channels=2)
    scan = save_nifti(tmp_path / "scan.nii.gz", np.zeros((10, 10, 10), np.int16), np.eye(4))
    result = _run("infer", scan, "--model", model, "--device", "cpu")
    assert result.exit_code == 1 and "in_channels=2" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "scan_seg.nii.gz").exists()


def test_debug_shows_the_traceback(tmp_path):
    """With --debug the error is not turned into one line: it propagates with its traceback."""
    import traceback

    from medseg.errors import InputError

    missing = tmp_path / "absent.nii.gz"
    result = CliRunner().invoke(main, ["--debug", "infer", str(missing)])
    assert result.exit_code == 1 and isinstance(result.exception, InputError)
    assert str(result.exception) == f"{missing}: no such file or folder"
    frames = traceback.extract_tb(result.exc_info[2])
    assert "infer" in [f.name for f in frames]  # through the command...
    assert not frames[-1].filename.endswith("cli.py")  # ...from where it was raised, not re-raised there


def test_usage_error_is_exit_2():
    assert _run("infer").exit_code == 2


def test_infer_summary_and_outputs(tmp_path):
    model = write_tiny_model(tmp_path / "model")
    scan = save_nifti(tmp_path / "scan.nii.gz", np.zeros((20, 18, 16), np.int16), np.diag([2, 2, 3, 1.0]))
    result = _run(
        "infer", scan, "-o", tmp_path / "out" / "labels.nii.gz", "--model", model, "--device", "cpu", "--stats"
    )
    assert result.exit_code == 0, result.output
    assert "scan.nii.gz -> labels.nii.gz" in result.stdout
    names = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert names == ["labels.json", "labels.nii.gz", "labels_stats.csv", "labels_stats.json"]


def test_models_lists_shipped_models():
    result = _run("models")
    assert result.exit_code == 0
    assert "phantom-unet3d" in result.stdout and "phantom-unet2d" in result.stdout


def test_phantom_and_evaluate_commands(tmp_path):
    result = _run(
        "phantom",
        tmp_path / "ph",
        "-n",
        "1",
        "--seed",
        "3",
        "--orientation",
        "LPS",
        "--spacing",
        "4",
        "4",
        "5",
        "--layout",
        "flat",
    )
    assert result.exit_code == 0, result.output
    gt = tmp_path / "ph" / "phantom_00003_gt.nii.gz"
    assert gt.exists()
    result = _run(
        "evaluate", gt, gt, "--model", "phantom-unet3d", "--csv", tmp_path / "m.csv", "--json", tmp_path / "m.json"
    )
    assert result.exit_code == 0, result.output
    assert "mean Dice over 7 labels, 1 case(s): 1.0000" in result.stdout
    assert "liver" in (tmp_path / "m.csv").read_text()


def test_unwritable_output_location_is_one_line(tmp_path):
    model = write_tiny_model(tmp_path / "model")
    scan = save_nifti(tmp_path / "scan.nii.gz", np.zeros((10, 10, 10), np.int16), np.eye(4))
    blocker = tmp_path / "not_a_folder"
    blocker.write_text("a file where the output folder should be")
    result = _run("infer", scan, "-o", blocker / "x.nii.gz", "--model", model, "--device", "cpu")
    assert result.exit_code == 1
    assert len(result.stderr.strip().splitlines()) == 1 and "not_a_folder" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("command", ["convert", "view"])
def test_reader_options_are_in_the_help(command):
    result = _run(command, "--help")
    assert result.exit_code == 0, result.output
    for flag in ("--series", "--resample-irregular", "--keep-tilt"):
        assert flag in result.output
    assert "SeriesInstanceUID" in result.output and "sheared affine" in result.output


def test_convert_dicom_option_on_nifti_is_one_line_exit_1(tmp_path):
    scan = save_nifti(tmp_path / "scan.nii.gz", np.zeros((10, 10, 10), np.int16), np.eye(4))
    out = tmp_path / "out.nii.gz"
    result = _run("convert", scan, out, "--series", "2")
    assert result.exit_code == 1
    expected = f"medseg: error: {scan}: --series applies to DICOM input only; this is not a DICOM file"
    assert result.stderr.strip() == expected
    assert not out.exists()
    assert _run("convert", scan, out).exit_code == 0 and out.exists()  # without the option it converts


def test_reader_options_decorator_folds_the_flags_into_one_read_options_kwarg():
    import click

    from medseg.cli.app import handle_errors
    from medseg.cli.options import reader_options
    from medseg.io import ReadOptions

    seen = []

    @click.command()
    @click.argument("path")
    @reader_options
    @handle_errors
    def probe(path, read_options):
        seen.append((path, read_options))

    assert CliRunner().invoke(probe, ["x", "--series", "1.2.3#2", "--keep-tilt"]).exit_code == 0
    assert CliRunner().invoke(probe, ["y"]).exit_code == 0
    assert seen == [("x", ReadOptions(series="1.2.3#2", keep_tilt=True)), ("y", ReadOptions())]
    result = CliRunner().invoke(probe, ["z", "--series", " "])
    assert result.exit_code == 2 and "series must not be empty" in result.output


def test_usage_errors_are_one_line_but_medseg_alone_shows_the_help():
    bad = CliRunner().invoke(main, ["infer", "--no-such-option"])
    assert bad.exit_code == 2 and bad.stderr.strip().splitlines() == [
        "medseg: error: No such option '--no-such-option' (see 'medseg infer --help')"
    ], bad.stderr
    bare = CliRunner().invoke(main, [])
    assert "[OPTIONS] COMMAND [ARGS]" in bare.output and "medseg: error" not in bare.output
