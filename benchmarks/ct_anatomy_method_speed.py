"""Speed and peak memory of ``segment_ct`` at three sizes (the algorithm alone, no I/O).

The scans are the shared ``ct-64`` chest resampled (linear) to 0.7 x 0.7 x 1.0 mm-like grids of
~7 M, ~22 M and ~58 M voxels (the last is the 450 x 380 x 340 target of the issue), plus Gaussian
noise so thresholds see realistic texture. Peak extra host memory is measured with tracemalloc
(numpy and scipy allocate through it) and compared with ``peak_bytes``.

    python benchmarks/ct_anatomy_method_speed.py [--sizes 0.25,0.5,1.0]
"""

from __future__ import annotations

import argparse
import time
import tracemalloc
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi

ROOT = Path(__file__).resolve().parents[1]
CT64 = ROOT.parent / "shared" / "data" / "ct" / "chestimagingplatform" / "ct-64.nrrd"
TARGET = (450, 380, 340)


def synthetic_scan(scale: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """ct-64 resampled to ``scale`` x the 450 x 380 x 340 target (voxels ~ scale^1 of 58 M), int16."""
    from medseg.io.registry import read_volume

    vol = read_volume(CT64)
    src = np.asarray(vol.array).astype(np.float32)
    f = scale ** (1 / 3)
    shape = tuple(max(8, int(round(n * f))) for n in TARGET)
    zoom = [t / s for t, s in zip(shape, src.shape)]
    out = ndi.zoom(src, zoom, order=1, output=np.float32)
    rng = np.random.default_rng(seed)
    out += rng.normal(0, 15, size=out.shape).astype(np.float32)
    hu = np.clip(out, -1024, 3000).astype(np.int16)
    affine = vol.affine.copy()
    affine[:3, :3] = vol.affine[:3, :3] / np.array(zoom)[None, :]
    return hu, affine


def measure(hu: np.ndarray, affine: np.ndarray) -> tuple[float, int, dict]:
    from medseg.models.ct_anatomy.method import segment_ct

    tracemalloc.start()
    t0 = time.perf_counter()
    result = segment_ct(hu, affine)
    dt = time.perf_counter() - t0
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return dt, peak, result.timings


def main() -> None:
    from medseg.models.ct_anatomy.method import peak_bytes

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="0.125,0.4,1.0", help="fractions of the 58 M-voxel target")
    args = parser.parse_args()
    print(f"{'shape':>18} {'Mvox':>6} {'seconds':>8} {'s/Mvox':>7} {'peak MiB':>9} {'predicted':>9} {'pred/meas':>9}")
    for scale in (float(s) for s in args.sizes.split(",")):
        hu, affine = synthetic_scan(scale)
        dt, peak, timings = measure(hu, affine)
        pred = peak_bytes(hu.shape)
        mvox = hu.size / 1e6
        print(
            f"{str(hu.shape):>18} {mvox:6.1f} {dt:8.2f} {dt / mvox:7.3f} {peak / 2**20:9.0f} "
            f"{pred / 2**20:9.0f} {pred / peak:9.2f}   {timings}"
        )


if __name__ == "__main__":
    main()
