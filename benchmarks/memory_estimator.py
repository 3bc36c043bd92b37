"""Predicted vs measured peak memory of a whole run (windows, aggregation, inversion) on this CPU.

Each row runs in a fresh process: it builds the network (random weights), a random image on the
model grid and the plan, records its resident size ``B`` (imports, model, image), resets the peak
(``/proc/self/clear_refs`` = 5, Linux) and runs ``medseg.inference.engine.infer_labels``. The
measured run peak is ``VmHWM - B``; the predicted run peak is the estimator's host peak minus the
terms already in ``B`` (framework, input, image, weights). Process peak = ``B`` + run.

Second measurement, of the network part only: after the run, the same process runs one window
batch (``batch x in_channels x roi``, random) through the network under ``torch.profiler`` with
``profile_memory=True`` and replays the profiler's allocation/free events in time order; their
running sum's maximum ("prof act") is the peak of live tensor bytes during that forward pass (the
input excluded, the output included). It is compared with the estimator's activation term for
that window batch ("pred act"). The profiler sees allocations of PyTorch's CPU allocator only
(tensors, im2col buffers), not oneDNN's or MKL's internal buffers nor freed memory glibc keeps;
those are in the RSS columns.

    python benchmarks/memory_estimator.py            # all 13 rows (the 3 SwinUNETR rows: ~3 minutes on 2 cores)
    python benchmarks/memory_estimator.py --quick    # three rows
    python benchmarks/memory_estimator.py --rows 0,10,11   # rows by index into ROWS

The SwinUNETR rows need ``einops`` (``pip install einops``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests.reference: the reference pipelines

NETWORKS = {
    # the MONAI spleen bundle's UNet
    "spleen-unet": (
        "UNet",
        3,
        2,
        {"channels": [16, 32, 64, 128, 256], "strides": [2, 2, 2, 2], "num_res_units": 2, "norm": "batch"},
    ),
    # the whole-body CT bundle's network definition (105 outputs)
    "wholebody-segresnet": (
        "SegResNet",
        3,
        105,
        {"init_filters": 32, "blocks_down": [1, 2, 2, 4], "blocks_up": [1, 1, 1], "dropout_prob": 0.2},
    ),
    "dynunet": (
        "DynUNet",
        3,
        14,
        {
            "kernel_size": [3, 3, 3, 3, 3],
            "strides": [1, 2, 2, 2, 2],
            "upsample_kernel_size": [2, 2, 2, 2],
            "norm_name": "instance",
        },
    ),
    "unet2d": ("UNet", 2, 8, {"channels": [16, 32, 64, 128, 256], "strides": [2, 2, 2, 2], "num_res_units": 1}),
    # the BTCV bundle's SwinUNETR (14 abdominal organs); needs einops (pip install einops)
    "btcv-swinunetr": ("SwinUNETR", 3, 14, {"feature_size": 48}),
    "swinunetr-fs24": ("SwinUNETR", 3, 14, {"feature_size": 24}),
}

# network, roi, batch, volume (model grid), slab depth (0 = full buffer)
ROWS = [
    ("spleen-unet", (96, 96, 96), 1, (160, 160, 100), 0),
    ("spleen-unet", (96, 96, 96), 2, (200, 200, 120), 0),
    ("spleen-unet", (128, 128, 64), 1, (256, 256, 160), 64),
    ("wholebody-segresnet", (64, 64, 64), 1, (96, 96, 96), 0),
    ("wholebody-segresnet", (96, 96, 96), 1, (96, 96, 120), 0),
    ("wholebody-segresnet", (64, 64, 32), 2, (128, 128, 200), 32),
    ("dynunet", (96, 96, 96), 1, (128, 128, 96), 0),
    ("dynunet", (64, 64, 64), 2, (160, 160, 100), 64),
    ("unet2d", (160, 128), 8, (200, 160, 60), 0),
    ("unet2d", (256, 256), 4, (256, 256, 40), 8),
    ("btcv-swinunetr", (96, 96, 96), 1, (128, 128, 96), 0),
    ("btcv-swinunetr", (64, 64, 64), 2, (128, 128, 64), 0),
    ("swinunetr-fs24", (64, 64, 64), 1, (96, 96, 160), 64),
]
QUICK = [0, 3, 8]


from _procstat import proc_status as _status  # noqa: E402  (benchmarks run as scripts from this folder)


def run_row(args: dict) -> dict:
    """One measurement (in a fresh process)."""
    import numpy as np
    import torch

    from medseg.inference.engine import stream_windows
    from medseg.inference.estimate import Workload, estimate
    from medseg.inference.invert import SourceGridFinaliser
    from medseg.inference.plan import Plan
    from medseg.inference.preprocess import plan_grid
    from medseg.inference.tracing import NetworkMemory
    from medseg.models.networks import build_network
    from medseg.models.spec import spec_from_dict
    from medseg.volume import Volume
    from tests.reference.monai_full_buffer import profiled_peak_bytes

    torch.set_num_threads(2)
    torch.manual_seed(0)
    cls, dims, out, kwargs = NETWORKS[args["network"]]
    roi, batch, shape, slab = tuple(args["roi"]), args["batch"], tuple(args["volume"]), args["slab"]
    spec = spec_from_dict(
        {
            "name": args["network"],
            "network": {"class": cls, "spatial_dims": dims, "out_channels": out, "kwargs": kwargs},
            "labels": {0: {"name": "background"}},
            "inference": {"roi_size": list(roi)},
        }
    )
    net = build_network(spec).eval()
    volume = Volume(np.zeros(shape, np.int16), np.eye(4))
    record = plan_grid(volume, spec.preprocessing)
    image = torch.rand((1, *shape), generator=torch.Generator().manual_seed(1))
    plan = Plan(roi_size=roi, sw_batch_size=batch, overlap=0.25, slab_depth=slab, host_allocator="strict")
    work = Workload(shape, shape, shape, 1, out, dims, 2, resampled=False)
    est = estimate(work, plan, NetworkMemory(net), framework_host=0)
    base = _status("VmRSS")
    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")
    t = time.perf_counter()
    stream_windows(net, image, plan, SourceGridFinaliser(record, out), dims)
    seconds = time.perf_counter() - t
    peak = _status("VmHWM")
    # second measurement (after the RSS peak was read): one window batch under the torch profiler
    window_batch = torch.rand((batch, 1, *roi), generator=torch.Generator().manual_seed(2))
    profiled = profiled_peak_bytes(net, window_batch)
    est.host["preprocess_transient"] = 0  # this benchmark starts from the preprocessed image
    already_there = sum(est.host[k] for k in ("framework", "input", "image", "weights"))
    return {
        **args,
        "base": base,
        "measured_run": peak - base,
        "measured_peak": peak,
        "predicted_run": est.host_peak - already_there,
        "terms": est.host,
        "profiled_activations": profiled,
        "predicted_activations": est.host["activations"],
        "seconds": seconds,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--rows", help="comma-separated row indices into ROWS (default: all)")
    parser.add_argument("--row", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.row:
        print(json.dumps(run_row(json.loads(args.row))))
        return
    if args.rows:
        rows = [ROWS[int(i)] for i in args.rows.split(",")]
    else:
        rows = [ROWS[i] for i in QUICK] if args.quick else ROWS
    print(f"machine: {platform.node()} {platform.machine()}, {os.cpu_count()} CPUs, torch threads 2")
    print(f"date: {datetime.now(timezone.utc).isoformat(timespec='minutes')}")
    head = (
        f"{'network':<20}{'roi':>12}{'b':>3}{'volume':>14}{'slab':>6}"
        f"{'pred run':>10}{'meas run':>10}{'ratio':>7}{'pred peak':>11}{'meas peak':>11}{'ratio':>7}{'s':>6}"
        f"{'pred act':>10}{'prof act':>10}{'ratio':>7}"
    )
    print(head)
    print("-" * len(head))
    worst = worst_act = 0.0
    for network, roi, batch, volume, slab in rows:
        spec = json.dumps({"network": network, "roi": roi, "batch": batch, "volume": volume, "slab": slab})
        res = subprocess.run([sys.executable, __file__, "--row", spec], capture_output=True, text=True, check=False)
        if res.returncode:
            print(f"{network}: failed\n{res.stderr[-2000:]}")
            continue
        r = json.loads(res.stdout.strip().splitlines()[-1])
        ratio_run = r["predicted_run"] / r["measured_run"]
        pred_peak = r["base"] + r["predicted_run"]
        ratio_peak = pred_peak / r["measured_peak"]
        ratio_act = r["predicted_activations"] / r["profiled_activations"]
        worst = max(worst, abs(ratio_run - 1))
        worst_act = max(worst_act, abs(ratio_act - 1))
        mib = 1 << 20
        print(
            f"{network:<20}{'x'.join(map(str, roi)):>12}{batch:>3}{'x'.join(map(str, volume)):>14}{slab:>6}"
            f"{r['predicted_run'] / mib:>9.0f}M{r['measured_run'] / mib:>9.0f}M{ratio_run:>7.2f}"
            f"{pred_peak / mib:>10.0f}M{r['measured_peak'] / mib:>10.0f}M{ratio_peak:>7.2f}{r['seconds']:>6.1f}"
            f"{r['predicted_activations'] / mib:>9.0f}M{r['profiled_activations'] / mib:>9.0f}M{ratio_act:>7.2f}"
        )
    print(f"largest run-peak error: {worst * 100:.1f}% (target 15%)")
    print(f"largest activation error vs the torch profiler: {worst_act * 100:.1f}%")


if __name__ == "__main__":
    main()
