import numpy as np
import pytest

from medseg.phantom import LABELS, make_phantom


def test_phantom_has_all_structures_in_hounsfield_units():
    image, labels = make_phantom(5, axcodes="RAS", spacing=(3.0, 3.0, 3.0), oblique=False)
    present = set(np.unique(labels.array)) - {0}
    assert present == set(LABELS) and len(present) >= 6
    hu = image.array
    assert image.array.dtype == np.int16
    assert np.median(hu[labels.array == 0]) < -900  # air outside the body
    assert np.median(hu[labels.array == 2]) < -700  # lungs
    assert 60 < np.median(hu[labels.array == 3]) < 160  # enhanced liver
    assert np.median(hu[labels.array == 6]) > 250  # bone


@pytest.mark.parametrize("axcodes", ["LPS", "RAS", "PSR"])
def test_same_seed_same_anatomy_in_any_orientation(axcodes):
    """Organ volumes depend on the patient, not on how the grid is laid over it."""
    _, ref = make_phantom(8, axcodes="RAS", spacing=(3.0, 3.0, 3.0), oblique=False)
    _, other = make_phantom(8, axcodes=axcodes, spacing=(3.0, 3.0, 3.0), oblique=False)
    assert other.axcodes == tuple(axcodes)
    for k in LABELS:
        a, b = np.count_nonzero(ref.array == k), np.count_nonzero(other.array == k)
        assert abs(a - b) <= max(0.02 * a, 30), (k, a, b)


def test_liver_is_on_the_patients_right():
    _, labels = make_phantom(3, axcodes="LPS", spacing=(3.0, 3.0, 3.0), oblique=False)
    ijk = np.argwhere(labels.array == 3).mean(axis=0)
    world = labels.affine[:3, :3] @ ijk + labels.affine[:3, 3]
    assert world[0] > 0  # RAS+: +x is the patient's right


def test_oblique_grid_is_rotated():
    image, _ = make_phantom(4, oblique=True)
    direction = image.affine[:3, :3] / np.array(image.spacing)
    assert not np.allclose(np.abs(direction), np.round(np.abs(direction)), atol=1e-3)
