import pytest

from medseg.io.atomic import TMP_MARKER, atomic_path, write_text_atomic


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
