"""Viewer test fixtures: napari/npe2 (required under CI), a virtual display for rendered tests, phantoms on disk."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from medseg.phantom import write_phantom

ON_CI = bool(os.environ.get("CI"))
MANIFEST = Path(__file__).resolve().parents[2] / "medseg" / "viewer" / "napari.yaml"


def require(module: str):
    """Import ``module`` or skip; under CI a missing viewer dependency is a failure, not a skip."""
    try:
        return __import__(module)
    except ImportError as err:
        if ON_CI:
            pytest.fail(f"{module} is required on CI (pip install -e '.[viewer]'): {err}")
        pytest.skip(f"{module} not installed")


@pytest.fixture(scope="session")
def napari_mod():
    require("npe2")
    return require("napari")


@pytest.fixture(scope="session")
def display(napari_mod):
    """An X display for rendered tests: the existing one, or Xvfb (Mesa llvmpipe) started for the session."""
    from medseg.errors import MedsegError
    from medseg.viewer.display import have_display, start_xvfb, stop_xvfb

    require("qtpy")
    proc = None
    if not have_display():
        try:
            proc = start_xvfb()
        except MedsegError as err:
            if ON_CI:
                pytest.fail(f"rendered tests need Xvfb on CI (.ci/run installs it): {err}")
            pytest.skip(str(err))
    os.environ.setdefault("QT_QPA_PLATFORM", "xcb")
    yield os.environ["DISPLAY"]
    if proc is not None:
        stop_xvfb(proc)


@pytest.fixture
def viewer(display, qtbot_or_app):
    """A shown napari Viewer (real Qt window and OpenGL canvas), closed afterwards."""
    import napari

    from medseg.viewer.launch import ensure_plugin_registered

    ensure_plugin_registered()
    v = napari.Viewer(show=True)
    v.window.resize(1000, 800)
    yield v
    v.close()


@pytest.fixture
def qtbot_or_app(display):
    from qtpy.QtWidgets import QApplication

    return QApplication.instance() or QApplication([])


def phantom_files(folder: Path, seed: int, axcodes: str, oblique: bool, spacing=(6.0, 6.0, 8.0)):
    """A small phantom CT and its labels as NIfTI files; returns (image_path, labels_path, image, labels)."""
    folder.mkdir(parents=True, exist_ok=True)
    image_path, labels_path = folder / f"ct_{axcodes}.nii.gz", folder / f"ct_{axcodes}_gt.nii.gz"
    image, labels = write_phantom(
        seed, str(image_path), str(labels_path), axcodes=axcodes, spacing=spacing, oblique=oblique
    )
    return image_path, labels_path, image, labels


def world_to_source_index(world_spl: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """napari world (S, P, L) mm -> source voxel index, straight from the definitions (RAS = (-L, -P, S))."""
    world_spl = np.atleast_2d(world_spl)
    ras = np.stack([-world_spl[:, 2], -world_spl[:, 1], world_spl[:, 0], np.ones(len(world_spl))])
    return (np.linalg.inv(affine) @ ras)[:3].T
