"""``--crop-to-body`` with a U-Net: time and peak RAM saved on a clinical CT grid, and agreement.

Three cases, each segmented by ``medseg infer`` with and without ``--crop-to-body``, every run a fresh
process (alternated; wall time and peak RSS from ``wait4``):

1. ``chest-3mm``: a real chest CT resampled to 0.8 x 0.8 x 1.5 mm on a 512 x 512 in-plane grid (a
   410 mm field of view, air outside the scan: ``_clinical_ct``), model ``phantom-unet3d`` (its 3 mm grid);
2. ``chest-1.5mm``: the same scan and weights, the network run on a 1.5 mm grid (a copy of the spec with
   ``spacing: [1.5, 1.5, 1.5]``, as fine-grid CT models such as TotalSegmentator's 1.5 mm one run), where
   the network, not reading and writing, dominates the time;
3. ``phantom``: a ``medseg phantom`` torso (0.8 x 0.8 x 1.5 mm) with ground truth, so both runs are also
   scored against it (the phantom network knows phantoms; on the real CT its labels are not anatomy, so
   there the agreement measures only how much its output depends on tile positions).

Printed per case: best-of-N time and peak RSS, their ratios (full / crop), the crop's share of the grid,
voxels equal and Dice per label between the two runs (and against the ground truth for the phantom).

    python benchmarks/crop_to_body.py [--repeats 2] [--cases chest-3mm chest-1.5mm phantom]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

import nibabel as nib
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _clinical_ct import ROOT, clinical_ct  # noqa: E402
from ct_anatomy_speed import run_child  # noqa: E402

CASES = ("chest-3mm", "chest-1.5mm", "phantom")


def fine_spec(tmp: Path, spacing: float) -> Path:
    """A copy of phantom-unet3d's spec that runs the same weights on a ``spacing`` mm grid."""
    import yaml

    spec = yaml.safe_load((ROOT / "configs" / "models" / "phantom-unet3d.yaml").read_text())
    spec["name"] = f"phantom-unet3d-{spacing:g}mm"
    spec["preprocessing"]["spacing"] = [spacing] * 3
    spec["weights"]["path"] = str((ROOT / "configs" / "models" / spec["weights"]["path"]).resolve())
    out = tmp / f"{spec['name']}.yaml"
    out.write_text(yaml.safe_dump(spec))
    return out


def dice_table(a: np.ndarray, b: np.ndarray, names: dict[int, str], what: str) -> None:
    for k, name in names.items():
        x, y = a == k, b == k
        total = int(x.sum() + y.sum())
        if total:
            print(f"    {name:12s} Dice {2 * int((x & y).sum()) / total:.4f}  {what}")


def run_case(case: str, tmp: Path, repeats: int) -> None:
    medseg = [sys.executable, "-m", "medseg.cli", "infer"]
    truth = None
    if case == "phantom":
        subprocess.run(
            [sys.executable, "-m", "medseg.cli", "phantom", str(tmp / "ph"), "-n", "1", "--seed", "7", "--spacing",
             "0.8", "0.8", "1.5", "--orientation", "LPS", "--no-oblique", "--layout", "flat"],
            check=True, capture_output=True,
        )  # fmt: skip
        scan, truth = tmp / "ph" / "phantom_00007.nii.gz", tmp / "ph" / "phantom_00007_gt.nii.gz"
        model = "phantom-unet3d"
    else:
        scan = tmp / "clinical.nii.gz"
        if not scan.exists():
            clinical_ct(scan, (0.8, 0.8, 1.5), (512, 512, 230))
        model = "phantom-unet3d" if case == "chest-3mm" else str(fine_spec(tmp, 1.5))
    runs: dict[str, list[tuple[float, int]]] = {"full": [], "crop": []}
    outs = {}
    for r in range(repeats):
        for kind in ("full", "crop"):
            out = tmp / f"{case}_{kind}_{r}_seg.nii.gz"
            extra = ["--crop-to-body"] if kind == "crop" else []
            wall, peak = run_child([*medseg, str(scan), "--model", model, "-o", str(out), "-q", *extra])
            runs[kind].append((wall, peak))
            outs[kind] = out
    side = json.loads(outs["crop"].with_name(outs["crop"].name.replace(".nii.gz", ".json")).read_text())
    a = np.asarray(nib.load(str(outs["full"])).dataobj)
    b = np.asarray(nib.load(str(outs["crop"])).dataobj)
    names = {int(k): v["name"] for k, v in side["labels"].items() if k != "0"}
    best = {k: (min(w for w, _ in v), min(p for _, p in v)) for k, v in runs.items()}
    box = side["crop_to_body"]
    grid = "x".join(map(str, a.shape))
    print(f"{case}: grid {grid}, model {Path(model).stem}, crop box {box['start']}..{box['stop']}", end="")
    print(f" ({box['fraction']:.0%} of the voxels)")
    print(
        f"  best of {repeats}: full {best['full'][0]:.1f} s / {best['full'][1] / 2**30:.2f} GiB, "
        f"crop {best['crop'][0]:.1f} s / {best['crop'][1] / 2**30:.2f} GiB -> "
        f"time x{best['full'][0] / best['crop'][0]:.2f}, "
        f"peak RAM x{best['full'][1] / best['crop'][1]:.2f} (full / crop)"
    )
    print(f"  voxels equal (full vs crop): {np.mean(a == b):.5f}")
    dice_table(a, b, names, "full vs crop")
    if truth is not None:
        gt = np.asarray(nib.load(str(truth)).dataobj)
        dice_table(a, gt, names, "full vs ground truth")
        dice_table(b, gt, names, "crop vs ground truth")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--cases", nargs="+", choices=CASES, default=list(CASES))
    args = ap.parse_args()
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores")
    with tempfile.TemporaryDirectory() as tmp:
        for case in args.cases:
            run_case(case, Path(tmp), args.repeats)


if __name__ == "__main__":
    main()
