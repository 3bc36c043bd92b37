"""The memory estimator (meta-tensor trace) and the planner."""

from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner

from medseg.cli import main
from medseg.errors import MedsegError
from medseg.inference.budget import GiB, MiB, parse_bytes
from medseg.inference.estimate import Workload, estimate, full_buffer_bytes
from medseg.inference.plan import Plan
from medseg.inference.planner import plan_memory, relative_cost
from medseg.inference.tracing import NetworkMemory, conv_workspace_bytes, trace_activations
from medseg.models.monai import MonaiModel, roi_divisor
from medseg.models.networks import build_network
from medseg.models.spec import spec_from_dict
from tests.reference.monai_full_buffer import profiled_peak_bytes


def test_parse_bytes():
    assert parse_bytes("12GB") == 12 * GiB
    assert parse_bytes("24 GiB") == 24 * GiB
    assert parse_bytes("800MB") == 800 * MiB
    assert parse_bytes("6") == 6 * GiB
    assert parse_bytes("auto") is None and parse_bytes(None) is None
    with pytest.raises(MedsegError, match=r"cannot read memory size 'lots' \(use e\.g\. 12GB"):
        parse_bytes("lots")


class Elementwise(torch.nn.Module):
    """Live tensors are known exactly: y = 2x (1), z = y + 1 (2 live), return z * y (3 live at the peak)."""

    def forward(self, x):
        y = x * 2
        z = y + 1
        return z * y


def test_trace_counts_live_storages_exactly():
    peak, shape = trace_activations(Elementwise(), (1, 1, 10, 10, 10))
    assert shape == (1, 1, 10, 10, 10)
    assert peak == 3 * 1000 * 4


def test_trace_frees_temporaries_like_real_tensors():
    class Chain(torch.nn.Module):
        def forward(self, x):
            for _ in range(10):
                x = x + 1  # each result frees the previous one
            return x

    peak, _ = trace_activations(Chain(), (2, 3, 8, 8, 8))
    assert peak == 2 * 2 * 3 * 512 * 4


def test_trace_uses_no_memory_for_huge_inputs():
    """A 1024^3 input (4 GiB of data) traces in meta: nothing is allocated."""
    from monai.networks.nets import UNet

    net = UNet(3, 1, 2, channels=(4, 8), strides=(2,), num_res_units=0)
    peak, shape = trace_activations(net, (1, 1, 1024, 1024, 1024))
    assert shape == (1, 2, 1024, 1024, 1024)
    assert peak > 2 * 1024**3 * 4  # at least the output


def test_conv_workspace_follows_the_cpu_backend():
    """im2col for the slow path (C_in x k^3 x output voxels), blocked output for oneDNN."""
    from medseg.inference.tracing import onednn_channel_block

    x = torch.empty(1, 2, 40, 40, 40, device="meta")
    w = torch.empty(2, 2, 3, 3, 3, device="meta")
    out = torch.empty(1, 2, 40, 40, 40, device="meta")
    args = (x, w, None, [1, 1, 1], [1, 1, 1], [1, 1, 1], False, [0, 0, 0], 1)
    backend = torch._C._select_conv_backend(
        torch.empty(1).as_strided((1, 2, 40, 40, 40), (0,) * 5),
        torch.empty(1).as_strided((2, 2, 3, 3, 3), (0,) * 5),
        None, [1, 1, 1], [1, 1, 1], [1, 1, 1], False, [0, 0, 0], 1, None,
    )  # fmt: skip
    got = conv_workspace_bytes(args, out, "cpu")
    if str(backend).endswith("Slow3d"):
        assert got == 2 * 27 * 40**3 * 4
    else:  # output channels padded to oneDNN's block: 16 with AVX-512, 8 with AVX2
        assert got == onednn_channel_block() * 40**3 * 4
    assert conv_workspace_bytes(args, out, "cuda") == 2 * 27 * 40**3 * 4


def _small_networks():
    from monai.networks.nets import SegResNet, UNet

    return [
        (UNet(3, 1, 3, channels=(4, 8, 16), strides=(2, 2), num_res_units=1), (1, 1, 32, 32, 32)),
        (UNet(3, 1, 3, channels=(16, 32, 64), strides=(2, 2), num_res_units=1, norm="batch"), (2, 1, 32, 32, 32)),
        (SegResNet(3, init_filters=8, in_channels=1, out_channels=3), (1, 1, 32, 32, 32)),
        (UNet(2, 1, 8, channels=(16, 32, 64), strides=(2, 2), num_res_units=1), (4, 1, 64, 48)),
    ]


@pytest.mark.parametrize("case", range(4))
def test_trace_matches_the_torch_profiler(case):
    """The meta trace (with its conv workspace term) predicts the live-tensor peak the torch
    profiler records on real tensors on this CPU."""
    torch.manual_seed(0)
    net, shape = _small_networks()[case]
    net.eval()
    measured = profiled_peak_bytes(net, torch.rand(shape))
    predicted, out_shape = trace_activations(net, shape)
    assert out_shape[0] == shape[0]
    assert predicted == pytest.approx(measured, rel=0.01)


