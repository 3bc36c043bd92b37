"""Shared fixtures: real data from tests/data, phantoms, and a tiny model with random weights."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
#: medseg's disk caches (``medseg.inference.disk_cache``, under ``$XDG_CACHE_HOME/medseg``) for the
#: whole test session: tests never read or write the user's ~/.cache/medseg
_CACHE_HOME: Path | None = None
_SAVED_XDG_CACHE_HOME: str | None = None


def pytest_configure(config):
    """Point ``XDG_CACHE_HOME`` at a fresh folder before any test runs. Set in ``os.environ`` (not
    monkeypatch) so that CLI subprocesses and batch workers (forked or spawned) inherit it too."""
    global _CACHE_HOME, _SAVED_XDG_CACHE_HOME
    _SAVED_XDG_CACHE_HOME = os.environ.get("XDG_CACHE_HOME")
    _CACHE_HOME = Path(tempfile.mkdtemp(prefix="medseg-test-cache-"))
    os.environ["XDG_CACHE_HOME"] = str(_CACHE_HOME)


def pytest_unconfigure(config):
    if _CACHE_HOME is None:
        return
    if _SAVED_XDG_CACHE_HOME is None:
        os.environ.pop("XDG_CACHE_HOME", None)
    else:
        os.environ["XDG_CACHE_HOME"] = _SAVED_XDG_CACHE_HOME
    shutil.rmtree(_CACHE_HOME, ignore_errors=True)


@pytest.fixture(scope="session")
def session_cache_home() -> Path:
    """The session's ``XDG_CACHE_HOME`` (see :func:`pytest_configure`)."""
    assert _CACHE_HOME is not None
    return _CACHE_HOME


@pytest.fixture(scope="session")
def test_data() -> Path:
    """``tests/data``: the real scans the tests read, cut-down copies (its README.md says of what and how)."""
    return ROOT / "tests" / "data"


def _cpu_bf16_problem() -> str | None:
    from medseg.devices import cpu_bf16_problem

    return cpu_bf16_problem()


#: tests that run bfloat16 convolutions on the CPU: they skip, with the reason, on CPUs without them (AVX2 only)
requires_cpu_bf16 = pytest.mark.skipif(
    _cpu_bf16_problem() is not None, reason=f"bf16 on the CPU: {_cpu_bf16_problem()}"
)


@pytest.fixture(scope="session")
def phantom_pair():
    from medseg.phantom import make_phantom

    return make_phantom(11, axcodes="LPS", spacing=(3.0, 3.0, 4.0), oblique=False)


def write_tiny_model(
    folder: Path,
    spatial_dims: int = 3,
    in_channels: int = 1,
    out_channels: int = 3,
    spacing=(4.0, 4.0, 4.0),
    roi=None,
    seed: int = 0,
) -> Path:
    """A small UNet spec + random weights (state dict with sha256): exercises the real loading path."""
    import torch

    from medseg.models.checkpoints import sha256_of
    from medseg.models.networks import build_network
    from medseg.models.spec import spec_from_dict

    folder.mkdir(parents=True, exist_ok=True)
    roi = roi or ([32, 32, 32] if spatial_dims == 3 else [64, 64])
    data = {
        "name": f"tiny{spatial_dims}d",
        "network": {
            "class": "UNet",
            "spatial_dims": spatial_dims,
            "in_channels": in_channels,
            "out_channels": out_channels,
            "kwargs": {"channels": [4, 8], "strides": [2], "num_res_units": 0},
        },
        "labels": {i: {"name": f"class{i}", "color": [(40 * i) % 256, 100, 200]} for i in range(out_channels)},
        "preprocessing": {"orientation": "RAS", "spacing": list(spacing)},
        "inference": {"roi_size": roi, "overlap": 0.25, "sw_batch_size": 2},
        "weights": {"path": "tiny.pt"},
    }
    torch.manual_seed(seed)
    net = build_network(spec_from_dict(data))
    torch.save(net.state_dict(), folder / "tiny.pt")
    data["weights"]["sha256"] = sha256_of(folder / "tiny.pt")
    path = folder / "tiny.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.fixture
def tiny_model(tmp_path) -> Path:
    return write_tiny_model(tmp_path / "model")


def save_nifti(path: Path, data: np.ndarray, affine: np.ndarray, qform_code: int = 1, sform_code: int = 1) -> Path:
    import nibabel as nib

    img = nib.Nifti1Image(data, affine)
    img.set_qform(affine, qform_code)
    img.set_sform(affine, sform_code)
    nib.save(img, str(path))
    return path


def cropped_phantom(path: Path, seed: int, spacing, axcodes="RAS", oblique=False, box_mm=(180.0, 150.0, 120.0)) -> Path:
    """A phantom CT (``medseg.phantom``) cropped around its centre to about ``box_mm``, saved as int16 NIfTI:
    small scans for the model parity tests."""
    from medseg.phantom import make_phantom

    image, _ = make_phantom(seed, axcodes=axcodes, spacing=spacing, oblique=oblique)
    shape = np.array(image.shape)
    size = np.minimum(shape, np.round(np.array(box_mm) / np.array(image.spacing)).astype(int))
    start = (shape - size) // 2
    sl = tuple(slice(a, a + n) for a, n in zip(start, size))
    affine = image.affine.copy()
    affine[:3, 3] = image.affine[:3, :3] @ start + image.affine[:3, 3]
    return save_nifti(path, np.asarray(image.array)[sl].astype(np.int16), affine)
