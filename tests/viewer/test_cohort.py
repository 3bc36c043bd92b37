"""Labelling a cohort (``medseg view DIR``): cases from a real batch output, navigation, saving on the
exact grid, the review ledger surviving a crash, and one rendered session (Save & next)."""

from __future__ import annotations

import json
import shutil

import nibabel as nib
import numpy as np
import pytest
from click.testing import CliRunner

from medseg.cli import main
from medseg.phantom import write_phantom
from medseg.viewer.cohort import (
    REVIEW_LEDGER,
    CohortSession,
    ReviewLedger,
    is_cohort_folder,
    open_cohort,
)


@pytest.fixture(scope="module")
def batch_out(tmp_path_factory):
    """3 phantoms segmented by `medseg batch` (ct-anatomy), run from the cohort's parent with relative
    paths as a user types them; returns the output folder (copy it before writing into it)."""
    root = tmp_path_factory.mktemp("cohort")
    for i, axcodes in enumerate(("RAS", "LPS", "LPS")):
        write_phantom(i, str(root / "in" / f"case{i}.nii.gz"), None, axcodes=axcodes, spacing=(6.0, 6.0, 8.0))
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        result = CliRunner().invoke(main, ["batch", "in", "-o", "out", "--workers", "1", "-q"])
    assert result.exit_code == 0, result.output
    return root / "out"


@pytest.fixture
def cohort_dir(batch_out, tmp_path):
    """A private copy of the batch's input and output folders (same relative layout)."""
    shutil.copytree(batch_out.parent / "in", tmp_path / "in")
    shutil.copytree(batch_out, tmp_path / "out")
    return tmp_path / "out"


def _layers(case):
    """The image and label layer tuples the viewer would build for a case (no napari needed)."""
    from medseg.io import read_volume
    from medseg.viewer.layers import image_layer_data, info_from_sidecar, labels_layer_data

    image = image_layer_data(read_volume(case.image), warn=False)
    labels = labels_layer_data(
        read_volume(case.labels_to_open), info=info_from_sidecar(case.labels_to_open), warn=False
    )
    return image, labels


def test_a_batch_output_lists_its_cases_with_their_scans_and_labels(cohort_dir, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path.parent)  # not where the batch ran: its relative input paths must still resolve
    cohort = open_cohort(cohort_dir)
    assert cohort.kind == "batch" and cohort.ledger_path == cohort_dir / REVIEW_LEDGER
    assert [c.case_id for c in cohort.cases] == ["case0", "case1", "case2"]
    for case in cohort.cases:
        assert case.image.samefile(tmp_path / "in" / f"{case.case_id}.nii.gz")
        assert case.labels == cohort_dir / f"{case.case_id}_seg.nii.gz" and case.labels.is_file()
        assert case.corrected == cohort_dir / f"{case.case_id}_seg_corrected.nii.gz"
        assert case.labels_to_open == case.labels
    assert is_cohort_folder(cohort_dir) and is_cohort_folder(tmp_path / "in")
    assert not is_cohort_folder(tmp_path / "in" / "case0.nii.gz")


def test_a_folder_of_dicom_files_is_one_scan_not_a_cohort(test_data):
    folder = test_data / "dicom" / "dicom2nifti" / "tests_data" / "hitachi" / "anatomical" / "001"
    assert folder.is_dir() and not is_cohort_folder(folder)


def test_a_folder_of_scans_pairs_each_with_the_seg_beside_it_and_a_manifest_takes_a_labels_column(cohort_dir, tmp_path):
    scans = tmp_path / "in"
    shutil.copy(cohort_dir / "case1_seg.nii.gz", scans / "case1_seg.nii.gz")
    cohort = open_cohort(scans)
    assert cohort.kind == "folder" and [c.case_id for c in cohort.cases] == ["case0", "case1", "case2"]
    assert cohort.cases[0].labels is None and cohort.cases[0].corrected == scans / "case0_seg_corrected.nii.gz"
    assert cohort.cases[1].labels == scans / "case1_seg.nii.gz"
    manifest = tmp_path / "cases.csv"
    manifest.write_text("id,path,labels\nA,in/case2.nii.gz,out/case2_seg.nii.gz\nB,in/case0.nii.gz,\n")
    cohort = open_cohort(manifest=manifest)
    a, b = cohort.cases
    assert (a.case_id, a.labels, b.labels) == ("A", tmp_path / "out" / "case2_seg.nii.gz", None)
    assert cohort.ledger_path == tmp_path / "cases_review.jsonl"
    # with the batch's output folder the labels are <id>_seg.nii.gz there
    (tmp_path / "ids.csv").write_text("id,path\ncase1,in/case1.nii.gz\n")
    (case,) = open_cohort(manifest=tmp_path / "ids.csv", output=cohort_dir).cases
    assert case.labels == cohort_dir / "case1_seg.nii.gz"