def test_swinunetr_builds_from_a_spec_and_traces(tmp_path, monkeypatch):
    """SwinUNETR (BTCV bundle layout, kwargs passed through, no ``img_size`` in MONAI >= 1.5): the
    trace agrees with the torch profiler (window attention, patch merging, layer norms)."""
    pytest.importorskip("einops")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    spec = _spec(out=3, cls="SwinUNETR", roi=(32, 32, 64), kwargs={"feature_size": 12})
    assert roi_divisor(spec.network) == 32
    torch.manual_seed(0)
    net = build_network(spec).eval()
    predicted = NetworkMemory(net).activations(1, (32, 32, 64), 1, "cpu")
    measured = profiled_peak_bytes(net, torch.rand(1, 1, 32, 32, 64))
    assert predicted == pytest.approx(measured, rel=0.01)


def _spec(out=105, cls="SegResNet", roi=(96, 96, 96), kwargs=None, dims=3):
    return spec_from_dict(
        {
            "name": "wholebody",
            "network": {"class": cls, "spatial_dims": dims, "out_channels": out, "kwargs": kwargs or {}},
            "labels": {i: {"name": f"c{i}"} for i in range(out)},
            "preprocessing": {"spacing": [1.5, 1.5, 1.5]},
            "inference": {"roi_size": list(roi), "sw_batch_size": 1, "precision": "fp16"},
        }
    )


@pytest.fixture(scope="module")
def wholebody():
    spec = _spec(kwargs={"init_filters": 32, "blocks_down": [1, 2, 2, 4], "blocks_up": [1, 1, 1]})
    with torch.device("meta"):
        net = NetworkMemory(build_network(spec))
    work = Workload((512, 512, 800), (512, 512, 800), (512, 512, 800), 1, 105, 3, 2, resampled=False)
    return spec, net, work


def test_full_buffer_of_the_whole_body_case_is_over_80_gb(wholebody):
    _, _, work = wholebody
    assert full_buffer_bytes(work) > 80e9


def test_planner_fits_105_classes_in_12gb_gpu_by_streaming(wholebody):
    spec, net, work = wholebody
    result = plan_memory(
        work, MonaiModel(spec).windows, net, "cuda", gpu_budget=12 * GiB, host_budget=6 * GiB, framework_host=500 * MiB
    )
    assert result.fits, result.message
    assert result.plan.streaming
    assert result.estimate.gpu_peak <= 12 * GiB and result.estimate.host_peak <= 6 * GiB
    roi = result.plan.roi_size  # 96^3 does not fit next to a 96-plane band of 105 classes: the slab axis shrinks
    assert roi[:2] == (96, 96) and roi[2] < 96 and roi[2] % 8 == 0
    assert result.plan.predicted_bytes["gpu.peak"] == result.estimate.gpu_peak


def test_planner_uses_the_full_buffer_when_it_fits(wholebody):
    spec, net, _ = wholebody
    small = Workload((160, 160, 120), (160, 160, 120), (160, 160, 120), 1, 105, 3, 2, resampled=False)
    result = plan_memory(
        small, MonaiModel(spec).windows, net, "cuda", gpu_budget=80 * GiB, host_budget=64 * GiB, framework_host=0
    )
    assert result.fits and not result.plan.streaming and result.plan.aggregation_device == "cuda"
    assert result.plan.sw_batch_size > 1  # spare memory buys throughput


def test_bigger_gpu_budget_never_predicts_a_slower_plan(wholebody):
    spec, net, work = wholebody
    costs = []
    for gb in (12, 24, 48):
        result = plan_memory(
            work, MonaiModel(spec).windows, net, "cuda", gpu_budget=gb * GiB, host_budget=16 * GiB, framework_host=0
        )
        assert result.fits and result.estimate.gpu_peak <= gb * GiB
        costs.append(relative_cost(work, result.plan))
    assert costs == sorted(costs, reverse=True)


def test_when_nothing_fits_the_planner_says_what_would(wholebody):
    spec, net, work = wholebody
    result = plan_memory(
        work, MonaiModel(spec).windows, net, "cuda", gpu_budget=1 * GiB, host_budget=2 * GiB, framework_host=0
    )
    assert not result.fits
    assert "nothing fits" in result.message and "needs GPU" in result.message and "host" in result.message


def test_cpu_plan_streams_within_a_6gb_host_budget(wholebody):
    spec, net, work = wholebody
    result = plan_memory(work, MonaiModel(spec).windows, net, "cpu", host_budget=6 * GiB, framework_host=500 * MiB)
    assert result.fits and result.plan.streaming and result.estimate.host_peak <= 6 * GiB
    assert result.plan.aggregation_device == "cpu" and "gpu.peak" in result.plan.predicted_bytes


