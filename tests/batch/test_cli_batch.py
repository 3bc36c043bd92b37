"""`medseg batch` on the command line: exit codes, summary, --status, --manifest, usage errors."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from medseg.cli import main


def _batch(*args):
    return CliRunner().invoke(main, ["batch", *map(str, args)])


@pytest.mark.slow
def test_cli_batch_reports_failures_with_exit_3_and_status_reads_the_ledger(cohort_factory, batch_model, tmp_path):
    cohort = cohort_factory(2, corrupt=("broken",))
    out = tmp_path / "out"
    result = _batch(cohort, "-o", out, "--model", batch_model, "--device", "cpu", "-q")
    assert result.exit_code == 3, result.output
    assert "3 case(s): 2 done now, 0 skipped (already done), 1 failed" in result.output
    assert "failed broken: " in result.output and "truncated or corrupt" in result.output
    assert (out / "case0_seg.nii.gz").is_file() and (out / "statistics.csv").is_file()

    status = _batch("--status", out)
    assert status.exit_code == 0, status.output
    assert "2 done, 1 failed, 0 running, 0 pending of 3 case(s)" in status.output
    assert "failed broken:" in status.output

    again = _batch(cohort, "-o", out, "--model", batch_model, "--device", "cpu", "-q")
    assert again.exit_code == 3 and "2 skipped" in again.output and "--retry-failed" in again.output


def test_cli_batch_with_a_manifest_and_a_missing_file(batch_model, phantom_bank, tmp_path):
    manifest = tmp_path / "cases.csv"
    manifest.write_text(f"id,path\npatient-a/ct,{phantom_bank / 'p1.nii.gz'}\nghost,missing.nii.gz\n")
    out = tmp_path / "out"
    result = _batch("--manifest", manifest, "-o", out, "--model", batch_model, "--device", "cpu", "-q")
    assert result.exit_code == 3, result.output
    assert (out / "patient-a" / "ct_seg.nii.gz").is_file()
    assert "failed ghost: " in result.output and "no such file" in result.output


def test_cli_batch_usage_and_input_errors(tmp_path):
    (tmp_path / "in").mkdir()
    assert _batch(tmp_path / "in").exit_code == 2  # no -o
    both = _batch(tmp_path / "in", "-o", tmp_path / "o", "--manifest", tmp_path / "m.csv")
    assert both.exit_code == 2
    empty = _batch(tmp_path / "in", "-o", tmp_path / "o")
    assert empty.exit_code == 1 and "no scans found" in empty.output
    status = _batch("--status", tmp_path / "in")
    assert status.exit_code == 1 and "no batch ledger" in status.output
    bad = _batch(tmp_path / "in", "-o", tmp_path / "o", "--scheduler", "yarn")
    assert bad.exit_code == 1 and "unknown --scheduler" in bad.output


def test_cli_batch_help_has_an_example():
    result = CliRunner().invoke(main, ["batch", "--help"])
    assert result.exit_code == 0 and "medseg batch cohort/ -o results/" in result.output


def test_infer_options_work_in_batch_split_masks_dicom_seg_and_budgets(tmp_path):
    """--split-masks, --format nifti+dicom-seg and --host-memory reach every case, as on `medseg infer`; the ledger
    hashes the mask folder and the SEG, so a resumed run skips the case and a deleted mask redoes it."""
    pytest.importorskip("highdicom")
    import shutil

    from tests.conftest import ROOT

    cohort = tmp_path / "in"
    shutil.copytree(ROOT / "sample_data" / "chest_ct_dicom", cohort / "chest")
    out = tmp_path / "out"
    args = [cohort, "-o", out, "--split-masks", "--format", "nifti+dicom-seg", "--host-memory", "4GB"]
    result = _batch(*args, "--workers", "1", "-q")
    assert result.exit_code == 0, result.output
    masks = sorted(p.name for p in (out / "chest_seg_masks").iterdir())
    assert "lung_left.nii.gz" in masks and "body.nii.gz" in masks
    assert (out / "chest_seg.nii.gz").is_file() and (out / "chest_seg.dcm").is_file()
    from medseg.io.dicom_seg import read_dicom_seg

    assert read_dicom_seg(out / "chest_seg.dcm") is not None
    again = _batch(*args, "--workers", "1", "-q")
    assert again.exit_code == 0 and "1 skipped" in again.output, again.output
    (out / "chest_seg_masks" / "body.nii.gz").unlink()
    redo = _batch(*args, "--workers", "1", "-q")
    assert redo.exit_code == 0 and "1 done now" in redo.output, redo.output
    assert (out / "chest_seg_masks" / "body.nii.gz").is_file()
