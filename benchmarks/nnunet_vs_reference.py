"""``medseg infer`` against ``nnUNetv2_predict_from_modelfolder`` on the same nnU-Net v2 folder and scan.

Both run as fresh process trees, alternated, on the CPU, with the same folds, TTA setting and step
size. Measured per run: wall time and the peak of the *summed* RSS of the whole process tree (nnU-Net
starts preprocessing and export worker processes; they are polled every 50 ms with psutil, so a
shorter spike can be missed by both alike). The label maps are compared per label (Dice). medseg's
sidecar says where its time went (read, nnU-Net preprocessing, windows, export, write).

The scan is a real chest CT (``_clinical_ct``) resampled to a clinical grid, the model the shipped
``sample_data/models/nnunet-phantom`` (its labels on a real CT are not anatomy; the comparison is of
time, memory and agreement).

    python benchmarks/nnunet_vs_reference.py [--repeats 2] [--tta] [--shape 512 512 200] [--folds 0 1]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _clinical_ct import ROOT, clinical_ct  # noqa: E402

MODEL = (
    ROOT / "sample_data" / "models" / "nnunet-phantom" / "Dataset501_Phantom" / "nnUNetTrainer__nnUNetPlans__3d_fullres"
)


def run_tree(cmd: list[str]) -> tuple[float, int, str]:
    """Wall seconds, peak summed RSS of the process and all its descendants, and the output tail."""
    t = time.perf_counter()
    log = tempfile.TemporaryFile()  # not a pipe: a chatty child (progress bars) would block on a full pipe
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    root = psutil.Process(proc.pid)
    peak = 0
    while proc.poll() is None:
        total = 0
        try:
            procs = [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            break
        for p in procs:
            try:
                total += p.memory_info().rss
            except psutil.NoSuchProcess:
                pass
        peak = max(peak, total)
        time.sleep(0.05)
    log.seek(0)
    out = log.read().decode(errors="replace")
    log.close()
    wall = time.perf_counter() - t
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{out[-3000:]}")
    return wall, peak, out[-400:]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--tta", action="store_true", help="mirroring TTA on (both sides); default off")
    ap.add_argument("--shape", type=int, nargs=3, default=(512, 512, 200))
    ap.add_argument("--spacing", type=float, nargs=3, default=(0.8, 0.8, 1.5))
    ap.add_argument("--folds", nargs="+", default=["0", "1"])
    ap.add_argument("--model", type=Path, default=MODEL)
    ap.add_argument("--precision", choices=("fp32", "bf16"), default="fp32", help="medseg's CPU precision")
    args = ap.parse_args()
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores; medseg precision {args.precision}; "
          f"model {args.model.name}, folds {args.folds}, "
          f"TTA {'on' if args.tta else 'off'}")  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        src = tmp / "in"
        src.mkdir()
        scan = clinical_ct(src / "case_0000.nii.gz", tuple(args.spacing), tuple(args.shape))
        ref_cmd = ["nnUNetv2_predict_from_modelfolder", "-i", str(src), "-o", str(tmp / "ref"), "-m", str(args.model),
                   "-f", *args.folds, "-device", "cpu", "--disable_progress_bar"]  # fmt: skip
        if not args.tta:
            ref_cmd.append("--disable_tta")
        ours = tmp / "medseg_seg.nii.gz"
        med_cmd = [sys.executable, "-m", "medseg.cli", "infer", str(scan), "-o", str(ours), "--model", str(args.model),
                   "--folds", ",".join(args.folds), "--tta" if args.tta else "--no-tta", "--device", "cpu", "-q",
                   "--force-modality", "--precision", args.precision]  # fmt: skip
        runs: dict[str, list[tuple[float, int]]] = {"nnU-Net": [], "medseg": []}
        for r in range(args.repeats):
            for name, cmd in (("nnU-Net", ref_cmd), ("medseg", med_cmd)):
                if name == "nnU-Net" and (tmp / "ref").exists():
                    shutil.rmtree(tmp / "ref")
                wall, peak, _ = run_tree(cmd)
                runs[name].append((wall, peak))
                print(f"  {name:8s} run {r}: {wall:7.1f} s, peak tree RSS {peak / 2**30:5.2f} GiB")
        side = json.loads(ours.with_name("medseg_seg.json").read_text())
        timings = {k: round(v, 1) for k, v in side["timings_s"].items()}
        a = np.asarray(nib.load(tmp / "ref" / "case.nii.gz").dataobj)
        b = np.asarray(nib.load(ours).dataobj)
        best = {k: (min(w for w, _ in v), min(p for _, p in v)) for k, v in runs.items()}
        print(f"grid {'x'.join(map(str, args.shape))} at {'x'.join(map(str, args.spacing))} mm")
        print(
            f"best of {args.repeats}: nnU-Net {best['nnU-Net'][0]:.1f} s / {best['nnU-Net'][1] / 2**30:.2f} GiB, "
            f"medseg {best['medseg'][0]:.1f} s / {best['medseg'][1] / 2**30:.2f} GiB -> "
            f"speed-up x{best['nnU-Net'][0] / best['medseg'][0]:.2f}, "
            f"peak RAM medseg/nnU-Net {best['medseg'][1] / best['nnU-Net'][1]:.2f}"
        )
        print(f"medseg timings (s): {timings}")
        print(f"voxels equal: {np.mean(a == b):.6f}")
        for k in sorted(set(np.unique(a).tolist()) | set(np.unique(b).tolist()) - {0}):
            x, y = a == k, b == k
            print(f"  label {k}: Dice {2 * int((x & y).sum()) / max(1, int(x.sum() + y.sum())):.5f}")


if __name__ == "__main__":
    main()
