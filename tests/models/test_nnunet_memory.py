"""nnU-Net v2 folders: the memory planner's terms, and the logits streamed in first-axis bands.

The predicted peak is measured against the process's peak RSS by ``benchmarks/nnunet_memory.py`` (its
table is in ``benchmarks/README.md``); the slow test here runs one of its rows in a fresh process.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from medseg.models.nnunet import NnUNetModel
from medseg.phantom import make_phantom
from medseg.volume import Volume

pytest.importorskip("nnunetv2")

ROOT = Path(__file__).resolve().parents[2]
CONFIG = (
    ROOT / "sample_data" / "models" / "nnunet-phantom" / "Dataset501_Phantom" / "nnUNetTrainer__nnUNetPlans__3d_fullres"
)


def _phantom(shape_xyz, spacing=(3.0, 3.0, 3.0), seed=9301) -> Volume:
    """The phantom cropped (or padded with air) around its centre to ``shape_xyz`` voxels."""
    image, _ = make_phantom(seed, spacing=spacing)
    src = np.asarray(image.array).astype(np.int16)
    out = np.full(shape_xyz, -1000, dtype=np.int16)
    a = [max(0, (s - n) // 2) for s, n in zip(src.shape, shape_xyz)]
    b = [max(0, (n - s) // 2) for s, n in zip(src.shape, shape_xyz)]
    size = [min(s, n) for s, n in zip(src.shape, shape_xyz)]
    out[tuple(slice(o, o + k) for o, k in zip(b, size))] = src[tuple(slice(o, o + k) for o, k in zip(a, size))]
    return Volume(out, np.diag([*spacing, 1.0]))


def test_breakdown_terms_are_named_and_positive_before_load():
    model = NnUNetModel(CONFIG, folds=[0], tta=False, stream_slabs=False)
    volume = _phantom((100, 80, 60), spacing=(2.0, 2.0, 2.5))
    terms = model.memory_breakdown(volume)
    assert not model._loaded and not hasattr(model, "states")  # planning read no checkpoint
    for name in ("scan", "input", "preprocess.copy", "preprocess.transient", "preprocessed", "logits",
                 "weight_sums", "weights", "window.batch", "window.activations", "window.sums",
                 "export.slab", "export.labels", "labels.uncropped"):  # fmt: skip
        assert terms[name] > 0, name
    phases = model.memory_phases(volume)
    assert model.algorithm_bytes(volume) == max(sum(p.values()) for p in phases.values())
    for phase in phases.values():  # each phase's terms are the breakdown's
        assert all(terms[k] == v for k, v in phase.items())
    # the float16 logits and weight sums on the (padded) model grid
    model_grid = (50, 53, 67)  # (z, y, x) at 3 mm: 60 x 2.5 / 3, 80 x 2 / 3, 100 x 2 / 3
    assert terms["logits"] == 2 * 8 * int(np.prod(model_grid))
    assert terms["weight_sums"] == 2 * int(np.prod(model_grid))


@pytest.mark.parametrize("tta", [False, True])
def test_activation_term_is_the_traced_network(tta):
    """The network nnU-Net's trainer builds from the plans (real weights here), traced by NetworkMemory at
    the patch size and the TTA batch: the same bytes as the planner's term (built on the meta device)."""
    import torch
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    from medseg.inference.tracing import CHANNELS_LAST_CPU, NetworkMemory
    from medseg.models.nnunet.model import _trainer_class

    plans = json.loads((CONFIG / "plans.json").read_text())
    pm = PlansManager(plans)
    net = _trainer_class("nnUNetTrainer", CONFIG).build_network_architecture(
        pm, pm.get_configuration("3d_fullres"), 1, 8, enable_deep_supervision=False
    )
    kinds = {type(m) for m in net.modules()}
    assert {torch.nn.InstanceNorm3d, torch.nn.LeakyReLU, torch.nn.ConvTranspose3d} <= kinds
    assert not net.decoder.deep_supervision
    # on the CPU one window or mirrored copy per worker thread (a thread per core, 2-8 cores) is in flight
    threads = torch.get_num_threads()
    batch = threads if 2 <= threads <= 8 else 1
    expected = NetworkMemory(net).activations(1, (48, 48, 48), batch, CHANNELS_LAST_CPU)
    model = NnUNetModel(CONFIG, folds=[0], tta=tta)
    assert model.views_in_flight() == batch
    assert model.memory_breakdown(_phantom((60, 60, 60)))["window.activations"] == expected
    assert model.network_memory().weights == sum(t.numel() * 4 for t in net.parameters())  # each tensor once


def test_predicted_peak_grows_with_the_scan():
    model = NnUNetModel(CONFIG, folds=[0], tta=False, stream_slabs=False)
    sizes = [(60, 60, 40), (120, 100, 60), (240, 200, 120)]
    peaks = [model.algorithm_bytes(_phantom(s, spacing=(1.5, 1.5, 2.0))) for s in sizes]
    assert peaks[0] < peaks[1] < peaks[2]


def test_bands_are_planned_when_the_full_logits_do_not_fit():
    """A whole-body grid at the model's 3 mm (no resampling: the logits, not preprocessing, set the peak)."""
    model = NnUNetModel(CONFIG, folds=[0, 1], tta=False)
    volume = _phantom((170, 170, 300))
    model.stream_slabs = False
    full = model.memory_phases(volume)
    model.stream_slabs = True
    bands = model.memory_phases(volume)
    assert bands["windows"]["logits"] < full["windows"]["logits"] / 2
    # the windows phase falls by more than one fold's full logits (here 183 MB against 139 MB); the export (one
    # chunk of resampled logits, in both) sets the peak of either, which bands never raise
    assert sum(full["windows"].values()) - sum(bands["windows"].values()) > full["windows"]["logits"]
    assert max(sum(p.values()) for p in bands.values()) <= max(sum(p.values()) for p in full.values())
    # by budget: streams when the full path's peak exceeds it, not otherwise
    model.stream_slabs = None
    tight = model.layout(volume, max(sum(p.values()) for p in full.values()) - 1)
    assert tight.banded and tight.phases["windows"]["logits"] == bands["windows"]["logits"]
    assert "first-axis bands" in tight.notes[0]
    assert model.memory_phases(volume, 1 << 40)["windows"]["logits"] == full["windows"]["logits"]


