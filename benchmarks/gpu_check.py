"""GPU check: the memory planner's predicted GPU peak against what CUDA measures, medseg's engine against plain
MONAI, and the out-of-memory fallback, on a real CUDA device. One command, a few minutes on one GPU:

    python benchmarks/gpu_check.py            # every row
    python benchmarks/gpu_check.py --quick    # smaller volumes (a smoke run)

Rows (MONAI ModelSpecs with random weights: memory and time do not depend on the weights):
  * ``spleen-unet`` (the MONAI spleen bundle's UNet, 2 classes) on a 512x512x200 CT at 0.8x0.8x1.5 mm,
    model grid 1.5 mm, planned for 12 GB and for 24 GB;
  * ``wholebody-segresnet`` (the whole-body bundle's SegResNet, 105 classes) on a 512x512x300 CT at
    0.8x0.8x1.5 mm, model grid 1.5 mm (273x273x300: MONAI's full output buffer alone is 9.4 GB), planned for
    12 GB and 24 GB;
  * the out-of-memory fallback: the 24 GB plan of the whole-body row run with the process capped at 12 GB
    (``torch.cuda.set_per_process_memory_fraction``): it must finish, re-planned from the slab it reached.

Per row: the plan (roi, window batch, where image and aggregation live, slab depth), the predicted GPU peak
(``gpu.peak``; ``context`` is the CUDA context, which PyTorch's allocator does not count), what CUDA measured
during medseg's run (``torch.cuda.max_memory_allocated`` / ``max_memory_reserved``, the weights included), and
medseg's time (preprocessing, windows, labels on the source grid) against plain MONAI's
``sliding_window_inference`` with the same roi, batch and overlap (full output buffer on the GPU, then argmax
on the model grid: no return to the source grid), in the same process. The volumes are noise in HU with a body
and air around it: memory and time depend on shapes only.

nnU-Net folders and TotalSegmentator tasks are not planned for a GPU by medseg's planner yet (they run
nnU-Net's own tiling inside the family); their rows are missing here until they are.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
import traceback
import warnings
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

GiB = 1 << 30
NETWORKS = {
    "spleen-unet": (
        "UNet",
        2,
        {"channels": [16, 32, 64, 128, 256], "strides": [2, 2, 2, 2], "num_res_units": 2, "norm": "batch"},
        [96, 96, 96],
        4,
    ),
    "wholebody-segresnet": (
        "SegResNet",
        105,
        {"init_filters": 32, "blocks_down": [1, 2, 2, 4], "blocks_up": [1, 1, 1]},
        [96, 96, 96],
        1,
    ),
}


def write_spec(folder: Path, name: str) -> Path:
    """A ModelSpec YAML with random weights (the real loading path: state dict, sha256)."""
    import torch
    import yaml

    from medseg.models.checkpoints import sha256_of
    from medseg.models.networks import build_network
    from medseg.models.spec import spec_from_dict

    cls, classes, kwargs, roi, batch = NETWORKS[name]
    data = {
        "name": name,
        "network": {"class": cls, "spatial_dims": 3, "in_channels": 1, "out_channels": classes, "kwargs": kwargs},
        "labels": {i: {"name": f"class{i}"} for i in range(classes)},
        "preprocessing": {
            "orientation": "RAS",
            "spacing": [1.5, 1.5, 1.5],
            "intensity": {"kind": "ct_window", "a_min": -1000, "a_max": 1000},
        },
        "inference": {"roi_size": roi, "overlap": 0.5, "blend": "gaussian", "sw_batch_size": batch},
        "weights": {"path": f"{name}.pt"},
    }
    torch.manual_seed(0)
    net = build_network(spec_from_dict(data))
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(net.state_dict(), folder / f"{name}.pt")
    data["weights"]["sha256"] = sha256_of(folder / f"{name}.pt")
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def ct_volume(shape, spacing=(0.8, 0.8, 1.5), seed=0):
    """Noise in HU: a body (an ellipse of soft tissue) with air around it."""
    from medseg.volume import Volume

    rng = np.random.default_rng(seed)
    x, y = np.meshgrid(np.linspace(-1, 1, shape[0]), np.linspace(-1, 1, shape[1]), indexing="ij")
    body = (x / 0.85) ** 2 + (y / 0.6) ** 2 < 1
    array = np.where(body[..., None], 40, -1000).astype(np.int16) + rng.integers(-30, 30, shape, dtype=np.int16)
    return Volume(array, np.diag([*spacing, 1.0]))


def _sync():
    import torch

    torch.cuda.synchronize()


def run_medseg(spec_path: Path, volume, budget: int, cap: int | None = None) -> dict:
    """medseg's plan for ``budget`` and its run on the GPU; CUDA's measured peaks during the run."""
    import torch

    from medseg.inference.engine import MemoryFallbackWarning
    from medseg.inference.pipeline import Segmenter

    seg = Segmenter(spec_path, "cuda", gpu_memory=budget)
    result = seg.plan_case(volume, strict=False)
    plan = result.plan
    total = torch.cuda.get_device_properties(0).total_memory
    if cap is not None:
        torch.cuda.set_per_process_memory_fraction(cap / total)
    torch.cuda.empty_cache()
    _sync()
    torch.cuda.reset_peak_memory_stats()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", MemoryFallbackWarning)
        t = time.perf_counter()
        out = seg.segment(volume, plan)
        _sync()
        seconds = time.perf_counter() - t
    fallbacks = [str(w.message) for w in caught if issubclass(w.category, MemoryFallbackWarning)]
    if cap is not None:
        torch.cuda.set_per_process_memory_fraction(1.0)
    steps = {k: round(float(v), 3) for k, v in out.timings.items()}
    if cap is None:  # where the time goes: the same windows with a finaliser that drops the planes
        steps["windows_only"] = windows_only(seg.model, volume, plan)
    row = {
        "fits": result.fits,
        "roi": list(plan.roi_size),
        "batch": plan.sw_batch_size,
        "image_on": plan.image_device,
        "aggregation_on": plan.aggregation_device,
        "slab_depth": plan.slab_depth,
        "predicted_gpu_peak": plan.predicted_bytes.get("gpu.peak", 0),
        "predicted_gpu_context": plan.predicted_bytes.get("gpu.context", 0),
        "predicted_gpu": {k[4:]: v for k, v in plan.predicted_bytes.items() if k.startswith("gpu.")},
        "measured_allocated": torch.cuda.max_memory_allocated(),
        "measured_reserved": torch.cuda.max_memory_reserved(),
        "seconds": seconds,
        "steps": steps,
        "labels_shape": list(out.labels.shape),
        "fallbacks": fallbacks,
        "notes": list(plan.notes),
    }
    del seg, out
    torch.cuda.empty_cache()
    return row


def windows_only(model, volume, plan) -> float:
    """Seconds of the plan's windows and blending alone: a finaliser that receives the planes and drops them."""
    import torch

    from medseg.inference.engine import stream_windows
    from medseg.inference.invert import Finaliser

    class Drop(Finaliser):
        def push(self, planes, start):
            pass

        def finish(self):
            return None

    image, _ = model.prepare(volume)
    _sync()
    t = time.perf_counter()
    with torch.inference_mode():
        stream_windows(model.forward, image, plan, Drop(), model.spatial_dims)
    _sync()
    return round(time.perf_counter() - t, 3)


