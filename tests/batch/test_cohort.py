"""Cohort discovery, manifests and deterministic parts."""

from __future__ import annotations

import pytest

from medseg.batch.cohort import (
    Case,
    content_sha256,
    discover_cases,
    read_manifest,
    select_part,
    stat_fingerprint,
)
from medseg.batch.executors import parse_scheduler
from medseg.errors import InputError, MedsegError


def _touch(path, data=b"x"):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def test_discovery_is_recursive_sorted_and_skips_outputs_gt_hidden_and_temp(tmp_path):
    root = tmp_path / "in"
    for rel in [
        "b.nii.gz",
        "a.nii",
        "sub/c.mha",
        "sub/deeper/d.nrrd",
        "a_gt.nii.gz",
        "b_seg.nii.gz",
        "b_seg_stats.csv",
        ".hidden.nii.gz",
        ".cache/e.nii.gz",
        "sub/.medseg-tmp-abc-x.nii.gz",
        "notes.txt",
        "out/old_case.nii.gz",
    ]:
        _touch(root / rel)
    cases = discover_cases(root, skip=[root / "out"])
    assert [c.case_id for c in cases] == ["a", "b", "sub/c", "sub/deeper/d"]
    assert cases[2].input_path == root / "sub" / "c.mha"


def test_discovery_exclude_globs_replace_the_defaults(tmp_path):
    root = tmp_path / "in"
    _touch(root / "scan.nii.gz")
    _touch(root / "scan_gt.nii.gz")
    _touch(root / "mask_label.nii.gz")
    assert [c.case_id for c in discover_cases(root, exclude=["*_label.*"])] == ["scan", "scan_gt"]


def test_discovery_refuses_two_files_with_one_case_id(tmp_path):
    root = tmp_path / "in"
    _touch(root / "scan.nii")
    _touch(root / "scan.nii.gz")
    with pytest.raises(InputError, match="case id 'scan'"):
        discover_cases(root)


def test_discovery_of_a_missing_folder_is_a_one_line_error(tmp_path):
    with pytest.raises(InputError, match="is not a folder"):
        discover_cases(tmp_path / "nope")


def test_manifest_resolves_relative_paths_and_keeps_subfolder_ids(tmp_path):
    _touch(tmp_path / "data" / "x.nii.gz")
    manifest = tmp_path / "cases.csv"
    manifest.write_text("id,path\npatient-2/ct,data/x.nii.gz\npatient-1,/abs/y.nii.gz\n\n")
    cases = read_manifest(manifest)
    assert cases == [
        Case("patient-1", tmp_path.joinpath("/abs/y.nii.gz")),
        Case("patient-2/ct", tmp_path / "data" / "x.nii.gz"),
    ]


@pytest.mark.parametrize(
    "text, message",
    [
        ("name,file\na,b\n", "columns id,path"),
        ("id,path\na,x.nii\na,y.nii\n", "line 3: duplicate id 'a'"),
        ("id,path\n../escape,x.nii\n", "without '..'"),
        ("id,path\na,\n", "line 2: both id and path"),
    ],
)
def test_bad_manifests_are_refused_with_the_line(tmp_path, text, message):
    manifest = tmp_path / "cases.csv"
    manifest.write_text(text)
    with pytest.raises(MedsegError, match=message):
        read_manifest(manifest)


def test_parts_are_disjoint_cover_the_cohort_and_do_not_move_when_cases_are_added(tmp_path):
    cases = [Case(f"case{i:03d}", tmp_path / f"{i}.nii") for i in range(200)]
    parts = [select_part(cases, 4, i) for i in range(4)]
    ids = [c.case_id for p in parts for c in p]
    assert sorted(ids) == sorted(c.case_id for c in cases)
    assert len(set(ids)) == len(ids)
    assert all(20 < len(p) < 80 for p in parts)  # a hash split: roughly balanced
    grown = cases + [Case(f"new{i}", tmp_path / f"n{i}.nii") for i in range(50)]
    for i in range(4):
        old = {c.case_id for c in parts[i]}
        assert old <= {c.case_id for c in select_part(grown, 4, i)}
    with pytest.raises(MedsegError, match="--part-id"):
        select_part(cases, 4, 4)


def test_fingerprints_see_content_changes_that_keep_the_size(tmp_path):
    p = _touch(tmp_path / "a.nii", b"aaaa")
    fp, digest = stat_fingerprint(p), content_sha256(p)
    p.write_bytes(b"bbbb")
    assert stat_fingerprint(p).size == fp.size
    assert content_sha256(p) != digest
    assert stat_fingerprint(tmp_path / "missing.nii") is None


@pytest.mark.parametrize(
    "text, expected",
    [
        ("local", ("local", None)),
        ("local-cluster:3", ("local-cluster", 3)),
        ("dask://10.0.0.5:8786", ("dask", "tcp://10.0.0.5:8786")),
        ("tls://sched:8786", ("dask", "tls://sched:8786")),
    ],
)
def test_scheduler_strings(text, expected):
    assert parse_scheduler(text) == expected


@pytest.mark.parametrize("text", ["slurm", "dask://", "local-cluster:0", "local-cluster:x"])
def test_bad_scheduler_strings_are_refused(text):
    with pytest.raises(MedsegError, match="scheduler"):
        parse_scheduler(text)
