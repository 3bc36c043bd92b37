"""105 classes on a 512x512x800 scan: slab streaming vs MONAI's full buffer, peak host RAM.

A small network with 105 output channels (the aggregation dominates, as with the whole-body
bundle) runs through ``Segmenter`` (read volume -> preprocess -> plan -> stream -> labels on the
source grid) under ``--host-memory 6GB``; every run is a fresh process and its peak RSS (VmHWM)
is reported. MONAI's default (full ``classes x voxels`` buffer) is measured on thin scans (24 and 40
planes, same windows) to show how it grows with depth; at 800 planes it cannot run on this
machine, so that number is the estimator's (labelled). The GPU line is the planner's prediction
for the whole-body SegResNet under a 12 GB budget (no GPU here).

    python benchmarks/slab_memory.py            # about 6 minutes on 2 cores, <= 6 GB RAM
    python benchmarks/slab_memory.py --depth 200 # a shorter scan
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

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests.reference: the reference pipelines

GiB = 1 << 30


from _procstat import proc_status as _status  # noqa: E402  (benchmarks run as scripts from this folder)


def _spec_dict(weights: str | None = None) -> dict:
    d = {
        "name": "many-classes",
        "network": {
            "class": "UNet",
            "out_channels": 105,
            # 1x1x1 kernels: cheap on 2 CPU cores; the 105-channel aggregation is what is measured
            "kwargs": {"channels": [4, 8], "strides": [2], "num_res_units": 0, "kernel_size": 1, "up_kernel_size": 1},
        },
        "labels": {i: {"name": f"class{i}"} for i in range(105)},
        "preprocessing": {"spacing": [None, None, None]},
        "inference": {"roi_size": [96, 96, 96], "overlap": 0.25, "sw_batch_size": 1},
    }
    if weights:
        d["weights"] = {"path": weights}
    return d


def make_model(folder: Path) -> Path:
    import torch
    import yaml

    from medseg.models.networks import build_network
    from medseg.models.spec import spec_from_dict

    torch.manual_seed(0)
    net = build_network(spec_from_dict(_spec_dict()))
    torch.save(net.state_dict(), folder / "w.pt")
    path = folder / "many-classes.yaml"
    path.write_text(yaml.safe_dump(_spec_dict(str(folder / "w.pt"))))
    return path


def make_scan(folder: Path, depth: int) -> Path:
    import nibabel as nib
    import numpy as np

    rng = np.random.default_rng(0)
    data = np.empty((512, 512, depth), np.int16)
    for z in range(depth):  # a body-like ellipse of soft tissue with noise, air around it
        yy, xx = np.ogrid[:512, :512]
        body = ((xx - 256) / 220.0) ** 2 + ((yy - 256) / 160.0) ** 2 < 1
        data[..., z] = np.where(body, 40, -1000) + rng.normal(0, 30, (512, 512)).astype(np.int16)
    path = folder / f"scan_{depth}.nii.gz"
    nib.save(nib.Nifti1Image(data, np.diag([0.8, 0.8, 1.0, 1.0])), str(path))
    return path


def run_case(args: dict) -> dict:
    """In a fresh process: read, preprocess, plan, infer; report the process peak."""
    import torch

    from medseg.inference.estimate import Workload
    from medseg.inference.pipeline import Segmenter
    from medseg.inference.plan_report import describe
    from medseg.io import read_volume
    from tests.reference.monai_full_buffer import logits_to_source_labels, run_windows

    torch.set_num_threads(2)
    seg = Segmenter(args["model"], "cpu", host_memory=args.get("host_memory"), tune_allocator=True)
    volume = read_volume(args["scan"])
    t = time.perf_counter()
    if args["engine"] == "monai":
        plan = seg.plan_for(volume).replace(slab_depth=0, roi_size=tuple(args["roi"]), sw_batch_size=1)
        image, record = seg.model.prepare(volume)
        with torch.inference_mode():
            labels = logits_to_source_labels(run_windows(seg.model.network, image, plan), record)
        text = ""
    else:
        result = seg.plan_case(volume)
        plan = result.plan
        text = describe(result, Workload.of(volume, seg.model))
        labels = seg.segment(volume, plan).labels
    return {
        **args,
        "seconds": time.perf_counter() - t,
        "peak": _status("VmHWM"),
        "predicted_host": plan.predicted_bytes.get("host.peak"),
        "plan": plan.to_dict(),
        "plan_text": text,
        "labels_shape": list(labels.shape),
    }


def _sub(args: dict) -> dict:
    res = subprocess.run(
        [sys.executable, __file__, "--case", json.dumps(args)], capture_output=True, text=True, check=False
    )
    if res.returncode:
        raise SystemExit(f"case {args} failed:\n{res.stderr[-3000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def gpu_prediction(depth: int) -> str:
    import torch

    from medseg.inference.budget import GiB
    from medseg.inference.estimate import Workload
    from medseg.inference.plan_report import describe
    from medseg.inference.planner import plan_memory
    from medseg.inference.tracing import NetworkMemory
    from medseg.models.monai import MonaiModel
    from medseg.models.networks import build_network
    from medseg.models.spec import spec_from_dict

    spec = spec_from_dict(
        {
            "name": "wholebody-segresnet",
            "network": {
                "class": "SegResNet",
                "out_channels": 105,
                "kwargs": {"init_filters": 32, "blocks_down": [1, 2, 2, 4], "blocks_up": [1, 1, 1]},
            },
            "labels": {0: {"name": "background"}},
            "preprocessing": {"spacing": [1.5, 1.5, 1.5]},
            "inference": {"roi_size": [96, 96, 96], "overlap": 0.25, "sw_batch_size": 1, "precision": "fp16"},
        }
    )
    with torch.device("meta"):
        net = NetworkMemory(build_network(spec))
    shape = (512, 512, depth)
    work = Workload(shape, shape, shape, 1, 105, 3, 2, resampled=False)
    res = plan_memory(
        work, MonaiModel(spec).windows, net, "cuda", gpu_budget=12 * GiB, host_budget=6 * GiB, framework_host=600 << 20
    )
    return describe(res, work)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--depth", type=int, default=800)
    parser.add_argument("--case", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.case:
        print(json.dumps(run_case(json.loads(args.case))))
        return
    print(f"machine: {platform.node()} {platform.machine()}, {os.cpu_count()} CPUs; torch threads 2")
    print(f"date: {datetime.now(timezone.utc).isoformat(timespec='minutes')}")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        model = make_model(folder)
        print(f"{'engine':<8}{'scan':>14}{'classes':>8}{'plan':>34}{'pred host':>11}{'peak RSS':>10}{'s':>7}")
        scan = make_scan(folder, args.depth)
        big = _sub({"engine": "medseg", "model": str(model), "scan": str(scan), "host_memory": "6GB"})
        os.unlink(scan)
        roi = big["plan"]["roi_size"]  # MONAI's default on thin scans with the same windows
        rows = []
        for depth in (24, 40):
            scan = make_scan(folder, depth)
            for engine in ("monai", "medseg"):
                hm = "6GB" if engine == "medseg" else None
                rows.append(
                    _sub({"engine": engine, "model": str(model), "scan": str(scan), "host_memory": hm, "roi": roi})
                )
            os.unlink(scan)
        rows.append(big)
        for r in rows:
            p = r["plan"]
            desc = f"roi {'x'.join(map(str, p['roi_size']))} " + (
                f"slab {p['slab_depth']}" if p["slab_depth"] else "full buffer"
            )
            depth = Path(r["scan"]).stem.split("_")[1].split(".")[0]
            pred = f"{r['predicted_host'] / GiB:.2f}G" if r["engine"] == "medseg" else "-"
            print(
                f"{r['engine']:<8}{'512x512x' + depth:>14}{105:>8}{desc:>34}{pred:>11}"
                f"{r['peak'] / GiB:>9.2f}G{r['seconds']:>7.0f}"
            )
        m16, m32 = rows[0]["peak"], rows[2]["peak"]
        per_plane = (m32 - m16) / 16
        print(
            f"MONAI default grows {per_plane / (1 << 20):.0f} MiB per plane (measured 24 -> 40 planes); "
            f"at {args.depth} planes its output buffer alone is "
            f"{105 * 512 * 512 * args.depth * 4 / 1e9:.1f} GB (105 x 512 x 512 x {args.depth} float32, computed)"
        )
        print(
            f"medseg at {args.depth} planes: peak RSS {big['peak'] / GiB:.2f} GiB "
            f"({big['peak'] / 1e9:.2f} GB; target <= 6 GB), predicted {big['predicted_host'] / GiB:.2f} GiB"
        )
        print("\nplan used for the full scan (medseg plan output):\n" + big["plan_text"])
    print(f"\nGPU plan, whole-body SegResNet (105 classes) on 512x512x{args.depth}, --gpu-memory 12GB (predicted):")
    print(gpu_prediction(args.depth))


if __name__ == "__main__":
    main()
