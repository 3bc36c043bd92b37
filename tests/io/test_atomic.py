import hashlib

import pytest

from medseg.io.atomic import TMP_MARKER, atomic_path, sha256_of, write_text_atomic


def test_success_renames_and_leaves_no_temp(tmp_path):
    write_text_atomic(tmp_path / "a.json", "{}")
    assert (tmp_path / "a.json").read_text() == "{}"
    assert not [p for p in tmp_path.iterdir() if TMP_MARKER in p.name]


def test_failure_keeps_old_file_and_removes_temp(tmp_path):
    target = tmp_path / "labels.nii.gz"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            assert tmp.name.endswith(".nii.gz") and tmp.parent == tmp_path
            tmp.write_text("half")
            raise RuntimeError("killed mid-write")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["labels.nii.gz"]


def test_sha256_of_a_file_and_of_a_folder(tmp_path):
    from medseg.batch.cohort import content_sha256
    from medseg.models import checkpoints

    data = bytes(range(256)) * 5000  # more than one read chunk
    (tmp_path / "a.bin").write_bytes(data)
    assert sha256_of(tmp_path / "a.bin") == hashlib.sha256(data).hexdigest()
    assert sha256_of(tmp_path / "a.bin", chunk=1000) == hashlib.sha256(data).hexdigest()
    series = tmp_path / "series"
    (series / "sub").mkdir(parents=True)
    (series / "1.dcm").write_bytes(b"one")
    (series / "sub" / "2.dcm").write_bytes(b"two")
    expected = hashlib.sha256(b"1.dcm\0one" + b"sub/2.dcm\0two").hexdigest()  # names and bytes, sorted
    assert sha256_of(series) == expected == content_sha256(series)
    (series / "sub" / "2.dcm").rename(series / "sub" / "3.dcm")
    assert sha256_of(series) != expected
    assert checkpoints.sha256_of is sha256_of  # one helper
    with pytest.raises(FileNotFoundError):
        sha256_of(tmp_path / "absent")
    assert content_sha256(tmp_path / "absent") is None
