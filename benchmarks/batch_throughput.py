"""Cohort throughput: `medseg batch` vs a shell loop of `medseg infer` vs an in-process loop.

Each contender runs as its own process from a cold start (interpreter, imports, model load), on
the same phantom cohort, into a fresh output folder, one after another; wall time is measured
around the whole process. Prints cases/hour and the ratios against both baselines.

    python benchmarks/batch_throughput.py --cases 20
    python benchmarks/batch_throughput.py --cases 20 --model phantom-unet2d --workers 1
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

IN_PROCESS_LOOP = r"""
import sys
from pathlib import Path
from medseg.inference.pipeline import Segmenter, infer_file, output_stem
cohort, out, model, device = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3] or None, sys.argv[4]
segmenter = Segmenter(model, device)
for scan in sorted(p for p in cohort.glob("*.nii.gz") if not p.name.endswith("_gt.nii.gz")):
    infer_file(scan, out / f"{output_stem(scan)}_seg.nii.gz", model=segmenter)
"""


def timed(cmd: list[str], label: str) -> float:
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        sys.exit(f"{label} failed (exit {proc.returncode}):\n{proc.stderr[-2000:]}")
    return seconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cases", type=int, default=20, help="phantom scans in the cohort (default 20)")
    ap.add_argument("--seed", type=int, default=5000, help="seed of the first phantom")
    ap.add_argument("--model", default="", help="model name or spec (default: medseg's default model)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--workers", default="auto", help="medseg batch --workers (default auto)")
    ap.add_argument("--spacing", nargs=3, type=float, default=None, help="phantom voxel size (default: random)")
    ap.add_argument("--workdir", type=Path, default=None, help="keep the cohort and outputs here")
    args = ap.parse_args()

    work = args.workdir or Path(tempfile.mkdtemp(prefix="medseg-bench-"))
    cohort = work / "cohort"
    medseg = [sys.executable, "-m", "medseg.cli"]
    if not cohort.is_dir():
        cmd = medseg + ["phantom", str(cohort), "-n", str(args.cases), "--seed", str(args.seed), "--layout", "flat"]
        if args.spacing:
            cmd += ["--spacing", *map(str, args.spacing)]
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    scans = sorted(p for p in cohort.glob("*.nii.gz") if not p.name.endswith("_gt.nii.gz"))[: args.cases]
    n = len(scans)
    model = ["--model", args.model] if args.model else []

    def fresh(name: str) -> Path:
        out = work / name
        shutil.rmtree(out, ignore_errors=True)
        out.mkdir(parents=True)
        return out

    results: dict[str, float] = {}
    out = fresh("out_shell")
    loop = " ".join(
        [
            "for f in " + " ".join(f"'{s}'" for s in scans) + "; do",
            " ".join(medseg) + ' infer "$f" -o "' + str(out) + '/$(basename "$f" .nii.gz)_seg.nii.gz"',
            " ".join(model) + f" --device {args.device} -q || exit 1; done",
        ]
    )
    results["shell loop of medseg infer"] = timed(["bash", "-c", loop], "shell loop")
    out = fresh("out_inprocess")
    results["in-process sequential loop"] = timed(
        [sys.executable, "-c", IN_PROCESS_LOOP, str(cohort), str(out), args.model, args.device], "in-process loop"
    )
    out = fresh("out_batch")
    batch_cmd = medseg + ["batch", str(cohort), "-o", str(out), *model, "--device", args.device, "-q"]
    batch_cmd += ["--workers", str(args.workers)]
    results[f"medseg batch (--workers {args.workers})"] = timed(batch_cmd, "medseg batch")

    import torch

    shell, inproc = results["shell loop of medseg infer"], results["in-process sequential loop"]
    print(
        f"cohort: {n} phantom scans (seed {args.seed}{', spacing ' + str(args.spacing) if args.spacing else ''}), "
        f"model {args.model or 'default'}, device {args.device}"
    )
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} CPU(s), torch {torch.__version__} "
        f"({torch.get_num_threads()} threads), python {platform.python_version()}"
    )
    print(f"{'contender':<34} {'seconds':>8} {'cases/hour':>11} {'vs shell':>9} {'vs in-proc':>10}")
    for name, secs in results.items():
        print(f"{name:<34} {secs:8.1f} {3600 * n / secs:11.0f} {shell / secs:8.2f}x {inproc / secs:9.2f}x")
    if not args.workdir:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
