"""The batch runner in-process: same outputs as `medseg infer`, isolation of failures, resume rules."""

from __future__ import annotations

import csv
import json
import os
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from medseg.batch import CaseProcessor, CaseSettings, CohortLedger, LocalPipelineExecutor, run_batch
from medseg.batch.cohort import discover_cases, select_part
from medseg.batch.runner import RunLock, ledger_path
from medseg.errors import MedsegError
from medseg.io.atomic import TMP_MARKER


@pytest.fixture(scope="module")
def processor(batch_model):
    return CaseProcessor.load(CaseSettings(model=str(batch_model), device="cpu", stats=True))


def _run(cohort, out, processor, retry_failed=False, settings=None):
    settings = settings or processor.settings
    proc = processor if settings == processor.settings else CaseProcessor(processor.segmenter, settings)
    executor = LocalPipelineExecutor(settings, processor=proc)
    return run_batch(discover_cases(cohort), out, settings, executor, retry_failed=retry_failed)


def _records(out):
    with CohortLedger(ledger_path(out), readonly=True) as ledger:
        return {r.case_id: r for r in ledger.records()}


def test_batch_writes_what_infer_writes_plus_the_cohort_table(cohort_factory, tmp_path, processor, monkeypatch):
    from medseg.batch import case as batch_case
    from medseg.inference import outputs
    from medseg.inference.pipeline import infer_file

    cohort = cohort_factory(3, nested=True)
    out = tmp_path / "out"
    hashed = []
    for module, name in ((batch_case, "content_sha256"), (outputs, "sha256_of")):
        original = getattr(module, name)
        monkeypatch.setattr(module, name, lambda p, *a, f=original: hashed.append(Path(p).name) or f(p, *a))
    summary = _run(cohort, out, processor)
    inputs = [n for n in hashed if n.endswith(".nii.gz") and "_seg" not in n]
    assert sorted(inputs) == ["case0.nii.gz", "case1.nii.gz", "case2.nii.gz"]  # each input read once for its hash
    monkeypatch.undo()
    assert (summary.done, summary.skipped, summary.failed, summary.exit_code) == (3, 0, 0, 0)
    recs = _records(out)
    assert sorted(recs) == ["case0", "case2", "sub/case1"]
    for case_id, rec in recs.items():
        src = cohort / f"{case_id}.nii.gz"
        ref = infer_file(src, tmp_path / "ref" / f"{case_id}_seg.nii.gz", model=processor.segmenter, stats=True)
        got = nib.load(str(out / f"{case_id}_seg.nii.gz"))
        want = nib.load(str(ref.labels_path))
        assert np.array_equal(np.asanyarray(got.dataobj), np.asanyarray(want.dataobj))
        assert np.array_equal(got.affine, nib.load(str(src)).affine)
        sidecar = json.loads((out / f"{case_id}_seg.json").read_text())
        infer_sidecar = json.loads(ref.sidecar_path.read_text())
        assert sidecar["input"]["sha256"] == rec.input_sha256 == infer_sidecar["input"]["sha256"]
        assert rec.timings == sidecar["timings_s"]  # one timing record: the ledger's is the sidecar's
        assert set(rec.timings) == {"hash", "read", "plan", "preprocess", "inference", "write", "total"}
        assert sidecar["plan"] == rec.plan
        assert set(rec.outputs) == {"labels", "stats_csv", "stats_json", "sidecar"}
        assert rec.plan["roi_size"] == [16, 16, 16]
        per_case = list(csv.DictReader(open(out / f"{case_id}_seg_stats.csv")))
        assert [float(r["volume_ml"]) for r in per_case] == [s["volume_ml"] for s in rec.stats]
    rows = list(csv.DictReader(open(out / "statistics.csv")))
    assert [(r["case_id"], r["name"]) for r in rows] == [
        (c, n) for c in ("case0", "case2", "sub/case1") for n in ("class1", "class2")
    ]
    assert all(float(r["volume_ml"]) >= 0 for r in rows)
    saved = json.loads((out / "batch_summary.json").read_text())
    assert saved["done"] == 3 and saved["cases_per_hour"] > 0


def test_a_corrupt_scan_fails_alone_with_its_reason(cohort_factory, tmp_path, processor):
    cohort = cohort_factory(3, corrupt=("broken",))
    out = tmp_path / "out"
    summary = _run(cohort, out, processor)
    assert (summary.done, summary.failed, summary.exit_code) == (3, 1, 3)
    rec = _records(out)["broken"]
    assert rec.status == "failed"
    assert "broken.nii.gz" in rec.error and "truncated or corrupt" in rec.error and "\n" not in rec.error
    assert not list(out.glob("broken*"))
    assert [c for c, _ in summary.failures] == ["broken"]


