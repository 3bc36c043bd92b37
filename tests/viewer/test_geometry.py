"""Display reorientation: exact inverse, physical scale, world = LPS (z, y, x), oblique handled."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from medseg.phantom import make_phantom
from medseg.viewer.geometry import DisplayGeometry, ObliqueDisplayWarning
from tests.viewer.conftest import world_to_source_index


@pytest.mark.parametrize("axcodes", ["RAS", "LPS", "LAS", "RPI", "PSR", "LSA"])
def test_axis_aligned_grids_show_at_true_world_positions(axcodes):
    image, _ = make_phantom(3, axcodes=axcodes, spacing=(6.0, 7.0, 8.0), oblique=False)
    geo = DisplayGeometry.from_affine(image.affine, image.shape)
    display = geo.to_display(image.array)
    assert display.shape == geo.display_shape
    assert np.shares_memory(display, image.array)  # a view: opening a scan costs no copy
    assert np.array_equal(geo.to_source(display), image.array)
    assert not geo.is_oblique
    spacing_of = dict(zip(axcodes, (6.0, 7.0, 8.0)))  # world axes S, P, L take the spacing of their array axis
    opposite = {"S": "I", "P": "A", "L": "R"}
    assert geo.scale == pytest.approx([spacing_of.get(c, spacing_of.get(opposite[c])) for c in "SPL"])
    # every display voxel, placed where napari draws it, maps back to the source voxel holding the same value
    rng = np.random.default_rng(0)
    idx = rng.integers(0, geo.display_shape, size=(50, 3))
    world = geo.display_index_to_world(idx)
    src = np.rint(world_to_source_index(world, image.affine)).astype(int)
    assert np.all(src >= 0) and np.all(src < image.shape)
    assert np.array_equal(display[tuple(idx.T)], image.array[tuple(src.T)])


def test_oblique_grid_drops_rotation_around_the_centre_with_a_warning():
    image, _ = make_phantom(5, axcodes="LPS", spacing=(6.0, 6.0, 8.0), oblique=True)
    geo = DisplayGeometry.from_affine(image.affine, image.shape)
    assert geo.is_oblique
    assert geo.oblique_deg == pytest.approx(image.meta["phantom_geometry"]["oblique_deg"], abs=1e-6)
    with pytest.warns(ObliqueDisplayWarning, match="oblique"):
        transform = geo.layer_transform(name="ct")
    centre = (np.asarray(geo.display_shape) - 1) / 2
    shown = centre * np.asarray(transform["scale"]) + np.asarray(transform["translate"])
    true = geo.world_affine[:3, :3] @ centre + geo.world_affine[:3, 3]
    assert np.allclose(shown, true)
    labels = np.arange(np.prod(geo.display_shape), dtype=np.int32).reshape(geo.display_shape)
    back = geo.to_source(labels)
    assert back.shape == image.shape and np.array_equal(geo.to_display(back), labels)


def test_axis_aligned_grid_does_not_warn_and_serialises():
    image, _ = make_phantom(2, axcodes="RAS", spacing=(6.0, 6.0, 8.0), oblique=False)
    geo = DisplayGeometry.from_affine(image.affine, image.shape)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        geo.layer_transform()
    again = DisplayGeometry.from_dict(geo.to_dict())
    assert again.same_grid(geo) and np.array_equal(again.ornt, geo.ornt)
    with pytest.raises(ValueError, match="display grid"):
        geo.to_source(np.zeros((2, 2, 2)))
