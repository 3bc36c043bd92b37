"""The slab-streaming engine against MONAI's full-buffer inferer, and out-of-memory fallback."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from medseg.errors import MedsegError
from medseg.inference import engine
from medseg.inference.engine import MemoryFallbackWarning, shrink_plan, stream_windows
from medseg.inference.estimate import Workload, aggregation_planes
from medseg.inference.invert import SourceGridFinaliser
from medseg.inference.plan import Plan
from medseg.inference.preprocess import plan_grid, preprocess_image
from medseg.inference.windows import window_starts
from medseg.models.spec import spec_from_dict
from medseg.volume import Volume
from tests.reference.monai_full_buffer import LogitsCollector, logits_to_source_labels, run_windows


def _unet(spatial_dims=3, out_channels=5, seed=0):
    from monai.networks.nets import UNet

    torch.manual_seed(seed)
    return UNet(spatial_dims, 1, out_channels, channels=(4, 8, 16), strides=(2, 2), num_res_units=0).eval()


def _agreement(a, b) -> float:
    return float((np.asarray(a) == np.asarray(b)).mean())


CASES_3D = [
    # shape, roi, batch, slab_depth, overlap, blend
    # edges: windows shifted back at every border (slow)
    pytest.param((40, 37, 50), (16, 16, 16), 3, 16, 0.25, "gaussian", marks=pytest.mark.slow),
    ((10, 12, 9), (16, 16, 16), 2, 16, 0.5, "gaussian"),  # smaller than the roi on every axis (padded)
    ((33, 20, 70), (16, 24, 8), 4, 0, 0.25, "constant"),  # full buffer through the streaming loop
    # smallest slab, heavy overlap (slow)
    ((33, 20, 70), (16, 16, 16), 1, 1, 0.6, "gaussian"),
    ((24, 40, 31), (16, 16, 12), 5, 20, 0.0, "gaussian"),  # no overlap, batches spanning slabs
    ((17, 18, 64), (16, 16, 32), 2, 32, 0.25, "gaussian"),  # one window across, deep roi
]


@pytest.mark.parametrize("shape,roi,batch,slab,overlap,blend", CASES_3D)
def test_streaming_logits_equal_monai_full_buffer(shape, roi, batch, slab, overlap, blend):
    net = _unet()
    image = torch.randn(1, *shape, generator=torch.Generator().manual_seed(sum(shape)))
    plan = Plan(roi_size=roi, sw_batch_size=batch, overlap=overlap, blend=blend, slab_depth=slab)
    ref = run_windows(net, image, plan)
    got = stream_windows(net, image, plan, LogitsCollector())
    assert got.shape == ref.shape
    # only the summation order of overlapping windows differs: float32 rounding
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)
    assert _agreement(got.argmax(0), ref.argmax(0)) >= 0.9999


def test_streaming_buffer_never_exceeds_the_slab(monkeypatch):
    """Peak aggregation depth is what the plan says, not the volume's depth."""
    depths = []
    real = engine._Aggregation

    class Recording(real):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            depths.append(self.cap)

    monkeypatch.setattr(engine, "_Aggregation", Recording)
    net = _unet()
    image = torch.randn(1, 24, 24, 200)
    plan = Plan(roi_size=(16, 16, 16), sw_batch_size=2, overlap=0.25, slab_depth=16)
    stream_windows(net, image, plan, LogitsCollector())
    work = Workload((24, 24, 200), (24, 24, 200), (24, 24, 200), 1, 5, 3)
    assert depths == [aggregation_planes(work, plan)] and depths[0] < 40


@pytest.mark.parametrize("slab", [0, 1, 3, 7])
def test_2d_streaming_equals_slice_inferer_exactly(slab):
    net = _unet(spatial_dims=2, out_channels=4)
    image = torch.randn(1, 45, 30, 11, generator=torch.Generator().manual_seed(3))
    plan = Plan(roi_size=(32, 32), sw_batch_size=3, overlap=0.25, slab_depth=slab)
    ref = run_windows(net, image, plan, spatial_dims=2)
    got = stream_windows(net, image, plan, LogitsCollector(), spatial_dims=2)
    torch.testing.assert_close(got, ref, atol=1e-6, rtol=1e-6)


def _spec(spacing=(2.0, 3.0, 2.5), orientation="RAS", roi=(16, 16, 16), out=5, dims=3):
    return spec_from_dict(
        {
            "name": "t",
            "network": {"class": "UNet", "spatial_dims": dims, "out_channels": out},
            "labels": {i: {"name": f"c{i}"} for i in range(out)},
            "preprocessing": {"orientation": orientation, "spacing": list(spacing)},
            "inference": {"roi_size": list(roi)},
        }
    )


