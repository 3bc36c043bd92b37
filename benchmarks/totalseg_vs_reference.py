"""``medseg infer --model totalsegmentator:TASK`` against the ``TotalSegmentator`` command on the same weights.

Both run as fresh process trees, alternated, on the CPU, on the same NIfTI scan, with the same weights
home (``TOTALSEG_HOME_DIR``: by default a copy of the stand-ins in
``sample_data/models/totalseg-standins``; pass ``--home`` for real TotalSegmentator weights). Measured
per run: wall time and the peak of the *summed* RSS of the whole process tree (TotalSegmentator's
nnU-Net call starts preprocessing and export workers; polled every 50 ms with psutil). The label maps
are compared per label (Dice). medseg's sidecar says where its time went; TotalSegmentator's own
``--verbose`` timings are printed too (resampling, prediction, resampling back).

The scan is the shared real chest CT resampled to a clinical grid (``_clinical_ct``). With the
stand-ins the labels are not anatomy: the comparison is of time, memory and agreement.

    python benchmarks/totalseg_vs_reference.py [--task total-fast] [--repeats 2] [--shape 512 512 200]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import sys
import tempfile
from pathlib import Path

import nibabel as nib
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _clinical_ct import ROOT, clinical_ct  # noqa: E402
from nnunet_vs_reference import run_tree  # noqa: E402

STANDINS = ROOT / "sample_data" / "models" / "totalseg-standins"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--task", default="total-fast", help="total, total-fast or total-fastest (medseg's names)")
    ap.add_argument("--roi-subset", default="", help="e.g. liver,spleen")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--precision", choices=("fp32", "bf16"), default="fp32", help="medseg's CPU precision")
    ap.add_argument("--shape", type=int, nargs=3, default=(512, 512, 200))
    ap.add_argument("--spacing", type=float, nargs=3, default=(0.8, 0.8, 1.5))
    ap.add_argument("--home", type=Path, default=None, help="a TOTALSEG_HOME_DIR (default: the stand-ins)")
    args = ap.parse_args()
    task = args.task.split("-")[0]
    mode = args.task.split("-")[1] if "-" in args.task else ""
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores; task {args.task}, roi {args.roi_subset or '-'}")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        home = tmp / "home"
        shutil.copytree(args.home or STANDINS, home, ignore=shutil.ignore_patterns("RECIPE.md"))
        config = {"totalseg_id": "medseg-benchmark", "send_usage_stats": False, "prediction_counter": 0}
        (home / "config.json").write_text(json.dumps(config))
        os.environ["TOTALSEG_HOME_DIR"] = str(home)
        scan = clinical_ct(tmp / "scan.nii.gz", tuple(args.spacing), tuple(args.shape))
        ref_out = tmp / "ref.nii.gz"
        ref_cmd = ["TotalSegmentator", "-i", str(scan), "-o", str(ref_out), "--ml", "--task", task, "--device", "cpu",
                   "--verbose"]  # fmt: skip
        if mode:
            ref_cmd.append(f"--{mode}")
        ours = tmp / "medseg_seg.nii.gz"
        med_cmd = [sys.executable, "-m", "medseg.cli", "infer", str(scan), "-o", str(ours), "--model",
                   f"totalsegmentator:{args.task}", "--device", "cpu", "-q"]  # fmt: skip
        if args.roi_subset:
            ref_cmd += ["--roi_subset", *args.roi_subset.split(",")]
            med_cmd += ["--roi-subset", args.roi_subset]
        med_cmd += ["--precision", args.precision]
        runs: dict[str, list[tuple[float, int]]] = {"TotalSegmentator": [], "medseg": []}
        ref_tail = ""
        for r in range(args.repeats):
            for name, cmd in (("TotalSegmentator", ref_cmd), ("medseg", med_cmd)):
                wall, peak, tail = run_tree(cmd)
                if name == "TotalSegmentator":
                    ref_tail = tail
                runs[name].append((wall, peak))
                print(f"  {name:16s} run {r}: {wall:7.1f} s, peak tree RSS {peak / 2**30:5.2f} GiB")
        side = json.loads(ours.with_name("medseg_seg.json").read_text())
        timings = {k: round(v, 1) for k, v in side["timings_s"].items()}
        a = np.asarray(nib.load(ref_out).dataobj)
        b = np.asarray(nib.load(ours).dataobj)
        best = {k: (min(w for w, _ in v), min(p for _, p in v)) for k, v in runs.items()}
        ts, ms = best["TotalSegmentator"], best["medseg"]
        print(f"grid {'x'.join(map(str, args.shape))} at {'x'.join(map(str, args.spacing))} mm")
        print(
            f"best of {args.repeats}: TotalSegmentator {ts[0]:.1f} s / {ts[1] / 2**30:.2f} GiB, "
            f"medseg {ms[0]:.1f} s / {ms[1] / 2**30:.2f} GiB -> speed-up x{ts[0] / ms[0]:.2f}, "
            f"peak RAM medseg/TotalSegmentator {ms[1] / ts[1]:.2f}"
        )
        print(f"medseg timings (s): {timings}")
        steps = re.findall(r"(Resampled|Predicted|Saved|cropping|generated)[^\n]*?(\d+\.\d+)s", ref_tail)
        print(f"TotalSegmentator's own timings (last run, tail): {steps}")
        print(f"voxels equal: {np.mean(a == b):.6f}")
        worst = 1.0
        for k in sorted(set(np.unique(a).tolist()) | set(np.unique(b).tolist()) - {0}):
            x, y = a == k, b == k
            d = 2 * int((x & y).sum()) / max(1, int(x.sum() + y.sum()))
            worst = min(worst, d)
        n = len(set(np.unique(a).tolist()) - {0})
        print(f"labels: {n} in TotalSegmentator's, worst per-label Dice {worst:.5f}")


if __name__ == "__main__":
    main()