def run_monai(spec_path: Path, volume, roi, batch, overlap) -> dict:
    """Plain MONAI: sliding_window_inference over the same preprocessed image, output on the GPU, argmax."""
    import torch
    from monai.inferers import sliding_window_inference

    from medseg.models.registry import open_model

    model = open_model(spec_path, "cuda").load()
    image, _ = model.prepare(volume)
    torch.cuda.empty_cache()
    _sync()
    torch.cuda.reset_peak_memory_stats()
    t = time.perf_counter()
    with torch.inference_mode():
        x = image.to("cuda")[None]
        logits = sliding_window_inference(x, tuple(roi), batch, model.network, overlap, mode="gaussian")
        labels = logits.argmax(1).to(torch.uint8).cpu()
    _sync()
    seconds = time.perf_counter() - t
    row = {
        "seconds": seconds,
        "measured_allocated": torch.cuda.max_memory_allocated(),
        "measured_reserved": torch.cuda.max_memory_reserved(),
        "labels_shape": list(labels.shape[1:]),
    }
    del model, image, x, logits, labels
    torch.cuda.empty_cache()
    return row


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller volumes (a smoke run)")
    parser.add_argument("--json", type=Path, default=None, help="also write the rows as JSON here")
    parser.add_argument("--wholebody-slices", type=int, default=300, help="slices of the whole-body CT [300]")
    parser.add_argument("--budgets", default="12,24", help="GPU budgets to plan for, GB [12,24]")
    args = parser.parse_args()
    import torch

    if not torch.cuda.is_available():
        print("no CUDA device: nothing to check (run this where a GPU is)")
        return 2
    gpu = torch.cuda.get_device_properties(0)
    print(
        f"{gpu.name}, {gpu.total_memory / GiB:.1f} GiB; torch {torch.__version__}; python {platform.python_version()}"
    )
    shapes = {"spleen-unet": (512, 512, 200), "wholebody-segresnet": (512, 512, args.wholebody_slices)}
    if args.quick:
        shapes = {"spleen-unet": (256, 256, 100), "wholebody-segresnet": (256, 256, 150)}
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, shape in shapes.items():
            spec = write_spec(Path(tmp), name)
            volume = ct_volume(shape)
            cases = [(int(b), None) for b in args.budgets.split(",")]
            if name == "wholebody-segresnet":  # first: the 24 GB plan on a GPU capped at 12 GB (the OOM fallback)
                cases.insert(0, (24, 12))
            for budget, cap in cases:
                label = f"{name} {'x'.join(map(str, shape))} plan {budget} GB" + (
                    f", GPU capped at {cap} GB" if cap else ""
                )
                try:
                    row = {"row": label, **run_medseg(spec, volume, budget * GiB, cap * GiB if cap else None)}
                    if cap is None:
                        base = run_monai(spec, volume, row["roi"], row["batch"], 0.5)
                        row["monai"] = base
                        row["speedup_vs_monai"] = base["seconds"] / row["seconds"]
                except Exception as err:  # noqa: BLE001 - a row's failure is that row's
                    traceback.print_exc()
                    row = {"row": label, "error": f"{type(err).__name__}: {err}"[:300]}
                rows.append(row)
                _print(row)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    return 0 if all("error" not in r for r in rows) else 1


