"""Training: a few real steps, checkpoints loadable with weights_only, resume equals uninterrupted."""

import torch

from medseg.models.spec import load_spec
from medseg.phantom import write_phantom
from medseg.train.dataset import find_pairs
from medseg.train.loop import TrainConfig, train
from tests.conftest import write_tiny_model


def _dataset(folder, n=2):
    for s in range(n):
        write_phantom(
            100 + s,
            str(folder / "images" / f"c{s}.nii.gz"),
            str(folder / "labels" / f"c{s}.nii.gz"),
            spacing=(5.0, 5.0, 6.0),
        )
    return folder


def test_train_resume_matches_uninterrupted(tmp_path):
    data = _dataset(tmp_path / "data")
    spec = load_spec(write_tiny_model(tmp_path / "m", out_channels=8, spacing=(8.0, 8.0, 8.0), roi=[16, 16, 16]))
    cfg = TrainConfig(steps=4, batch_size=2, checkpoint_every=2, threads=1)
    full = train(spec, data, tmp_path / "full", cfg, log=lambda m: None)
    assert len(full["sha256"]) == 64
    # interrupted after 2 steps, then resumed to 4
    train(spec, data, tmp_path / "part", cfg, log=lambda m: None, stop_at=2)
    ckpt = torch.load(tmp_path / "part" / "last.pt", weights_only=True)
    assert ckpt["step"] == 2
    train(spec, data, tmp_path / "part", cfg, resume=True, log=lambda m: None)
    a = torch.load(tmp_path / "full" / "model.pt", weights_only=True)
    b = torch.load(tmp_path / "part" / "model.pt", weights_only=True)
    assert a.keys() == b.keys()
    # same patches, same augmentation draws, same optimiser state: the same weights
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-5), k


def test_find_pairs_requires_labels(tmp_path):
    import pytest

    from medseg.errors import InputError

    data = _dataset(tmp_path / "d", n=1)
    (data / "images" / "extra.nii.gz").write_bytes((data / "images" / "c0.nii.gz").read_bytes())
    with pytest.raises(InputError, match="extra"):
        find_pairs(data)


def test_2d_training_step(tmp_path):
    data = _dataset(tmp_path / "data", n=1)
    spec = load_spec(
        write_tiny_model(tmp_path / "m", spatial_dims=2, out_channels=8, spacing=(8.0, 8.0, None), roi=[32, 32])
    )
    out = train(spec, data, tmp_path / "run", TrainConfig(steps=2, batch_size=2, threads=1), log=lambda m: None)
    assert (tmp_path / "run" / "model.pt").exists() and out["steps"] == 2
