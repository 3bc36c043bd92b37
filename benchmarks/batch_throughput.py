"""Cohort throughput: `medseg batch` vs a shell loop of `medseg infer` vs an in-process loop.

Each contender runs as its own process from a cold start (interpreter, imports, model load), on
the same phantom cohort, into a fresh output folder; with ``--repeats R`` the contenders take
turns R times and the median is reported. Wall time is measured around the whole process. Prints
cases/hour and the ratios against both baselines (of the medians, and the median of each round's
ratio: the machine's speed drifts between rounds).

It also measures what overlap can at best buy on this machine: the in-process loop once more with
one torch thread is the cohort's total single-core work W (its start-up S, imports and model load,
printed by the loop itself, is serial); no schedule of that work on C cores finishes before
S + (W - S) / C, so the best ratio any batch executor can reach against the in-process loop is
``loop / (S + (W - S) / C)`` (before the batch's own extra work: ledger, hashes, statistics).

The default cohort has a clinical CT's voxel size (0.8 x 0.8 x 2.5 mm: about 500 x 350 x 120
voxels, 22 MB of gzip each), so reading, inversion to the source grid and writing weigh what they
weigh on real scans. ``--random-spacing`` draws ``medseg phantom``'s coarse grids instead (1.8-3 mm
in-plane, 2.5-5 mm slices, about 180 x 135 x 60 voxels): there the network is nearly all of a
case's work and the fixed start-up (imports, model) a fifth of a 20-case run.

    python benchmarks/batch_throughput.py --cases 20
    python benchmarks/batch_throughput.py --cases 40 --random-spacing --no-shell --repeats 3
    python benchmarks/batch_throughput.py --cases 20 --workers auto 1 2 --repeats 3 --no-shell
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

IN_PROCESS_LOOP = r"""
import time
t0 = time.perf_counter()
import sys
from pathlib import Path
from medseg.inference.outputs import output_stem
from medseg.inference.pipeline import Segmenter, infer_file
cohort, out, model, device = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3] or None, sys.argv[4]
segmenter = Segmenter(model, device, tune_allocator=True)  # as `medseg infer` runs it
print(f"startup {time.perf_counter() - t0:.3f}")
for scan in sorted(p for p in cohort.glob("*.nii.gz") if not p.name.endswith("_gt.nii.gz")):
    infer_file(scan, out / f"{output_stem(scan)}_seg.nii.gz", model=segmenter)