def test_separate_z_scans_keep_the_full_buffer_and_say_so():
    model = NnUNetModel(CONFIG, folds=[0], tta=False, stream_slabs=True)
    volume = _phantom((100, 90, 20), spacing=(0.8, 0.8, 4.0))  # anisotropic: nnU-Net's own export
    layout = model.layout(volume)
    assert "export.resampled" in layout.phases["export"] and "cannot stream" in layout.notes[0]


@pytest.mark.parametrize("tta, folds", [(False, [0, 1]), (True, [0])])
def test_band_streaming_labels_equal_the_full_buffer(tta, folds, monkeypatch):
    """A scan whose first axis takes several window groups and several export chunks (the chunk made small
    so the bands export part by part): every label equal to the full-buffer run."""
    from medseg.models.nnunet import export, windows

    for module in (export, windows):  # the streamed export's chunks and the bands' export chunks
        monkeypatch.setattr(module, "_export_step", lambda heads, out_shape: 7)
    volume = _phantom((40, 36, 100), spacing=(2.4, 2.4, 3.0))  # model grid (100, 29, 32): 4 groups of rows
    model = NnUNetModel(CONFIG, folds=folds, tta=tta).load()
    model.stream_slabs = False
    full = model.run_algorithm(volume, None).labels
    model.stream_slabs = True
    banded = model.run_algorithm(volume, None)
    assert len(set(np.unique(full).tolist()) - {0}) >= 3, "the model found too little to compare"
    assert np.array_equal(full, banded.labels)
    assert "nnunet.windows+export" in banded.timings


@pytest.mark.slow
def test_predicted_peak_is_within_15_percent_of_the_measured_rss():
    """The shipped model on a clinical grid, measured in a fresh process (peak RSS during the case)."""
    row = {"name": "test", "folder": "shipped", "scan": [[300, 240, 100], [0.8, 0.8, 1.5], True], "tta": False,
           "stream": False}  # fmt: skip
    script = ROOT / "benchmarks" / "nnunet_memory.py"
    run = subprocess.run([sys.executable, str(script), "--row", json.dumps(row)], capture_output=True, text=True,
                         timeout=600, cwd=script.parent)  # fmt: skip
    assert run.returncode == 0, run.stderr[-2000:]
    result = json.loads(run.stdout.strip().splitlines()[-1])
    ratio = result["predicted_run"] / result["measured_run"]
    assert 0.85 <= ratio <= 1.15, result


def test_view_workers_give_way_to_the_host_budget():
    """On the CPU a mirrored copy (with TTA) or window runs per core, unless those do not fit the host budget."""
    import torch

    model = NnUNetModel(CONFIG, folds=[0], tta=True)
    volume = _phantom((60, 60, 40))
    roomy = model.layout(volume, 1 << 40)
    threads = torch.get_num_threads()
    assert model.views_in_flight() == (threads if 2 <= threads <= 8 else 1)
    assert not roomy.one_view and not roomy.notes
    if model.views_in_flight() < 2:
        pytest.skip("one torch thread: no view workers to give way")
    tight = model.layout(volume, max(sum(p.values()) for p in roomy.phases.values()) - 1)
    assert tight.one_view and model.views_in_flight(tight.one_view) == 1
    assert "one window or mirrored copy at a time" in tight.notes[-1]
    assert tight.phases["windows"]["window.activations"] < roomy.phases["windows"]["window.activations"]
    assert model.layout(volume, 1 << 40) == roomy  # a layout is a value: planning again changes nothing


def test_a_case_planned_on_another_thread_mid_run_changes_nothing_of_the_run():
    """The pipelined batch plans the next case on its reader thread while the current one runs. The plan is a
    value the run receives (its host budget; nnU-Net's layout follows from it), never model state: a tight plan
    made on another thread in the middle of a run leaves that run's layout, notes and labels as a serial run's."""
    import threading

    from medseg.inference.pipeline import Segmenter

    model = NnUNetModel(CONFIG, folds=[0], tta=False).load()
    current, following = _phantom((60, 56, 50), seed=9302), _phantom((90, 90, 80), seed=9303)
    roomy = Segmenter(model, "cpu", host_memory=1 << 40)
    serial = roomy.segment(current, roomy.plan_for(current))
    tight = Segmenter(model, "cpu", host_memory=model.algorithm_bytes(following, 1 << 40) - 1)
    tight_plan = tight.plan_case(following, strict=False).plan  # fits or not: its layout is what matters
    assert model.layout(following, tight_plan.budget_bytes["host"]).notes  # that plan does change the layout

    original = model.predict_logits
    planned = []

    def plan_elsewhere_then_predict(*args, **kwargs):
        other = threading.Thread(target=lambda: planned.append(tight.plan_case(following, strict=False).plan))
        other.start()
        other.join()
        return original(*args, **kwargs)

    model.predict_logits = plan_elsewhere_then_predict
    try:
        during = roomy.segment(current, roomy.plan_for(current))
    finally:
        del model.predict_logits
    assert planned and planned[0].notes == tight_plan.notes
    assert during.notes == serial.notes and not any("at a time" in n or "bands" in n for n in during.notes)
    assert np.array_equal(during.labels, serial.labels)