def test_next_previous_and_unreviewed_only(cohort_dir):
    session = CohortSession(open_cohort(cohort_dir), reviewer="dr-a")
    assert session.index == 0 and session.progress_text() == "case 1/3 (0 reviewed)"
    assert session.next().case_id == "case1" and session.next().case_id == "case2"
    assert session.next() is None and session.index == 2  # stays at the end
    assert session.previous().case_id == "case1"
    session.mark("reviewed")
    assert session.progress_text() == "case 2/3 (1 reviewed)"
    session.go_to("case0")
    session.unreviewed_only = True
    assert session.next().case_id == "case2"  # case1 is reviewed: stepped over
    assert session.previous().case_id == "case0"
    session.mark("skipped")
    assert session.progress_text() == "case 1/3 (1 reviewed, 1 skipped)"
    assert session.first_unreviewed() == 2


def test_saved_corrections_keep_the_scans_exact_grid_and_a_rerun_of_the_batch_keeps_them(
    cohort_dir, tmp_path, monkeypatch
):
    from medseg.io.atomic import sha256_of

    session = CohortSession(open_cohort(cohort_dir), reviewer="dr-a", start="case1")  # the LPS case
    case = session.current
    original_sha = sha256_of(case.labels)
    (image_data, image_kwargs, _), (data, kwargs, _) = _layers(case)
    data = data.copy()
    data[data == 1] = 0  # erase one structure, paint a block
    data[2:4, 3:6, 4:8] = 9  # a value the model does not use
    path = session.save_corrected(data, kwargs, image_metadata=image_kwargs["metadata"])
    assert path == cohort_dir / "case1_seg_corrected.nii.gz"

    scan, saved = nib.load(case.image), nib.load(path)
    assert saved.shape == scan.shape and np.array_equal(saved.affine, scan.affine)
    assert np.array_equal(saved.header.get_qform(), scan.header.get_qform())
    assert np.array_equal(saved.header.get_sform(), scan.header.get_sform())
    assert int(saved.header["qform_code"]) == int(scan.header["qform_code"])
    assert int(saved.header["sform_code"]) == int(scan.header["sform_code"])
    values = np.asarray(saved.dataobj)
    assert int((values == 9).sum()) == 2 * 3 * 4 and not np.any(values == 1)
    sidecar = json.loads((cohort_dir / "case1_seg_corrected.json").read_text())
    assert sidecar["model"]["name"] == "ct-anatomy" and sidecar["corrected_from"].endswith("case1_seg.nii.gz")
    assert sidecar["edited"]["labels_path"].endswith("case1_seg_corrected.nii.gz") and "outputs" not in sidecar

    assert sha256_of(case.labels) == original_sha  # the model's output is untouched
    assert case.labels_to_open == path and session.status() == "saved"
    record = session.mark("reviewed")
    assert record.corrected and record.labels == "case1_seg_corrected.nii.gz"
    assert record.labels_sha256 == sha256_of(path) and record.reviewer == "dr-a"

    # the batch, rerun as it was run, sees its outputs intact: nothing is redone, the correction stays
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(main, ["batch", "in", "-o", "out", "--workers", "1", "-q"])
    assert result.exit_code == 0, result.output
    assert "0 done now, 3 skipped" in result.output
    assert sha256_of(path) == record.labels_sha256


def test_a_new_session_resumes_at_the_first_unreviewed_case_and_survives_a_torn_line(cohort_dir):
    first = CohortSession(open_cohort(cohort_dir), reviewer="dr-a")
    first.mark("reviewed")
    first.next()
    first.mark("skipped")
    first.next()
    # the process dies mid-write: a partial line without its newline
    ledger_file = cohort_dir / REVIEW_LEDGER
    with open(ledger_file, "ab") as fh:
        fh.write(b'{"case_id": "case2", "status": "revi')

    with pytest.warns(UserWarning, match="skipped 1 unreadable line"):
        resumed = CohortSession(open_cohort(cohort_dir), reviewer="dr-b")
    assert resumed.current.case_id == "case2"
    assert resumed.progress_text() == "case 3/3 (1 reviewed, 1 skipped)"
    resumed.mark("reviewed")  # appended on a fresh line, after the torn one
    lines = ledger_file.read_bytes().split(b"\n")
    assert json.loads(lines[-2])["reviewer"] == "dr-b" and lines[-1] == b""

    with pytest.warns(UserWarning, match="unreadable line"):
        again = CohortSession(open_cohort(cohort_dir))
    assert again.counts() == {"reviewed": 2, "skipped": 1, "changed": 0, "saved": 0, "todo": 0}
    assert again.first_unreviewed() is None and again.index == 0


def test_a_review_of_labels_that_changed_since_no_longer_counts(cohort_dir):
    session = CohortSession(open_cohort(cohort_dir))
    session.mark("reviewed")
    session.next()
    session.mark("reviewed")
    assert session.progress_text() == "case 2/3 (2 reviewed)"
    shutil.copy(cohort_dir / "case2_seg.nii.gz", cohort_dir / "case0_seg.nii.gz")  # e.g. the batch redid case0
    resumed = CohortSession(open_cohort(cohort_dir))
    assert resumed.status(resumed.cases[0]) == "changed" and resumed.current.case_id == "case0"
    assert resumed.progress_text() == "case 1/3 (1 reviewed, 1 changed)"