AFFINES = [
    np.diag([1.0, 1.2, 1.7, 1.0]),
    np.array([[0, 0, -2.5, 30], [1.1, 0, 0, -40], [0, -0.9, 0, 10], [0, 0, 0, 1]]),
    np.array([[-0.8, 0, 0, 5], [0, -0.8, 0, 6], [0, 0, 3.0, -2], [0, 0, 0, 1]]),
]


@pytest.mark.parametrize("affine", AFFINES)
@pytest.mark.parametrize("chunks", [[1], [3, 1, 5], [64]])
@pytest.mark.parametrize("spacing", [(2.0, 3.0, 2.5), (0.7, 2.0, 0.3)])  # down- and upsampling
def test_source_grid_finaliser_equals_whole_volume_inversion(affine, chunks, spacing):
    volume = Volume(np.zeros((23, 19, 21), np.int16), affine)
    record = plan_grid(volume, _spec(spacing=spacing).preprocessing)
    logits = torch.randn(5, *record.model_shape, generator=torch.Generator().manual_seed(1))
    ref = logits_to_source_labels(logits, record)
    fin = SourceGridFinaliser(record, 5, chunk=4)
    z, i = 0, 0
    while z < logits.shape[3]:
        step = chunks[i % len(chunks)]
        fin.push(logits[..., z : z + step], z)
        z, i = z + step, i + 1
    got = fin.finish()
    assert got.shape == volume.shape and np.array_equal(got, ref)


def _reference_labels(net, volume, spec, plan):
    image, record = preprocess_image(volume, spec.preprocessing)
    return logits_to_source_labels(run_windows(net, image, plan, spec.network.spatial_dims), record)


def _streamed_labels(net, volume, spec, plan):
    image, record = preprocess_image(volume, spec.preprocessing)
    finaliser = SourceGridFinaliser(record, spec.network.out_channels)
    return stream_windows(net, image, plan, finaliser, spec.network.spatial_dims)


def test_real_ct_labels_agree_with_monai(test_data):
    """Real 512x512 CT slices (lungmask test data), resampled to a coarse grid and back."""
    from medseg.io import read_volume

    volume = read_volume(test_data / "dicom" / "lungmask_testdata")
    spec = _spec(spacing=(1.5, 1.5, 0.25), orientation="LPS", roi=(32, 32, 4), out=6)
    net = _unet(out_channels=6)
    torch.nn.init.normal_(net.model[0].conv.weight, std=2.0)  # make random logits depend on the anatomy
    plan = Plan(roi_size=(32, 32, 4), sw_batch_size=4, overlap=0.25, slab_depth=4)
    ref = _reference_labels(net, volume, spec, plan)
    got = _streamed_labels(net, volume, spec, plan)
    assert got.shape == volume.shape
    assert len(np.unique(ref)) > 1
    assert _agreement(got, ref) >= 0.9999


@pytest.mark.slow
def test_real_ct_series_through_the_pipeline(test_data, tmp_path):
    """dcmqi's real GE CT (3 slices, FFS; 4x downsampled to 128x128 in tests/data) through Segmenter, streaming
    vs MONAI."""
    from medseg.inference.pipeline import Segmenter
    from medseg.io import read_volume
    from tests.conftest import write_tiny_model

    src = test_data / "dicom" / "dcmqi" / "data" / "segmentations" / "ct-3slice"
    volume = read_volume(src)
    seg = Segmenter(write_tiny_model(tmp_path, out_channels=4, spacing=(0.5, 0.5, 1.0), roi=[16, 16, 16]), "cpu")
    plan = seg.plan_for(volume).replace(slab_depth=1)
    got = seg.segment(volume, plan).labels
    ref = _reference_labels(seg.model.network, volume, seg.model.spec, plan)
    assert got.shape == volume.shape and _agreement(got, ref) >= 0.9999


@pytest.mark.parametrize("seed", [0, 1])
def test_random_volumes_labels_agree_on_the_source_grid(seed):
    rng = np.random.default_rng(seed)
    shape = tuple(int(v) for v in rng.integers(9, 45, size=3))
    affine = AFFINES[seed % len(AFFINES)]
    volume = Volume(rng.normal(0, 400, size=shape).astype(np.int16), affine)
    spec = _spec(spacing=(1.5, 1.0, 2.0), out=7)
    net = _unet(out_channels=7, seed=seed)
    plan = Plan(roi_size=(16, 16, 16), sw_batch_size=2, overlap=0.5, slab_depth=int(rng.integers(1, 20)))
    assert _agreement(_streamed_labels(net, volume, spec, plan), _reference_labels(net, volume, spec, plan)) >= 0.9999