def test_rerun_skips_done_redoes_changed_keeps_failed_unless_asked(cohort_factory, phantom_bank, tmp_path, processor):
    cohort = cohort_factory(3, corrupt=("broken",))
    out = tmp_path / "out"
    _run(cohort, out, processor)
    first = _records(out)

    again = _run(cohort, out, processor)
    assert (again.done, again.skipped, again.failed, again.failed_earlier, again.exit_code) == (0, 3, 0, 1, 3)

    shutil.copy(phantom_bank / "p7.nii.gz", cohort / "case1.nii.gz")  # new content
    st = os.stat(cohort / "case2.nii.gz")
    os.utime(cohort / "case2.nii.gz", ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # touched, same content
    changed = _run(cohort, out, processor)
    assert (changed.done, changed.skipped, changed.redone) == (1, 2, {"input changed": 1})
    recs = _records(out)
    assert recs["case1"].input_sha256 != first["case1"].input_sha256
    assert recs["case1"].outputs["labels"]["sha256"] != first["case1"].outputs["labels"]["sha256"]
    assert recs["case2"].input_mtime_ns == st.st_mtime_ns + 10**9  # remembered, so the next check is cheap
    assert recs["broken"].attempts == 1

    retried = _run(cohort, out, processor, retry_failed=True)
    assert (retried.failed, retried.failed_earlier, _records(out)["broken"].attempts) == (1, 0, 2)

    shutil.copy(phantom_bank / "p8.nii.gz", cohort / "broken.nii.gz")  # the user fixes the scan
    fixed = _run(cohort, out, processor)
    assert (fixed.done, fixed.failed, fixed.failed_earlier, fixed.exit_code) == (1, 0, 0, 0)
    assert _records(out)["broken"].status == "done"


def test_missing_or_modified_outputs_and_new_settings_redo_the_case(cohort_factory, tmp_path, processor):
    cohort = cohort_factory(3)
    out = tmp_path / "out"
    _run(cohort, out, processor)
    (out / "case0_seg_stats.json").unlink()
    (out / "case1_seg.json").write_text("{}")
    summary = _run(cohort, out, processor)
    assert summary.done == 2 and summary.skipped == 1
    assert summary.redone == {"stats_json output is missing": 1, "sidecar output changed size": 1}
    no_stats = CaseSettings(model=processor.settings.model, device="cpu", stats=False)
    summary = _run(cohort, out, processor, settings=no_stats)
    assert summary.done == 3 and summary.redone == {"model or output options changed": 3}
    assert not list(out.glob("*_stats.*"))  # outputs of the earlier settings do not linger


def test_outputs_of_an_unrecorded_attempt_are_redone_and_temp_files_removed(cohort_factory, tmp_path, processor):
    """A crash between the sidecar's rename and the ledger commit: files exist, the ledger says running."""
    cohort = cohort_factory(2)
    out = tmp_path / "out"
    _run(cohort, out, processor)
    before = _records(out)["case0"]
    with CohortLedger(ledger_path(out)) as ledger:
        ledger.mark_running("case0", str(cohort / "case0.nii.gz"), 99)
    stale = out / f"{TMP_MARKER}0123456789ab-x.nii.gz"
    stale.write_bytes(b"half a file")
    summary = _run(cohort, out, processor)
    assert (summary.done, summary.skipped, summary.stale_temp_files_removed) == (1, 1, 1)
    assert summary.redone == {"interrupted earlier": 1}
    after = _records(out)["case0"]
    assert after.status == "done" and after.attempts == before.attempts + 2  # the simulated one, and the redo
    assert after.outputs["labels"]["sha256"] == before.outputs["labels"]["sha256"]  # deterministic model
    assert not stale.exists()


def test_a_second_runner_on_the_same_ledger_is_refused(cohort_factory, tmp_path, processor):
    cohort = cohort_factory(1)
    out = tmp_path / "out"
    out.mkdir()
    with RunLock(ledger_path(out)):
        with pytest.raises(MedsegError, match="another medseg batch"):
            _run(cohort, out, processor)


def test_parts_have_their_own_ledgers_and_share_the_cohort_table(cohort_factory, tmp_path, processor):
    from medseg.batch.report import status_text

    cohort = cohort_factory(6)
    out = tmp_path / "out"
    settings = processor.settings
    all_cases = discover_cases(cohort)
    for part in (0, 1):
        cases = select_part(all_cases, 2, part)
        executor = LocalPipelineExecutor(settings, processor=processor)
        summary = run_batch(cases, out, settings, executor, num_parts=2, part_id=part)
        assert summary.done == len(cases)
    assert sorted(p.name for p in out.glob("medseg_batch*.sqlite")) == [
        "medseg_batch.part-0-of-2.sqlite",
        "medseg_batch.part-1-of-2.sqlite",
    ]
    rows = list(csv.DictReader(open(out / "statistics.csv")))
    assert sorted({r["case_id"] for r in rows}) == [f"case{i}" for i in range(6)]
    text = status_text(out)
    assert "medseg_batch.part-1-of-2.sqlite" in text and "all parts: 6 done" in text


def test_two_streams_in_one_process_restore_the_torch_thread_count(cohort_factory, tmp_path, processor):
    import torch

    before = torch.get_num_threads()
    cohort = cohort_factory(2)
    settings = processor.settings
    with LocalPipelineExecutor(settings, workers=2, processor=processor):
        assert torch.get_num_threads() == max(1, (os.cpu_count() or 1) // 2)  # each stream gets its share
    assert torch.get_num_threads() == before
    executor = LocalPipelineExecutor(settings, workers=2, processor=processor)
    summary = run_batch(discover_cases(cohort), tmp_path / "out", settings, executor)
    assert summary.done == 2 and torch.get_num_threads() == before