def test_a_corrupt_line_in_the_middle_costs_only_that_event(tmp_path):
    path = tmp_path / REVIEW_LEDGER
    good = {"case_id": "a", "status": "reviewed", "time": "t", "reviewer": "r"}
    path.write_text(
        json.dumps(good) + "\n\x00\x00garbage\n" + json.dumps({**good, "status": "nonsense"}) + "\n"
        + json.dumps({**good, "case_id": "b", "status": "skipped"}) + "\n"
    )  # fmt: skip
    with pytest.warns(UserWarning, match="skipped 2 unreadable line"):
        ledger = ReviewLedger(path)
    assert ledger.status("a") == "reviewed" and ledger.status("b") == "skipped" and ledger.bad_lines == [2, 3]


def test_cli_lists_review_status_and_refuses_cohort_options_on_one_scan(cohort_dir, tmp_path):
    CohortSession(open_cohort(cohort_dir), reviewer="x").mark("reviewed")
    result = CliRunner().invoke(main, ["view", str(cohort_dir), "--list"])
    assert result.exit_code == 0, result.output
    assert "3 case(s)" in result.output and "case0\treviewed\tcase0_seg.nii.gz" in result.output
    assert "1 reviewed, 0 skipped, 0 changed, 0 saved, 2 todo" in result.output
    scan = tmp_path / "in" / "case0.nii.gz"
    result = CliRunner().invoke(main, ["view", str(scan), "--unreviewed-only"])
    assert result.exit_code == 2 and "--unreviewed-only works on a cohort" in result.output
    result = CliRunner().invoke(main, ["view", str(cohort_dir), str(cohort_dir / "case0_seg.nii.gz")])
    assert result.exit_code == 2 and "takes no LABELS" in result.output
    result = CliRunner().invoke(main, ["view", str(cohort_dir), "--case", "nope", "--list"])
    assert result.exit_code == 1 and "no case 'nope'" in result.output
    result = CliRunner().invoke(main, ["view"])
    assert result.exit_code == 2


@pytest.mark.slow  # a napari window on Xvfb
def test_rendered_session_edit_save_and_next_then_unsaved_edits_are_asked_about(viewer, cohort_dir):
    from medseg.io.atomic import sha256_of
    from medseg.viewer._cohort_widget import open_cohort_viewer
    from medseg.viewer.actions import new_labels_layer

    session = CohortSession(open_cohort(cohort_dir), reviewer="dr-a")
    _, widget = open_cohort_viewer(session, viewer=viewer, widget=False)
    assert [type(x).__name__ for x in viewer.layers] == ["Image", "Labels"]
    assert widget.progress.text() == "case 1/3 (0 reviewed)" and not widget.has_unsaved_edits()
    labels = widget.labels_layer
    labels.data[3, 4:6, 5:9] = 9
    assert widget.has_unsaved_edits()
    assert widget.save_and_next()

    corrected = cohort_dir / "case0_seg_corrected.nii.gz"
    scan, saved = nib.load(session.cases[0].image), nib.load(corrected)
    assert saved.shape == scan.shape and np.array_equal(saved.affine, scan.affine)
    assert int((np.asarray(saved.dataobj) == 9).sum()) == 8
    record = ReviewLedger(cohort_dir / REVIEW_LEDGER).latest["case0"]
    assert record.status == "reviewed" and record.corrected and record.labels_sha256 == sha256_of(corrected)
    assert session.current.case_id == "case1" and widget.progress.text() == "case 2/3 (1 reviewed)"
    assert len(viewer.layers) == 2 and viewer.layers[1].name == "case1_seg"  # the case's layers were replaced

    widget.labels_layer.data[2, 2:4, 2:4] = 9
    data, kwargs, _ = new_labels_layer(widget.image_layer.data, widget.image_layer.metadata)
    viewer.add_labels(data, **kwargs)  # as the Segment button adds one: it belongs to the case
    widget.ask_unsaved = lambda: "cancel"
    assert not widget.go_next() and session.current.case_id == "case1"
    widget.ask_unsaved = lambda: "discard"
    assert widget.go_previous() and session.current.case_id == "case0"
    assert len(viewer.layers) == 2  # everything of case1 went with it
    assert not (cohort_dir / "case1_seg_corrected.nii.gz").exists()
    assert widget.labels_layer.name == "case0_seg_corrected"  # reopens the correction
    assert int((widget.labels_layer.data == 9).sum()) == 8


@pytest.mark.slow  # a napari window on Xvfb
def test_cli_view_of_a_batch_folder_opens_the_first_unreviewed_case(display, cohort_dir, tmp_path):
    from PIL import Image

    CohortSession(open_cohort(cohort_dir), reviewer="x").mark("reviewed")
    out = tmp_path / "shot.png"
    result = CliRunner().invoke(main, ["view", str(cohort_dir), "--no-widget", "--screenshot", str(out)])
    assert result.exit_code == 0, result.output
    assert "case1: case 2/3 (1 reviewed)" in result.output
    assert Image.open(out).size[0] >= 1000