def test_estimate_aggregation_term_is_the_engine_buffer(wholebody):
    _, net, work = wholebody
    plan = Plan(roi_size=(96, 96, 96), sw_batch_size=1, overlap=0.25, slab_depth=96)
    est = estimate(work, plan, net)
    planes = 96
    assert est.host["aggregation"] == 106 * 512 * 512 * planes * 4
    assert est.host["finalise"] == 105 * 512 * 512 * 1 * 4  # one 110 MB plane at a time is handed on
    # activations and the inversion of a finalised chunk are never alive together
    phase_a = est.host["activations"] + est.host["windows"]
    phase_b = est.host["finalise"] + est.host["post_processing"]
    rest = sum(v for k, v in est.host.items() if k not in ("activations", "windows", "finalise", "post_processing"))
    assert est.host_peak == rest - est.host["preprocess_transient"] + max(
        phase_a, phase_b, est.host["preprocess_transient"]
    )


def test_plan_cli_json_and_table(tmp_path):
    from tests.conftest import ROOT

    scan = ROOT / "sample_data" / "phantom_ct.nii.gz"
    runner = CliRunner()
    res = runner.invoke(main, ["plan", str(scan), "--model", "phantom-unet3d", "--device", "cpu", "--json"])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.output)
    assert doc["fits"] and doc["roi_size"] == [64, 64, 64]
    assert doc["predicted_bytes"]["host.activations"] > 0 and doc["predicted_bytes"]["host.peak"] > 0
    res = runner.invoke(
        main, ["plan", str(scan), "--model", "phantom-unet3d", "--device", "cpu", "--host-memory", "64MB"]
    )
    assert res.exit_code == 1 and "DOES NOT FIT" in res.output and "nothing fits" in res.output
    res = runner.invoke(main, ["plan", str(scan), "--device", "cpu", "--host-memory", "lots"])
    assert res.exit_code == 2 and "cannot read memory size" in res.output and "--host-memory" in res.output  # usage


def test_infer_follows_the_plan_under_a_host_budget(tmp_path):
    """A budget below the full buffer's prediction makes infer stream; labels equal the unconstrained run's."""
    import nibabel as nib
    import numpy as np

    from medseg.inference.pipeline import Segmenter, infer_file
    from medseg.io import read_volume
    from tests.conftest import save_nifti, write_tiny_model

    model = write_tiny_model(tmp_path / "m", out_channels=16, spacing=(4.0, 4.0, 4.0), roi=[32, 32, 32])
    data = np.random.default_rng(0).normal(0, 300, size=(64, 64, 400)).astype(np.int16)
    scan = save_nifti(tmp_path / "scan.nii.gz", data, np.diag([4.0, 4.0, 4.0, 1.0]))
    seg = Segmenter(model, "cpu")
    free = seg.plan_case(read_volume(scan))
    assert free.fits and not free.plan.streaming
    seg.host_budget = free.estimate.host_peak - 48 * MiB  # the full buffer alone is ~105 MiB
    tight = infer_file(scan, tmp_path / "tight.nii.gz", model=seg)
    plan = json.loads(tight.sidecar_path.read_text())["plan"]
    assert plan["slab_depth"] > 0 and plan["roi_size"] == [32, 32, 32]
    assert plan["predicted_bytes"]["host.peak"] <= plan["budget_bytes"]["host"] == seg.host_budget

    res = CliRunner().invoke(
        main, ["infer", str(scan), "-o", str(tmp_path / "free.nii.gz"), "--model", str(model), "--device", "cpu", "-q",
               "--host-memory", "20GB"],
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    cli_plan = json.loads((tmp_path / "free.json").read_text())["plan"]
    assert cli_plan["budget_bytes"]["host"] == 20 * GiB and cli_plan["slab_depth"] == 0
    labels = [nib.load(str(tmp_path / f"{n}.nii.gz")).get_fdata() for n in ("free", "tight")]
    assert np.mean(labels[0] == labels[1]) >= 0.9999


def test_auto_budgets_settle_on_what_was_free(monkeypatch, tmp_path):
    """plan and infer a moment later plan for one auto budget while free memory moves a little."""
    from medseg.inference import budget

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    free = {"now": 10 * GiB}
    monkeypatch.setattr(budget, "available_host_bytes", lambda: free["now"])
    monkeypatch.setattr(budget, "process_rss_bytes", lambda: 0)
    first = budget.auto_host_budget()
    assert first == 10 * GiB
    free["now"] = 10 * GiB - 200 * MiB  # 2% less: the same budget
    assert budget.auto_host_budget() == first
    free["now"] = 10 * GiB + 250 * MiB
    assert budget.auto_host_budget() == first
    free["now"] = 8 * GiB  # 20% less: measured again
    assert budget.auto_host_budget() == 8 * GiB