def _print(row: dict) -> None:
    g = lambda b: f"{b / GiB:.2f}"  # noqa: E731
    print(f"\n{row['row']}")
    if "error" in row:
        print(f"  ERROR {row['error']}")
        return
    print(
        f"  plan: roi {row['roi']} batch {row['batch']} image on {row['image_on']}, aggregation on "
        f"{row['aggregation_on']}, slab {row['slab_depth'] or 'full buffer'}; fits {row['fits']}"
    )
    pred, ctx = row["predicted_gpu_peak"], row["predicted_gpu_context"]
    print(
        f"  GPU GiB: predicted {g(pred)} (allocator part {g(pred - ctx)}, context {g(ctx)}); measured allocated "
        f"{g(row['measured_allocated'])}, reserved {g(row['measured_reserved'])}; reserved/predicted allocator part "
        f"{row['measured_reserved'] / max(1, pred - ctx):.2f}"
    )
    fallbacks = f"; {len(row['fallbacks'])} OOM fallback(s)" if row["fallbacks"] else ""
    print(f"  medseg {row['seconds']:.2f} s{fallbacks}; steps {row['steps']}")
    for message in row["fallbacks"][:3]:
        print(f"    fallback: {message[:200]}")
    if "monai" in row:
        m = row["monai"]
        print(
            f"  plain MONAI {m['seconds']:.2f} s, allocated {g(m['measured_allocated'])} reserved "
            f"{g(m['measured_reserved'])} GiB; medseg {row['speedup_vs_monai']:.2f}x its speed"
        )


if __name__ == "__main__":
    sys.exit(main())
