"""Whole-process time and peak RAM of ``medseg infer --model ct-anatomy`` at three CT sizes.

Each size is the same real chest CT over the same field of view (315 x 266 x 340 mm), resampled
(``_clinical_ct``) to three voxel sizes; the finest is the issue's 0.7 x 0.7 x 1.0 mm CT of
450 x 380 x 340 voxels. Same anatomy at every size, so the growth of the cost with the voxel count
shows alone. Every run is a fresh ``medseg infer`` process (read, modality check, plan, segment,
write gz labels and sidecar); its wall time and peak RSS (``ru_maxrss`` of the child, from ``wait4``)
are printed, with the voxel rate of the whole process and of the segmentation step. Targets at the
largest size: <= 30 s and <= 3 GiB on 2 cores.

    python benchmarks/ct_anatomy_speed.py [--repeats 2]
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
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _clinical_ct import clinical_ct  # noqa: E402

SIZES = [(225, 190, 170), (320, 270, 240), (450, 380, 340)]
FOV_MM = (315.0, 266.0, 340.0)  # 450 x 380 x 340 voxels of 0.7 x 0.7 x 1.0 mm


def run_child(cmd: list[str]) -> tuple[float, int]:
    """Wall seconds and peak RSS bytes of one child process (its own rusage, from ``wait4``)."""
    t = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    output = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{output}")
    return wall, usage.ru_maxrss * 1024


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=1)
    args = ap.parse_args()
    medseg = [sys.executable, "-m", "medseg.cli"]
    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"python {platform.python_version()}"
    )
    with tempfile.TemporaryDirectory() as tmp:
        for shape in SIZES:
            spacing = tuple(f / n for f, n in zip(FOV_MM, shape))
            scan = clinical_ct(Path(tmp) / f"ct_{'x'.join(map(str, shape))}.nii.gz", spacing, shape)
            for r in range(args.repeats):
                out = Path(tmp) / f"out_{r}_seg.nii.gz"
                wall, peak = run_child([*medseg, "infer", str(scan), "--model", "ct-anatomy", "-o", str(out), "-q"])
                side = json.loads(out.with_name(out.name.replace(".nii.gz", ".json")).read_text())
                voxels = shape[0] * shape[1] * shape[2]
                t = side["timings_s"]
                print(
                    f"{'x'.join(map(str, shape)):>12} ({voxels / 1e6:5.1f} Mvox, "
                    f"{'x'.join(f'{x:.2f}' for x in spacing)} mm)  wall {wall:6.1f} s  "
                    f"peak RSS {peak / 2**30:5.2f} GiB  {voxels / wall / 1e6:5.2f} Mvox/s  "
                    f"[read {t['read']:.1f} s, segment {t['inference']:.1f} s "
                    f"({voxels / t['inference'] / 1e6:.0f} Mvox/s), "
                    f"write {t['write']:.1f} s]"
                )


if __name__ == "__main__":
    main()
