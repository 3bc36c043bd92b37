"""nnU-Net v2 folders: the planner's predicted host peak against the measured peak RSS of a whole case.

Each row runs in a fresh process: it opens the folder (``NnUNetModel``, loaded: weights in memory),
makes the scan (a ``Volume`` in memory) and the prediction (``NnUNetModel.memory_phases``, its
largest phase is ``algorithm_bytes``), records the resident size ``B`` (imports, weights, scan),
resets the peak (``/proc/self/clear_refs`` = 5, Linux) and runs ``run_algorithm`` (nnU-Net's
preprocessing, windows, export, labels). Measured run peak: ``VmHWM - B``; predicted run peak: the
prediction minus the terms already in ``B`` (the scan, the weights). Process peak = ``B`` + run.
Each step's own peak is measured too (the peak is reset when a step starts) against its phase.

Rows: the shipped ``nnunet-phantom`` folder (PlainConvUNet, patch 48^3) on a clinical grid (full
logits buffer, then streamed in first-axis bands) and with mirroring TTA (8 copies per forward
pass); a full-size PlainConvUNet 3d_fullres (patch 128^3, features 32..320, as nnU-Net's default
planner makes it for CT) and nnU-Net's ResEnc M (``ResidualEncoderUNet``, blocks 1,3,4,6,6,6), both
with random weights saved in nnU-Net's checkpoint format into a temporary results folder, on a scan
just larger than one patch (TTA off: memory is measured, and one run takes about a minute).

    python benchmarks/nnunet_memory.py              # all rows (about 6 minutes on 2 cores)
    python benchmarks/nnunet_memory.py --rows 0,2   # rows by index into ROWS
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

from _procstat import proc_status as _status  # noqa: E402  (benchmarks run as scripts from this folder)

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = (
    ROOT / "sample_data" / "models" / "nnunet-phantom" / "Dataset501_Phantom" / "nnUNetTrainer__nnUNetPlans__3d_fullres"
)

_COMMON = {
    "conv_op": "torch.nn.modules.conv.Conv3d",
    "kernel_sizes": [[3, 3, 3]] * 6,
    "strides": [[1, 1, 1]] + [[2, 2, 2]] * 5,
    "conv_bias": True,
    "norm_op": "torch.nn.modules.instancenorm.InstanceNorm3d",
    "norm_op_kwargs": {"eps": 1e-05, "affine": True},
    "dropout_op": None,
    "dropout_op_kwargs": None,
    "nonlin": "torch.nn.LeakyReLU",
    "nonlin_kwargs": {"inplace": True},
    "n_stages": 6,
    "features_per_stage": [32, 64, 128, 256, 320, 320],
}
ARCHITECTURES = {
    "plainconvunet-128": {
        "network_class_name": "dynamic_network_architectures.architectures.unet.PlainConvUNet",
        "arch_kwargs": {**_COMMON, "n_conv_per_stage": [2] * 6, "n_conv_per_stage_decoder": [2] * 5},
        "_kw_requires_import": ["conv_op", "norm_op", "dropout_op", "nonlin"],
    },
    "resenc-m-128": {
        "network_class_name": "dynamic_network_architectures.architectures.unet.ResidualEncoderUNet",
        "arch_kwargs": {**_COMMON, "n_blocks_per_stage": [1, 3, 4, 6, 6, 6], "n_conv_per_stage_decoder": [1] * 5},
        "_kw_requires_import": ["conv_op", "norm_op", "dropout_op", "nonlin"],
    },
}

# name, folder ("shipped" or an ARCHITECTURES key), scan (xyz shape, spacing mm, phantom?), tta, stream
ROWS = [
    ("shipped, clinical grid", "shipped", ((400, 300, 120), (0.8, 0.8, 1.5), True), False, False),
    ("shipped, clinical grid, bands", "shipped", ((400, 300, 120), (0.8, 0.8, 1.5), True), False, True),
    ("shipped, TTA (8 mirrors)", "shipped", ((137, 125, 47), (0.8, 0.8, 1.5), True), True, False),
    ("PlainConvUNet 128^3", "plainconvunet-128", ((160, 160, 180), (0.8, 0.8, 0.8), False), False, False),
    ("ResEnc M 128^3", "resenc-m-128", ((160, 160, 180), (0.8, 0.8, 0.8), False), False, False),
]


def random_folder(architecture: str, dest: Path) -> Path:
    """A results folder with the shipped plans edited to ``architecture`` (patch 128^3, 1 mm), random
    weights saved as nnU-Net saves them."""
    import numpy as np
    import torch
    from nnunetv2.utilities.label_handling.label_handling import determine_num_input_channels
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    from medseg.models.nnunet.model import _trainer_class

    folder = dest / "Dataset601_Memory" / SHIPPED.name
    folder.mkdir(parents=True)
    plans = json.loads((SHIPPED / "plans.json").read_text())
    dataset = json.loads((SHIPPED / "dataset.json").read_text())
    config = plans["configurations"]["3d_fullres"]
    config.update(patch_size=[128, 128, 128], spacing=[1.0, 1.0, 1.0], architecture=ARCHITECTURES[architecture])
    (folder / "plans.json").write_text(json.dumps(plans))
    (folder / "dataset.json").write_text(json.dumps(dataset))
    pm = PlansManager(plans)
    cm = pm.get_configuration("3d_fullres")
    torch.manual_seed(0)
    net = _trainer_class("nnUNetTrainer", folder).build_network_architecture(
        pm, cm, determine_num_input_channels(pm, cm, dataset), pm.get_label_manager(dataset).num_segmentation_heads,
        enable_deep_supervision=False,
    )  # fmt: skip
    (folder / "fold_0").mkdir()
    init = {
        "plans": plans,
        "configuration": "3d_fullres",
        "fold": 0,
        "dataset_json": dataset,
        "device": torch.device("cpu"),
    }
    checkpoint = {
        "network_weights": net.state_dict(),
        "init_args": init,
        "trainer_name": "nnUNetTrainer",
        "inference_allowed_mirroring_axes": (0, 1, 2),
        "current_epoch": 1,
        "_best_ema": np.float64(0.5),
    }
    torch.save(checkpoint, folder / "fold_0" / "checkpoint_final.pth")
    return folder


def make_scan(shape, spacing, phantom: bool):
    """A CT ``Volume``: the phantom cropped around its centre to ``shape``, or CT-like noise (no air: the
    non-zero crop keeps every voxel)."""
    import numpy as np

    from medseg.phantom import make_phantom
    from medseg.volume import Volume

    if not phantom:
        data = np.random.default_rng(0).integers(-900, 900, size=shape, dtype=np.int16)
        return Volume(data, np.diag([*spacing, 1.0]))
    image, _ = make_phantom(9102, spacing=spacing)
    full = np.array(image.shape)
    size = np.minimum(full, shape)
    start = (full - size) // 2
    sl = tuple(slice(a, a + n) for a, n in zip(start, size))
    affine = image.affine.copy()
    affine[:3, 3] = image.affine[:3, :3] @ start + image.affine[:3, 3]
    return Volume(np.ascontiguousarray(np.asarray(image.array)[sl].astype(np.int16)), affine)


def _reset_peak() -> None:
    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")


def run_row(args: dict) -> dict:
    """One measurement (in a fresh process, one glibc heap for all threads as ``medseg infer`` sets)."""
    from medseg.inference.host_memory import share_one_heap

    share_one_heap()
    import torch

    from medseg.models.nnunet import NnUNetModel

    torch.set_num_threads(2)
    with tempfile.TemporaryDirectory() as tmp:
        folder = SHIPPED if args["folder"] == "shipped" else random_folder(args["folder"], Path(tmp))
        model = NnUNetModel(folder, folds=[0], tta=args["tta"], stream_slabs=args["stream"]).load()
        shape, spacing, phantom = args["scan"]
        volume = make_scan(tuple(shape), tuple(spacing), phantom)
        phases = model.memory_phases(volume)
        predicted = {name: sum(terms.values()) for name, terms in phases.items()}
        already = phases["preprocess"]["scan"] + phases["preprocess"]["weights"]

        # each step's own peak: reset when the step starts, read when it ends
        steps: dict[str, int] = {}
        original = {n: getattr(model, n) for n in ("predict_logits", "_streamed_export", "_band_windows")}

        def timed(name, fn, step):
            def wrapper(*a, **k):
                steps["preprocess"] = max(steps.get("preprocess", 0), _status("VmHWM"))
                _reset_peak()
                out = fn(*a, **k)
                steps[step] = _status("VmHWM")
                _reset_peak()
                return out

            return wrapper

        model.predict_logits = timed("predict_logits", original["predict_logits"], "windows")
        model._band_windows = timed("_band_windows", original["_band_windows"], "windows+export")
        export = original["_streamed_export"]

        def export_step(*a, **k):
            _reset_peak()
            out = export(*a, **k)
            steps["export"] = _status("VmHWM")
            _reset_peak()
            return out

        model._streamed_export = export_step
        base = _status("VmRSS")
        _reset_peak()
        t = time.perf_counter()
        out = model.run_algorithm(volume, None)
        seconds = time.perf_counter() - t
        steps["labels"] = _status("VmHWM")
        peak = max(steps.values())
    return {
        **args,
        "base": base,
        "measured_peak": peak,
        "measured_run": peak - base,
        "predicted_run": max(predicted.values()) - already,
        "predicted_phases": {k: v - already for k, v in predicted.items()},
        "measured_steps": {k: v - base for k, v in steps.items()},
        "terms": {k: v for p in phases.values() for k, v in p.items()},
        "seconds": seconds,
        "labels": sorted(int(v) for v in set(out.labels.ravel()[::97].tolist())),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", help="comma-separated row indices into ROWS (default: all)")
    parser.add_argument("--row", help=argparse.SUPPRESS)
    parser.add_argument("--verbose", action="store_true", help="print each step's measured and predicted peak")
    args = parser.parse_args()
    if args.row:
        print(json.dumps(run_row(json.loads(args.row))))
        return
    rows = [ROWS[int(i)] for i in args.rows.split(",")] if args.rows else ROWS
    print(f"machine: {platform.node()} {platform.machine()}, {os.cpu_count()} CPUs, torch threads 2")
    print(f"date: {datetime.now(timezone.utc).isoformat(timespec='minutes')}")
    head = (
        f"{'configuration':<32}{'pred run':>10}{'meas run':>10}{'ratio':>7}"
        f"{'pred peak':>11}{'meas peak':>11}{'ratio':>7}{'s':>7}"
    )
    print(head)
    print("-" * len(head))
    worst = 0.0
    mib = 1 << 20
    for name, folder, scan, tta, stream in rows:
        spec = json.dumps({"name": name, "folder": folder, "scan": scan, "tta": tta, "stream": stream})
        res = subprocess.run([sys.executable, __file__, "--row", spec], capture_output=True, text=True, check=False)
        if res.returncode:
            print(f"{name}: failed\n{res.stderr[-3000:]}")
            continue
        r = json.loads(res.stdout.strip().splitlines()[-1])
        ratio_run = r["predicted_run"] / r["measured_run"]
        pred_peak = r["base"] + r["predicted_run"]
        ratio_peak = pred_peak / r["measured_peak"]
        worst = max(worst, abs(ratio_run - 1))
        print(
            f"{name:<32}{r['predicted_run'] / mib:>9.0f}M{r['measured_run'] / mib:>9.0f}M{ratio_run:>7.2f}"
            f"{pred_peak / mib:>10.0f}M{r['measured_peak'] / mib:>10.0f}M{ratio_peak:>7.2f}{r['seconds']:>7.1f}"
        )
        if args.verbose:
            print("    steps measured:", {k: f"{v / mib:.0f}M" for k, v in r["measured_steps"].items()})
            print("    phases predicted:", {k: f"{v / mib:.0f}M" for k, v in r["predicted_phases"].items()})
            print("    terms:", {k: f"{v / mib:.1f}M" for k, v in r["terms"].items()})
    print(f"largest run-peak error: {worst * 100:.1f}% (target 15%)")


if __name__ == "__main__":
    main()
