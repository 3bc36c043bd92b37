import numpy as np

from medseg.volume import Volume


def test_spacing_axcodes_and_voxel_volume():
    affine = np.array([[-2.0, 0, 0, 10], [0, -2.0, 0, 5], [0, 0, 3.0, 0], [0, 0, 0, 1]])
    v = Volume(np.zeros((4, 5, 6), np.int16), affine)
    assert v.shape == (4, 5, 6)
    assert v.spacing == (2.0, 2.0, 3.0)
    assert v.axcodes == ("L", "P", "S")
    assert np.isclose(v.voxel_volume_ml, 0.012)


def test_with_array_keeps_meta_and_geometry():
    v = Volume(np.zeros((2, 2, 2)), np.eye(4), {"source": "x.nii"})
    w = v.with_array(np.ones((2, 2, 2), np.uint8))
    assert w.meta == v.meta and w.meta is not v.meta
    assert np.array_equal(w.affine, v.affine)
