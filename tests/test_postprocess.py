import numpy as np
import pytest

from medseg import postprocess
from medseg.postprocess import label_counts, label_statistics
from medseg.volume import Volume


@pytest.fixture
def small_chunks(monkeypatch):
    """Chunks of 500 voxels, so a 30x20x10 volume takes several (and a ragged last one)."""
    monkeypatch.setattr(postprocess, "CHUNK_VOXELS", 500)


def _case(channels: int | None = None):
    rng = np.random.default_rng(3)
    labels = rng.integers(0, 4, size=(31, 20, 10)).astype(np.uint8)
    shape = labels.shape + ((channels,) if channels else ())
    image = rng.normal(40, 25, size=shape).astype(np.float32)
    return labels, Volume(image, np.diag([0.5, 0.5, 2.0, 1.0]))


def test_label_counts_match_bincount_across_chunks(small_chunks):
    labels, _ = _case()
    assert np.array_equal(label_counts(labels, 6), np.bincount(labels.reshape(-1), minlength=6))
    assert len(label_counts(labels)) == int(labels.max()) + 1


@pytest.mark.parametrize("channels", [None, 2])
@pytest.mark.parametrize("layout", ["C", "F labels", "F image"])
def test_label_statistics_match_a_direct_computation(small_chunks, channels, layout):
    """Also when labels and image are laid out differently in memory (NIfTI arrays are Fortran-ordered)."""
    labels, image = _case(channels)
    if layout == "F labels":
        labels = np.asfortranarray(labels)
    elif layout == "F image":
        image = image.with_array(np.asfortranarray(image.array))
    first = image.array if channels is None else image.array[..., 0]
    names = {1: "liver", 2: "spleen", 3: "kidney", 5: "never found"}
    rows = {r["label"]: r for r in label_statistics(labels, image, names)}
    assert sorted(rows) == [1, 2, 3, 5]
    for k in (1, 2, 3):
        values = first[labels == k].astype(np.float64)
        assert rows[k]["name"] == names[k]
        assert rows[k]["voxels"] == values.size
        assert rows[k]["volume_ml"] == pytest.approx(values.size * 0.5 * 0.5 * 2.0 / 1000, abs=1e-3)
        assert rows[k]["mean_intensity"] == pytest.approx(round(values.mean(), 3), abs=1e-3)
        assert rows[k]["std_intensity"] == pytest.approx(round(values.std(), 3), abs=1e-3)
    assert rows[5]["voxels"] == 0 and rows[5]["mean_intensity"] is None
