"""The model grid and its inverse: labels come back voxel for voxel on the source grid."""

import numpy as np
import pytest
import torch

from medseg.inference import invert
from medseg.inference.preprocess import plan_grid, preprocess_image, preprocess_labels, resample_axis
from medseg.models.spec import spec_from_dict
from medseg.phantom import make_phantom
from medseg.volume import Volume
from tests.reference import monai_full_buffer as reference
from tests.reference.monai_full_buffer import logits_to_source_labels


def _spec(spacing=(3.0, 3.0, 3.0), orientation="RAS"):
    return spec_from_dict(
        {
            "name": "t",
            "network": {"class": "UNet", "out_channels": 8},
            "labels": {0: {"name": "bg"}},
            "preprocessing": {"orientation": orientation, "spacing": list(spacing)},
            "inference": {"roi_size": [32, 32, 32]},
        }
    )


def _onehot_roundtrip(labels: Volume, spec) -> np.ndarray:
    record = plan_grid(labels, spec.preprocessing)
    y = preprocess_labels(np.asarray(labels.array), record)
    onehot = torch.nn.functional.one_hot(y, 8).permute(3, 0, 1, 2).float()
    return logits_to_source_labels(onehot, record)


@pytest.mark.parametrize("axcodes", ["RAS", "LPS", "PSR", "LSA"])
@pytest.mark.parametrize("oblique", [False, True])
def test_reorientation_alone_is_exact(axcodes, oblique):
    """Same spacing, any orientation: the round trip returns the very same labels."""
    _, labels = make_phantom(21, axcodes=axcodes, spacing=(4.0, 4.0, 4.0), oblique=oblique)
    back = _onehot_roundtrip(labels, _spec(spacing=(None, None, None), orientation="RAS"))
    assert back.shape == labels.shape
    assert np.array_equal(back, labels.array)


@pytest.mark.parametrize("axcodes", ["RAS", "LPS", "RPI"])
def test_resampled_roundtrip_agrees_with_source(axcodes):
    _, labels = make_phantom(22, axcodes=axcodes, spacing=(2.0, 2.0, 5.0), oblique=False)
    back = _onehot_roundtrip(labels, _spec())
    assert back.shape == labels.shape
    assert (back == labels.array).mean() > 0.985  # only boundary voxels may move at 3 mm


def test_model_grid_affine_points_at_the_same_world_positions():
    image, _ = make_phantom(23, axcodes="LPS", spacing=(2.0, 2.5, 4.0), oblique=True)
    record = plan_grid(image, _spec().preprocessing)
    # model voxel j sits at reoriented-source index j * scale; both affines must agree in world space
    j = np.array([5.0, 7.0, 3.0])
    world_model = record.model_affine[:3, :3] @ j + record.model_affine[:3, 3]
    reoriented = record.model_affine @ np.diag([1 / s for s in record.scale] + [1.0])
    world_src = reoriented[:3, :3] @ (j * np.array(record.scale)) + reoriented[:3, 3]
    assert np.allclose(world_model, world_src)
    assert np.allclose(np.sqrt((record.model_affine[:3, :3] ** 2).sum(0)), 3.0)


def test_preprocessed_image_is_in_target_orientation():
    image, labels = make_phantom(24, axcodes="LPS", spacing=(3.0, 3.0, 3.0), oblique=False)
    x, record = preprocess_image(image, _spec().preprocessing)
    assert x.shape == (1, *record.model_shape)
    import nibabel as nib

    assert nib.aff2axcodes(record.model_affine) == ("R", "A", "S")
    # the liver (on the patient's right) is at high i in RAS
    y = preprocess_labels(labels.array, record)
    assert torch.nonzero(y == 3).float().mean(0)[0] > y.shape[0] / 2


def test_linear_resampling_matches_coordinates():
    t = torch.arange(10, dtype=torch.float32).reshape(1, 10)
    out = resample_axis(t, 1, 4, 2.5)
    assert torch.allclose(out, torch.tensor([[0.0, 2.5, 5.0, 7.5]]))


def _blobs(classes: int, shape, seed: int) -> torch.Tensor:
    """Smooth logits: each class peaks around its own centre, so labels form regions with borders."""
    g = torch.Generator().manual_seed(seed)
    grid = torch.stack(torch.meshgrid(*[torch.arange(n, dtype=torch.float32) for n in shape], indexing="ij"))
    centres = torch.rand(classes, 3, generator=g) * torch.tensor(shape, dtype=torch.float32)
    dist = ((grid[None] - centres[:, :, None, None, None]) ** 2).sum(1)
    return -dist.sqrt() / 3 + 0.05 * torch.randn(classes, *shape, generator=g)


@pytest.mark.parametrize(
    "logits",
    [
        "blobs8",  # regions and borders, as a network gives
        "noise",  # every cell's corners disagree: every voxel is interpolated
        "ties",  # small integers: exact ties everywhere, which go to the lowest class
        "blobs300",  # more classes than a byte holds
        "blobs2",
    ],
)
@pytest.mark.parametrize("inv", [(0.37, 0.61, 0.29), (1.0, 1.0, 0.5), (1.7, 0.45, 1.0), (1.0, 1.0, 1.0)])
def test_source_labels_equal_the_dense_interpolation(monkeypatch, logits, inv):
    """Labels from interpolating only the cells whose corners disagree equal the argmax of every class
    interpolated at every voxel, in small row and gather blocks too."""
    shape = (13, 11, 9)
    g = torch.Generator().manual_seed(len(logits))
    if logits == "noise":
        part = torch.randn(8, *shape, generator=g)
    elif logits == "ties":
        part = torch.randint(0, 3, (6, *shape), generator=g).float()
    else:
        part = _blobs(int(logits[5:]), shape, seed=len(logits))
    out_shape = tuple(int((n - 1) / s) + 1 for n, s in zip(shape[:2], inv[:2]))
    x = (torch.arange(int((shape[2] - 1) / inv[2]) + 1, dtype=torch.float64) * inv[2]).clamp(0, shape[2] - 1)
    dtype = np.uint8 if part.shape[0] <= 256 else np.uint16
    want = invert.channel_argmax(reference.source_planes(part, x, out_shape, list(inv)), dtype)
    got = invert.source_labels(part, x, out_shape, list(inv), dtype)
    assert got.dtype == dtype and got.shape == want.shape
    assert np.array_equal(got, want)
    monkeypatch.setattr(invert, "LABEL_BLOCK_VOXELS", 50)  # several row blocks
    monkeypatch.setattr(invert, "GATHER_BLOCK_BYTES", 1)  # gather blocks of 256 voxels
    assert np.array_equal(invert.source_labels(part, x, out_shape, list(inv), dtype), want)
    interpolated = []
    argmax = invert._argmax_planes
    monkeypatch.setattr(invert, "_argmax_planes", lambda p, *a: interpolated.append(p.shape[1]) or argmax(p, *a))
    invert.source_labels(part, x, out_shape, list(inv), dtype)
    share = sum(interpolated[1:]) / want.size  # the first call labels the model grid's corners
    if inv == (1.0, 1.0, 1.0):
        assert share == 0  # the source grid is the model's: labels are the argmax of its voxels
    elif logits == "noise":
        assert share > 0.9  # (cells at an edge have fewer distinct corners: some agree by chance)
    elif logits in ("blobs8", "blobs2") and inv[0] < 1:  # most voxels lie in cells whose corners agree
        assert 0 < share < 0.5