class FailingNet(torch.nn.Module):
    """Raises ``error`` on the ``fail_at``-th call (once), counting every window it sees."""

    def __init__(self, net, fail_at, error):
        super().__init__()
        self.net, self.fail_at, self.error = net, fail_at, error
        self.calls = 0
        self.windows = 0

    def forward(self, x):
        self.calls += 1
        if self.calls == self.fail_at:
            raise self.error
        self.windows += x.shape[0]
        return self.net(x)


@pytest.mark.parametrize(
    "error",
    [
        torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"),
        RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate memory"),
        MemoryError(),
    ],
)
def test_out_of_memory_mid_run_resumes_from_the_failed_slab(error):
    net = _unet()
    image = torch.randn(1, 30, 30, 90, generator=torch.Generator().manual_seed(5))
    plan = Plan(roi_size=(16, 16, 16), sw_batch_size=4, overlap=0.25, slab_depth=16)
    ref = stream_windows(net, image, plan, LogitsCollector())
    n_windows = len(window_starts((30, 30, 90), (16, 16, 16), 0.25))
    failing = FailingNet(net, fail_at=9, error=error)
    collector = LogitsCollector()
    with pytest.warns(MemoryFallbackWarning, match="out of memory at slab plane .*sw_batch_size 4->2"):
        got = stream_windows(failing, image, plan, collector)
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)
    assert _agreement(got.argmax(0), ref.argmax(0)) >= 0.9999
    # resumed, not restarted: only windows overlapping unfinished planes ran twice
    redone = failing.windows - n_windows
    assert 0 <= redone < n_windows // 2


def test_out_of_memory_on_2d_chunk_resumes():
    net = _unet(spatial_dims=2, out_channels=3)
    image = torch.randn(1, 40, 33, 12)
    plan = Plan(roi_size=(32, 32), sw_batch_size=4, overlap=0.25, slab_depth=4)
    ref = stream_windows(net, image, plan, LogitsCollector(), spatial_dims=2)
    failing = FailingNet(net, fail_at=6, error=torch.OutOfMemoryError("CUDA out of memory"))  # 4 calls a chunk
    with pytest.warns(MemoryFallbackWarning, match="slice 4"):
        got = stream_windows(failing, image, plan, LogitsCollector(), spatial_dims=2)
    torch.testing.assert_close(got, ref, atol=1e-6, rtol=1e-6)


def test_out_of_memory_with_nothing_left_to_shrink_is_a_clear_error():
    class AlwaysOOM(torch.nn.Module):
        def forward(self, x):
            raise torch.OutOfMemoryError("CUDA out of memory")

    plan = Plan(roi_size=(16, 16, 16), sw_batch_size=2, overlap=0.25, slab_depth=16)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", MemoryFallbackWarning)
        with pytest.raises(MedsegError, match="out of memory .* smallest plan"):
            stream_windows(AlwaysOOM(), torch.randn(1, 20, 20, 20), plan, LogitsCollector())


def test_other_errors_are_not_swallowed():
    class Broken(torch.nn.Module):
        def forward(self, x):
            raise ValueError("shape mismatch")

    with pytest.raises(ValueError, match="shape mismatch"):
        stream_windows(Broken(), torch.randn(1, 20, 20, 20), Plan(roi_size=(16, 16, 16)), LogitsCollector())


def test_shrink_plan_order_keeps_the_window_grid():
    plan = Plan(device="cuda", roi_size=(96, 96, 96), sw_batch_size=4, aggregation_device="cuda", image_device="cuda")
    seen = []
    while plan is not None:
        seen.append((plan.sw_batch_size, plan.aggregation_device, plan.image_device, plan.slab_depth))
        assert plan.roi_size == (96, 96, 96) and plan.overlap == 0.25
        plan = shrink_plan(plan)
    assert seen[:5] == [(4, "cuda", "cuda", 0), (2, "cuda", "cuda", 0), (1, "cuda", "cuda", 0),
                        (1, "cpu", "cuda", 0), (1, "cpu", "cpu", 0)]  # fmt: skip
    assert seen[-1] == (1, "cpu", "cpu", 1)