"""

SHELL, LOOP, LOOP_1T = "shell loop of medseg infer", "in-process sequential loop", "in-process loop, 1 torch thread"


def timed(cmd: list[str], label: str, env: dict | None = None) -> tuple[float, str]:
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        sys.exit(f"{label} failed (exit {proc.returncode}):\n{proc.stderr[-2000:]}")
    return seconds, proc.stdout


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cases", type=int, default=20, help="phantom scans in the cohort (default 20)")
    ap.add_argument("--seed", type=int, default=5000, help="seed of the first phantom")
    ap.add_argument("--model", default="", help="model name or spec (default: medseg's default model)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--workers", nargs="+", default=["auto"], help="medseg batch --workers value(s) (default auto)")
    ap.add_argument(
        "--spacing", nargs=3, type=float, default=[0.8, 0.8, 2.5], help="phantom voxel size in mm (default 0.8 0.8 2.5)"
    )
    ap.add_argument("--random-spacing", action="store_true", help="medseg phantom's random coarse grids instead")
    ap.add_argument("--repeats", type=int, default=1, help="rounds of all contenders; the median is reported")
    ap.add_argument("--no-shell", action="store_true", help="leave out the (slow) shell loop")
    ap.add_argument("--no-bound", action="store_true", help="leave out the one-thread loop (the bound)")
    ap.add_argument("--workdir", type=Path, default=None, help="keep the cohort and outputs here")
    args = ap.parse_args()
    if args.random_spacing:
        args.spacing = None

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

    def shell_loop() -> float:
        out = fresh("out_shell")
        loop = " ".join(
            [
                "for f in " + " ".join(f"'{s}'" for s in scans) + "; do",
                " ".join(medseg) + ' infer "$f" -o "' + str(out) + '/$(basename "$f" .nii.gz)_seg.nii.gz"',
                " ".join(model) + f" --device {args.device} -q || exit 1; done",
            ]
        )
        return timed(["bash", "-c", loop], "shell loop")[0]

    startups: list[float] = []

    def in_process(threads: int | None) -> float:
        out = fresh("out_inprocess")
        env = None
        if threads:
            env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
        cmd = [sys.executable, "-c", IN_PROCESS_LOOP, str(cohort), str(out), args.model, args.device]
        seconds, stdout = timed(cmd, "in-process loop", env)
        startups.extend(float(line.split()[1]) for line in stdout.splitlines() if line.startswith("startup "))
        return seconds

    def batch(workers: str) -> float:
        out = fresh("out_batch")
        cmd = medseg + ["batch", str(cohort), "-o", str(out), *model, "--device", args.device, "-q"]
        return timed(cmd + ["--workers", workers], "medseg batch")[0]

    contenders: dict[str, object] = {}
    if not args.no_shell:
        contenders[SHELL] = shell_loop
    contenders[LOOP] = lambda: in_process(None)
    for w in args.workers:
        contenders[f"medseg batch --workers {w}"] = lambda w=w: batch(w)
    if not args.no_bound:
        contenders[LOOP_1T] = lambda: in_process(1)
    runs: dict[str, list[float]] = {name: [] for name in contenders}
    phases: dict[str, dict[str, list[float]]] = {name: {} for name in contenders}
    for _ in range(args.repeats):
        for name, run in contenders.items():
            runs[name].append(run())
            for key, values in case_phases(work, name).items():
                phases[name].setdefault(key, []).extend(values)
    results = {name: statistics.median(v) for name, v in runs.items()}

    import torch

    cores = os.cpu_count() or 1
    print(
        f"cohort: {n} phantom scans (seed {args.seed}, spacing {args.spacing or 'random'}), "
        f"model {args.model or 'default'}, device {args.device}, median of {args.repeats} round(s)"
    )
    print(
        f"machine: {platform.machine()}, {cores} CPU(s), torch {torch.__version__} "
        f"({torch.get_num_threads()} threads), python {platform.python_version()}"
    )
    shell, loop = results.get(SHELL), results[LOOP]
    # the machine's speed drifts between rounds: a round's contenders ran minutes apart at most, so
    # the median of the per-round ratios is steadier than the ratio of the medians
    print(
        f"{'contender':<36} {'seconds':>8} {'runs':>24} {'cases/hour':>11} {'vs shell':>9} {'vs in-proc':>10} "
        f"{'paired':>7}"
    )
    for name, secs in results.items():
        each = "/".join(f"{s:.1f}" for s in runs[name])
        vs_shell = f"{shell / secs:8.2f}x" if shell else f"{'-':>9}"
        paired = statistics.median(a / b for a, b in zip(runs[LOOP], runs[name], strict=True))
        rate = 3600 * n / secs
        print(f"{name:<36} {secs:8.1f} {each:>24} {rate:11.0f} {vs_shell} {loop / secs:9.2f}x {paired:6.2f}x")
    if LOOP_1T in results and startups:
        work_1t, start = results[LOOP_1T], statistics.median(startups)
        bound = start + (work_1t - start) / cores
        paired = statistics.median(
            a / (start + (b - start) / cores) for a, b in zip(runs[LOOP], runs[LOOP_1T], strict=True)
        )
        print(
            f"bound: start-up S {start:.1f} s (median of the loops' own reports), one-thread work W "
            f"{work_1t:.1f} s -> no {cores}-core schedule beats S + (W - S)/{cores} = {bound:.1f} s, "
            f"i.e. {loop / bound:.2f}x the in-process loop ({paired:.2f}x paired per round)"
        )
    print("per case, mean seconds from the sidecars (each stage as timed inside its process):")
    print(f"{'contender':<36} " + " ".join(f"{k:>10}" for k in PHASES))
    for name, per in phases.items():
        if per:
            cells = (f"{statistics.mean(per[k]):10.3f}" if per.get(k) else f"{'-':>10}" for k in PHASES)
            print(f"{name:<36} " + " ".join(cells))
    if not args.workdir:
        shutil.rmtree(work, ignore_errors=True)


PHASES = ("read", "preprocess", "inference", "write")


def case_phases(work: Path, name: str) -> dict[str, list[float]]:
    """The stage timings every output sidecar of ``name``'s last run records: with one torch thread
    per worker, ``medseg batch``'s inference against the one-thread loop's is what two processes
    running together cost each other (memory bandwidth, shared cache)."""
    folder = {SHELL: "out_shell", LOOP: "out_inprocess", LOOP_1T: "out_inprocess"}.get(name, "out_batch")
    per: dict[str, list[float]] = {}
    for sidecar in sorted((work / folder).glob("*_seg.json")):
        timings = json.loads(sidecar.read_text()).get("timings_s", {})
        for key in PHASES:
            if key in timings:
                per.setdefault(key, []).append(float(timings[key]))
    return per


if __name__ == "__main__":
    main()
