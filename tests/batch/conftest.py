"""Cohorts of small phantoms and a tiny random-weights model, for batch tests."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.conftest import write_tiny_model

SPACING = (6.0, 6.0, 8.0)


@pytest.fixture(scope="session")
def phantom_bank(tmp_path_factory) -> Path:
    """Small phantoms written once per session; tests copy what they need."""
    from medseg.phantom import write_phantom

    bank = tmp_path_factory.mktemp("phantom_bank")
    for seed in range(10):
        write_phantom(seed, str(bank / f"p{seed}.nii.gz"), spacing=SPACING, oblique=False)
    return bank


@pytest.fixture(scope="session")
def batch_model(tmp_path_factory) -> Path:
    return write_tiny_model(tmp_path_factory.mktemp("batch_model"), spacing=(8.0, 8.0, 8.0), roi=[16, 16, 16])


def make_cohort(bank: Path, folder: Path, n: int, corrupt: tuple[str, ...] = (), nested: bool = False) -> Path:
    """``n`` phantoms (``case0`` ..), optionally some in a subfolder, plus truncated files named in ``corrupt``."""
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        target = folder / ("sub" if nested and i % 2 else "") / f"case{i}.nii.gz"
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(bank / f"p{i}.nii.gz", target)
    for name in corrupt:
        data = (bank / "p9.nii.gz").read_bytes()
        (folder / f"{name}.nii.gz").write_bytes(data[: len(data) // 3])
    return folder


@pytest.fixture
def cohort_factory(phantom_bank, tmp_path):
    def factory(n: int = 3, corrupt: tuple[str, ...] = (), nested: bool = False, name: str = "cohort") -> Path:
        return make_cohort(phantom_bank, tmp_path / name, n, corrupt, nested)

    return factory
