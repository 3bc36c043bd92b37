"""DICOM series in a cohort: one case per series, segmented like NIfTI cases."""

from __future__ import annotations

import shutil

import nibabel as nib
from click.testing import CliRunner

from medseg.batch import discover_cases
from medseg.cli import main
from medseg.io import read_volume


def _cohort(test_data, phantom_bank, tmp_path):
    cohort = tmp_path / "cohort"
    cohort.mkdir()
    shutil.copy(phantom_bank / "p0.nii.gz", cohort / "ct.nii.gz")
    d2n = test_data / "dicom/dicom2nifti/tests_data"
    # one series in a folder (Siemens MR, 4 slices); two series saved into one folder (Siemens, Hitachi)
    shutil.copytree(d2n / "siemens/anatomical/001", cohort / "siemens")
    (cohort / "mixed").mkdir()
    for vendor in ("generic", "hitachi"):
        for f in (d2n / vendor / "anatomical/001").iterdir():
            shutil.copy(f, cohort / "mixed" / f"{vendor}_{f.name}")
    # a folder of localizers only: one case that fails with the reader's reason
    shutil.copytree(test_data / "dicom/pydicom_testfiles/dicomdirtests/98892003/MR2", cohort / "localizers")
    return cohort


def test_discovery_gives_one_case_per_series(test_data, phantom_bank, tmp_path):
    cases = discover_cases(_cohort(test_data, phantom_bank, tmp_path))
    ids = [c.case_id for c in cases]
    assert "ct" in ids and "siemens" in ids
    mixed = [c for c in cases if c.case_id.startswith("mixed/")]
    assert len(mixed) == 2 and "localizers" in ids
    # each mixed case reads its own series
    uids = {read_volume(c.input_path).meta["dicom"]["series_instance_uid"] for c in mixed}
    assert len(uids) == len(mixed)


def test_batch_segments_dicom_series_on_their_grid(test_data, phantom_bank, batch_model, tmp_path):
    cohort = _cohort(test_data, phantom_bank, tmp_path)
    out = tmp_path / "out"
    result = CliRunner().invoke(
        main, ["batch", str(cohort), "-o", str(out), "--model", str(batch_model), "--device", "cpu", "-q"]
    )
    assert result.exit_code == 3, result.output  # the localizer folder fails, the rest completes
    assert "failed localizers: " in result.output and "single 2D image" in result.output
    labels = nib.load(str(out / "siemens_seg.nii.gz"))
    source = read_volume(cohort / "siemens")
    assert labels.shape == source.shape
    assert abs(labels.affine - source.affine).max() < 1e-4
    assert len(list((out / "mixed").glob("*_seg.nii.gz"))) == 2
