"""``--crop-to-body`` with a U-Net: time and peak RAM saved on a clinical CT grid, and agreement.

A real chest CT resampled to 0.8 x 0.8 x 1.5 mm on a 512 x 512 in-plane grid (a 410 mm field of
view, air outside the scan: ``_clinical_ct``) is segmented by ``medseg infer --model
phantom-unet3d`` with and without ``--crop-to-body``, each run a fresh process, alternated. Printed:
wall time and peak RSS (``wait4``) of each, their ratios, the crop's share of the grid, and the
agreement of the two label maps (voxels equal; Dice per label).

    python benchmarks/crop_to_body.py [--repeats 2] [--model phantom-unet3d]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
from pathlib import Path

import nibabel as nib
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _clinical_ct import clinical_ct  # noqa: E402
from ct_anatomy_speed import run_child  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--model", default="phantom-unet3d")
    ap.add_argument("--shape", type=int, nargs=3, default=(512, 512, 230))
    args = ap.parse_args()
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores")
    medseg = [sys.executable, "-m", "medseg.cli", "infer"]
    with tempfile.TemporaryDirectory() as tmp:
        scan = clinical_ct(Path(tmp) / "clinical.nii.gz", (0.8, 0.8, 1.5), tuple(args.shape))
        runs = {"full": [], "crop": []}
        outs = {}
        for r in range(args.repeats):
            for kind in ("full", "crop"):
                out = Path(tmp) / f"{kind}_{r}_seg.nii.gz"
                extra = ["--crop-to-body"] if kind == "crop" else []
                wall, peak = run_child([*medseg, str(scan), "--model", args.model, "-o", str(out), "-q", *extra])
                runs[kind].append((wall, peak))
                outs[kind] = out
                print(f"  {kind:4s} run {r}: {wall:6.1f} s, peak RSS {peak / 2**30:5.2f} GiB")
        side = json.loads(outs["crop"].with_name(outs["crop"].name.replace(".nii.gz", ".json")).read_text())
        a = np.asarray(nib.load(str(outs["full"])).dataobj)
        b = np.asarray(nib.load(str(outs["crop"])).dataobj)
        names = {int(k): v["name"] for k, v in side["labels"].items() if k != "0"}
        best = {k: (min(w for w, _ in v), min(p for _, p in v)) for k, v in runs.items()}
        print(f"grid {'x'.join(map(str, args.shape))}, model {args.model}; crop box {side['crop_to_body']}")
        print(
            f"best of {args.repeats}: full {best['full'][0]:.1f} s / {best['full'][1] / 2**30:.2f} GiB, "
            f"crop {best['crop'][0]:.1f} s / {best['crop'][1] / 2**30:.2f} GiB -> "
            f"time x{best['full'][0] / best['crop'][0]:.2f}, "
            f"peak RAM x{best['full'][1] / best['crop'][1]:.2f} (full / crop)"
        )
        print(f"voxels equal: {np.mean(a == b):.5f}")
        for k, name in names.items():
            x, y = a == k, b == k
            total = int(x.sum() + y.sum())
            if total:
                print(
                    f"  {name:16s} Dice {2 * int((x & y).sum()) / total:.4f}  ({int(x.sum())} vs {int(y.sum())} voxels)"
                )


if __name__ == "__main__":
    main()
