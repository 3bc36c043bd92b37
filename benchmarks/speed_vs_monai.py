"""File to file: the MONAI spleen-bundle recipe vs ``medseg infer``, same scan, weights and windows.

MONAI side (the spleen bundle's inference.json, written out as code): LoadImaged,
EnsureChannelFirstd, Orientationd(RAS), Spacingd(bilinear), ScaleIntensityRanged(clip),
sliding_window_inference (gaussian), Activationsd(softmax), Invertd (probabilities back to the
source grid), AsDiscreted(argmax), SaveImaged. medseg side: ``infer_file`` (read, exact
reorientation, resampling, streaming windows, slab-wise inversion of logits, argmax, atomic
write). Both run in this process, alternating, with the same weights (medseg folds the batch
norms of its copy into the convolutions; MONAI runs the network as built); each side's peak
RSS is VmHWM after a reset (``/proc/self/clear_refs``). Labels are compared on the source grid.

    python benchmarks/speed_vs_monai.py                 # phantom + real CT (about 5 minutes)
    python benchmarks/speed_vs_monai.py --repeats 1
    python benchmarks/speed_vs_monai.py --only-clinical   # a bundle's own pipeline vs medseg, 458x379x224
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # tests.reference: the reference pipelines

from _procstat import proc_status as _status  # noqa: E402  (benchmarks run as scripts from this folder)


def _reset_peak() -> None:
    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")


def monai_bundle(path: Path, out_dir: Path, net, spec) -> Path:
    import torch
    from monai.inferers import sliding_window_inference
    from monai.transforms import (
        Activationsd,
        AsDiscreted,
        Compose,
        EnsureChannelFirstd,
        EnsureTyped,
        Invertd,
        LoadImaged,
        Orientationd,
        SaveImaged,
        ScaleIntensityRanged,
        Spacingd,
    )

    pp, inf = spec.preprocessing, spec.inference
    it = pp.intensity
    pre = Compose(
        [
            LoadImaged(keys="image"),
            EnsureChannelFirstd(keys="image"),
            Orientationd(keys="image", axcodes=pp.orientation),
            Spacingd(keys="image", pixdim=list(pp.spacing), mode="bilinear"),
            ScaleIntensityRanged(
                keys="image", a_min=it.a_min, a_max=it.a_max, b_min=it.b_min, b_max=it.b_max, clip=it.clip
            ),
            EnsureTyped(keys="image"),
        ]
    )
    data = pre({"image": str(path)})
    with torch.no_grad():  # the bundle's evaluator runs under no_grad
        data["pred"] = sliding_window_inference(
            data["image"][None],
            roi_size=tuple(inf.roi_size),
            sw_batch_size=inf.sw_batch_size,
            predictor=net,
            overlap=inf.overlap,
            mode=inf.blend,
        )[0]
    post = Compose(
        [
            Activationsd(keys="pred", softmax=True),
            Invertd(keys="pred", transform=pre, orig_keys="image", nearest_interp=False, to_tensor=True),
            AsDiscreted(keys="pred", argmax=True),
            SaveImaged(
                keys="pred",
                output_dir=str(out_dir),
                output_postfix="seg",
                resample=False,
                separate_folder=False,
                output_dtype=np.uint8,
                print_log=False,
            ),
        ]
    )
    post(data)
    return next(out_dir.glob("*_seg.nii.gz"))


def dice_all(a: np.ndarray, b: np.ndarray, labels) -> float:
    """Dice over all foreground labels together (voxels where both agree on the same label)."""
    fg_a, fg_b = a > 0, b > 0
    inter = np.sum((a == b) & fg_a)
    denom = fg_a.sum() + fg_b.sum()
    return float(2 * inter / denom) if denom else 1.0


def _load_side(side: str, spec):
    """What a side loads once (not timed): medseg's Segmenter, or MONAI's network; for a bundle
    folder (``spec`` a Path), the bundle's own pipeline instantiated by MONAI's ConfigParser."""
    from medseg.inference.pipeline import Segmenter
    from medseg.models.checkpoints import load_network
    from tests.reference.bundle_pipeline import BundleReference

    if side == "medseg":
        return Segmenter(str(spec) if isinstance(spec, Path) else spec, "cpu", tune_allocator=True)
    return BundleReference(spec) if isinstance(spec, Path) else load_network(spec, "cpu")[0]


def _run_side(side: str, scan: Path, spec, out_dir: Path, loaded=None) -> tuple[float, int, np.ndarray]:
    """One file-to-file run; returns (seconds, peak RSS growth in bytes, labels)."""
    import nibabel as nib
    import torch

    from medseg.inference.pipeline import infer_file

    torch.set_num_threads(2)
    if loaded is None:  # a fresh process: load what this side needs (not timed, as in-process)
        loaded = _load_side(side, spec)
    out_dir.mkdir(parents=True, exist_ok=True)
    base = _status("VmRSS")
    _reset_peak()
    t = time.perf_counter()
    if side == "monai" and isinstance(spec, Path):  # the bundle's own pipeline, labels written as SaveImaged would
        labels = loaded(scan)
        out = out_dir / "scan_seg.nii.gz"
        source = nib.load(str(scan))
        nib.save(nib.Nifti1Image(labels.astype(np.uint8), source.affine, source.header), str(out))
    elif side == "monai":
        out = monai_bundle(scan, out_dir, loaded, spec)
    else:
        out = infer_file(scan, out_dir / "scan_seg.nii.gz", model=loaded).labels_path
    seconds = time.perf_counter() - t
    peak = _status("VmHWM") - base
    return seconds, peak, np.asarray(nib.load(str(out)).dataobj).astype(np.int16)


def run_case(name: str, scan: Path, spec, repeats: int, isolated: bool = False) -> dict:
    """Alternate the two sides ``repeats`` times each: in this process (shared allocator state, the
    issue's set-up) or, with ``isolated``, each run in a fresh process (what two separate commands get)."""
    import concurrent.futures as cf
    import multiprocessing as mp

    loaded = {}
    if not isolated:
        loaded = {side: _load_side(side, spec) for side in ("medseg", "monai")}
    times = {"monai": [], "medseg": []}
    peaks = {"monai": 0, "medseg": 0}
    outs = {}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(repeats):
            for side in ("monai", "medseg") if r % 2 == 0 else ("medseg", "monai"):
                out_dir = Path(tmp) / f"{side}{r}"
                if isolated:
                    with cf.ProcessPoolExecutor(1, mp_context=mp.get_context("spawn")) as pool:
                        seconds, peak, labels = pool.submit(_run_side, side, scan, spec, out_dir).result()
                else:
                    seconds, peak, labels = _run_side(side, scan, spec, out_dir, loaded[side])
                times[side].append(seconds)
                peaks[side] = max(peaks[side], peak)
                outs[side] = labels
    a, b = outs["medseg"], outs["monai"]
    if a.shape != b.shape:  # MONAI keeps a trailing channel axis squeezed differently on some inputs
        b = b.reshape(a.shape)
    labels = sorted((set(np.unique(a)) | set(np.unique(b))) - {0})
    per_label = [2 * np.sum((a == k) & (b == k)) / max(np.sum(a == k) + np.sum(b == k), 1) for k in labels]
    return {
        "name": name,
        "shape": a.shape,
        "worst_label_dice": float(min(per_label)) if per_label else 1.0,
        "monai_s": min(times["monai"]),
        "medseg_s": min(times["medseg"]),
        "monai_peak": peaks["monai"],
        "medseg_peak": peaks["medseg"],
        "dice": dice_all(a, b, None),
        "agree": float(np.mean(a == b)),
    }


def spleen_like_spec(weights: Path | None = None, **over):
    """The spleen bundle's network, windows and recipe; random weights unless given."""
    from medseg.models.spec import spec_from_dict

    d = {
        "name": "spleen-recipe",
        "network": {
            "class": "UNet",
            "out_channels": 2,
            "kwargs": {
                "channels": [16, 32, 64, 128, 256],
                "strides": [2, 2, 2, 2],
                "num_res_units": 2,
                "norm": "batch",
            },
        },
        "labels": {0: {"name": "background"}, 1: {"name": "spleen"}},
        "preprocessing": {
            "orientation": "RAS",
            "spacing": [1.5, 1.5, 2.0],
            "intensity": {"kind": "ct_window", "a_min": -57, "a_max": 164, "b_min": 0.0, "b_max": 1.0, "clip": True},
        },
        "inference": {"roi_size": [96, 96, 96], "overlap": 0.5, "sw_batch_size": 4, "blend": "gaussian"},
        "weights": {"path": str(weights)},
    }
    d.update(over)
    return spec_from_dict(d)


def main() -> None:
    import torch

    from medseg.models.networks import build_network
    from medseg.models.registry import resolve_spec

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument(
        "--isolated",
        action="store_true",
        help="run every file-to-file run in a fresh process (glibc allocator state not shared between the sides)",
    )
    parser.add_argument(
        "--clinical",
        action="store_true",
        help="also a MONAI bundle's own pipeline vs medseg on a real CT at a clinical grid (458x379x224)",
    )
    parser.add_argument("--only-clinical", action="store_true", help="only the clinical-grid bundle cases")
    args = parser.parse_args()
    args.clinical = args.clinical or args.only_clinical
    torch.set_num_threads(2)
    print(f"machine: {platform.node()} {platform.machine()}, {os.cpu_count()} CPUs; torch threads 2")
    print(f"date: {datetime.now(timezone.utc).isoformat(timespec='minutes')}")
    print("mode: " + ("each run in a fresh process" if args.isolated else "both sides in this process, alternating"))
    cases = []
    # 1. the shipped phantom CT with the trained phantom model (real weights, meaningful labels)
    cases.append(
        ("phantom_ct + phantom-unet3d", ROOT / "sample_data" / "phantom_ct.nii.gz", resolve_spec("phantom-unet3d"))
    )
    with tempfile.TemporaryDirectory() as tmp:
        torch.manual_seed(0)
        w = Path(tmp) / "spleen.pt"
        torch.save(build_network(spleen_like_spec(w)).state_dict(), w)
        # 2. the same phantom with the spleen bundle's network and recipe (random weights, fixed seed)
        cases.append(("phantom_ct + spleen recipe", ROOT / "sample_data" / "phantom_ct.nii.gz", spleen_like_spec(w)))
        # 3. real CT: dcmqi's GE CT (512x512x3), converted to NIfTI for both sides
        real = ROOT.parent / "shared" / "data" / "dicom" / "dcmqi" / "data" / "segmentations" / "ct-3slice"
        if real.is_dir():
            from medseg.io import read_volume, write_nifti

            nii = Path(tmp) / "real_ct.nii.gz"
            write_nifti(read_volume(real), nii)
            cases.append(("real CT 512x512x3 + spleen recipe", nii, spleen_like_spec(w)))
            # the trained phantom model on the same real CT: non-trivial labels (body, lungs, ...)
            cases.append(("real CT 512x512x3 + phantom-unet3d", nii, resolve_spec("phantom-unet3d")))
        if args.clinical:
            # 4. the bundle's own pipeline (its config run by MONAI's ConfigParser) against `--model BUNDLE`:
            # the trained phantom U-Net written as a MONAI bundle, spleen-style (softmax -> Invertd ->
            # argmax) and whole-body-style (argmax -> Invertd nearest) post-processing, on the real CT
            # resampled to a clinical grid (458 x 379 x 224 at 0.8 x 0.8 x 1.5 mm)
            from _clinical_ct import clinical_ct

            from tests.reference.bundle_pipeline import write_bundle_from_spec

            ct = clinical_ct(Path(tmp) / "clinical.nii.gz", (0.8, 0.8, 1.5), (458, 379, 224))
            for post in ("probabilities", "labels"):
                bundle = write_bundle_from_spec(resolve_spec("phantom-unet3d"), Path(tmp) / f"bundle_{post}", post)
                cases.append((f"clinical CT + bundle ({post})", ct, bundle))
        if args.only_clinical:
            cases = [c for c in cases if c[0].startswith("clinical")]
        head = (
            f"{'case':<36}{'shape':>14}{'MONAI s':>9}{'medseg s':>9}{'speedup':>8}"
            f"{'MONAI RSS':>11}{'medseg RSS':>11}{'RSS ratio':>10}{'Dice':>8}{'agree':>8}{'worst':>8}"
        )
        print(head)
        print("-" * len(head))
        for name, scan, spec in cases:
            r = run_case(name, scan, spec, args.repeats, args.isolated)
            mib = 1 << 20
            print(
                f"{name:<36}{'x'.join(map(str, r['shape'])):>14}{r['monai_s']:>9.1f}{r['medseg_s']:>9.1f}"
                f"{r['monai_s'] / r['medseg_s']:>7.2f}x{r['monai_peak'] / mib:>10.0f}M{r['medseg_peak'] / mib:>10.0f}M"
                f"{r['monai_peak'] / max(r['medseg_peak'], 1):>9.2f}x{r['dice']:>8.4f}{r['agree']:>8.4f}"
                f"{r['worst_label_dice']:>8.4f}"
            )


if __name__ == "__main__":
    main()
