"""Accuracy and speed of weights-free click-to-segment (``medseg prompt``) against reference masks.

For every target (a connected part of a reference structure, e.g. the left and the right lung):
one positive click at its centre (the voxel farthest from its boundary, distance in mm), segment;
then up to two negative clicks, each at the voxel of the largest leak (connected part of the
mask outside the reference, counted when it holds >= 2% of the structure's volume and reaches >= 5 mm
beyond it) farthest from the reference, re-segmenting after each. Dice is
reported after 1 click and after the negative clicks. Targets: phantoms (every structure, several
seeds, LPS/RAS/oblique/anisotropic grids) and the real CTs in ../shared/data/ct with lung masks.
A timing run segments a lung on a real CT resampled to 512x512x300.

    python benchmarks/prompt_accuracy.py                 # all, prints tables
    python benchmarks/prompt_accuracy.py --quick         # 2 phantoms, real CTs, no 512^2 timing
    python benchmarks/prompt_accuracy.py --preview docs/prompt_preview.png
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi

from medseg.prompt import Prompts, PromptSegmenter
from medseg.volume import Volume

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "ct"
#: phantoms: (seed, axcodes, spacing, oblique)
PHANTOMS = [
    (1, "LPS", (1.5, 1.5, 3.0), False),
    (2, "RAS", (2.0, 2.0, 2.0), False),
    (3, None, None, None),
    (4, "LPS", (1.2, 1.2, 5.0), True),
    (5, "PSR", (2.5, 2.5, 2.5), True),
    (6, None, None, True),
]
MAX_NEGATIVE = 2
MIN_LEAK_MM = 5.0
#: a leak a user sees and clicks: at least this fraction of the structure's volume
MIN_LEAK_FRACTION = 0.02


def dice(a: np.ndarray, b: np.ndarray) -> float:
    s = int(a.sum()) + int(b.sum())
    return 1.0 if s == 0 else 2.0 * int((a & b).sum()) / s


def centre_voxel(mask: np.ndarray, spacing) -> tuple[int, int, int]:
    d = ndi.distance_transform_edt(np.pad(mask, 1), sampling=spacing)[1:-1, 1:-1, 1:-1]
    return tuple(int(v) for v in np.unravel_index(np.argmax(d), mask.shape))


def leak_click(pred: np.ndarray, ref: np.ndarray, spacing) -> tuple[int, int, int] | None:
    """The voxel of the largest connected leak farthest from the reference (None without a leak)."""
    leak = pred & ~ref
    if not leak.any():
        return None
    lab, n = ndi.label(leak)
    sizes = np.bincount(lab.ravel())[1:]
    biggest = lab == (int(np.argmax(sizes)) + 1)
    far = ndi.distance_transform_edt(~ref, sampling=spacing)
    far[~biggest] = -1
    # a boundary error is not a leak: a user clicks on a part that reaches >= 5 mm beyond the structure
    # and holds >= 2% of its volume
    if biggest.sum() < MIN_LEAK_FRACTION * ref.sum() or far.max() < MIN_LEAK_MM:
        return None
    return tuple(int(v) for v in np.unravel_index(np.argmax(far), ref.shape))


def evaluate(volume: Volume, ref: np.ndarray) -> dict:
    """Click at ``ref``'s centre, then up to two negative clicks on leaks; Dice and seconds per prompt."""
    spacing = volume.spacing
    seg = PromptSegmenter(volume)
    pos = [centre_voxel(ref, spacing)]
    neg: list[tuple[int, int, int]] = []
    t = time.perf_counter()
    pred = seg.segment(Prompts.of(pos, neg))
    times = [time.perf_counter() - t]
    first = dice(pred, ref)
    for _ in range(MAX_NEGATIVE):
        click = leak_click(pred, ref, spacing)
        if click is None or click in pos:
            break
        neg.append(click)
        t = time.perf_counter()
        pred = seg.segment(Prompts.of(pos, neg))
        times.append(time.perf_counter() - t)
    return {"dice_1": first, "dice": dice(pred, ref), "negatives": len(neg), "seconds": times}


def phantom_targets(max_parts: int = 2):
    from medseg.phantom import LABELS, make_phantom

    for seed, axcodes, spacing, oblique in PHANTOMS:
        image, labels = make_phantom(seed, axcodes=axcodes, spacing=spacing, oblique=oblique)
        geometry = image.meta["phantom_geometry"]
        grid = f"{geometry['axcodes']} {'x'.join(f'{s:.1f}' for s in geometry['spacing'])}"
        grid += f" obl {geometry['oblique_deg']:.0f}°" if geometry["oblique_deg"] else ""
        for index, (name, _) in LABELS.items():
            structure = labels.array == index
            lab, n = ndi.label(structure)
            if n == 0:
                continue
            sizes = np.bincount(lab.ravel())[1:]
            for part in np.argsort(sizes)[::-1][:max_parts]:
                if sizes[part] < 0.2 * sizes.max():
                    break
                yield name, f"phantom {seed} ({grid})", image, lab == part + 1


def _nearest_on(volume: Volume, mask: Volume) -> np.ndarray:
    """``mask`` resampled onto ``volume``'s grid by nearest neighbour (world coordinates)."""
    to_mask = np.linalg.solve(mask.affine, volume.affine)
    idx = np.indices(volume.shape, dtype=np.float64).reshape(3, -1)
    ijk = to_mask[:3, :3] @ idx + to_mask[:3, 3:4]
    return ndi.map_coordinates(mask.array, ijk, order=0, mode="constant").reshape(volume.shape) > 0


def real_targets():
    from medseg.io import read_volume

    cip = DATA / "chestimagingplatform"
    for ct_name, lm_name in (("ct-64.nrrd", "lm-64.nrrd"), ("ct-64-transformed.nrrd", "lm-64-transformed.nrrd")):
        image = read_volume(cip / ct_name)
        region = read_volume(cip / lm_name).array % 256  # CIP: value = 256 * type + region
        case = f"CIP {ct_name} ({''.join(image.axcodes)}{' oblique' if 'transformed' in ct_name else ''})"
        yield "lungs", f"{case} left lung", image, (region >= 9) & (region <= 11)
        yield "lungs", f"{case} right lung", image, (region >= 12) & (region <= 14)
    whole = read_volume(cip / "wholeLung-64.nrrd").array > 0
    image = read_volume(cip / "ct-64.nrrd")
    yield "lungs", "CIP ct-64.nrrd wholeLung-64 (one click, both lungs)", image, whole
    image = read_volume(DATA / "elastix" / "3DCT_lung_baseline_small.mha")
    mask = read_volume(DATA / "elastix" / "3DCT_lung_baseline_mask.mha")
    yield "lungs", "elastix 3DCT_lung_baseline_small right lung", image, _nearest_on(image, mask)


def timing_512(repeats: int = 3) -> dict:
    """A lung click on CIP ct-64 resampled (linear) to 512x512x300."""
    from medseg.io import read_volume

    image = read_volume(DATA / "chestimagingplatform" / "ct-64.nrrd")
    lm = read_volume(DATA / "chestimagingplatform" / "lm-64.nrrd").array % 256
    target = (512, 512, 300)
    factors = np.array(target) / np.array(image.shape)
    big = ndi.zoom(image.array.astype(np.float32), factors, order=1).astype(np.int16)
    affine = image.affine.copy()
    affine[:3, :3] = affine[:3, :3] / factors
    volume = Volume(big, affine, {"modality": "CT"})
    ref = ndi.zoom(((lm >= 12) & (lm <= 14)).astype(np.uint8), factors, order=0) > 0
    click = centre_voxel(ref[::4, ::4, ::4], np.array(volume.spacing) * 4)
    click = tuple(int(c * 4) for c in click)
    seg = PromptSegmenter(volume)
    out = {}
    for label, prompts in (
        ("first click (cold)", Prompts.of([click])),
        ("same click again (cached region)", Prompts.of([click])),
    ):
        t = time.perf_counter()
        mask = seg.segment(prompts)
        out[label] = time.perf_counter() - t
    runs = []
    for _ in range(repeats):
        fresh = PromptSegmenter(volume)
        t = time.perf_counter()
        mask = fresh.segment(Prompts.of([click]))
        runs.append(time.perf_counter() - t)
    out["first click, median of fresh runs"] = statistics.median(runs)
    again = []
    for _ in range(repeats):
        t = time.perf_counter()
        seg.segment(Prompts.of([click]))
        again.append(time.perf_counter() - t)
    out["re-segmentation on the cached region, median"] = statistics.median(again)
    out["dice right lung"] = dice(mask, ref)
    return out


def write_prompt_preview(path: Path) -> Path:
    """CIP ct-64 with both lungs segmented from one click each (the centre of each reference lung)."""
    from medseg.io import read_volume
    from medseg.io.preview import write_preview

    cip = DATA / "chestimagingplatform"
    image = read_volume(cip / "ct-64.nrrd")
    region = read_volume(cip / "lm-64.nrrd").array % 256
    seg = PromptSegmenter(image)
    labels = np.zeros(image.shape, np.uint8)
    for value, (lo, hi) in ((1, (12, 14)), (2, (9, 11))):
        click = centre_voxel((region >= lo) & (region <= hi), image.spacing)
        labels[seg.segment(Prompts.of([click]))] = value
    colors = {1: (80, 170, 230), 2: (230, 150, 60)}
    return write_preview(path, image, labels, colors, {1: "right lung (1 click)", 2: "left lung (1 click)"})


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--no-timing", action="store_true")
    parser.add_argument("--preview", type=Path, help="Only write a PNG of one-click lungs on CIP ct-64 here.")
    parser.add_argument("--timing-only", action="store_true", help="Only the 512x512x300 timing.")
    parser.add_argument("--repeats", type=int, default=3, help="Timing repeats (default 3).")
    args = parser.parse_args(argv)
    if args.preview:
        print(f"wrote {write_prompt_preview(args.preview)}")
        return 0
    if args.timing_only:
        for k, v in timing_512(args.repeats).items():
            print(f"  {k}: {v:.3f}{'' if k.startswith('dice') else ' s'}")
        return 0
    if args.quick:
        del PHANTOMS[2:]
    rows = []
    for name, case, image, ref in [*phantom_targets(), *real_targets()]:
        r = evaluate(image, ref)
        rows.append((name, case, r))
        secs = " ".join(f"{s:.2f}" for s in r["seconds"])
        print(f"{name:8s} {case:60s} dice1 {r['dice_1']:.3f} final {r['dice']:.3f} neg {r['negatives']} s {secs}")
        sys.stdout.flush()
    print("\nper structure (phantom parts / real CT): n, Dice after 1 click, after <=2 negatives (median, min)")
    for kind in ("phantom", "real"):
        names = sorted({n for n, c, _ in rows if c.startswith("phantom") == (kind == "phantom")})
        for name in names:
            rs = [r for n, c, r in rows if n == name and c.startswith("phantom") == (kind == "phantom")]
            d1 = [r["dice_1"] for r in rs]
            d = [r["dice"] for r in rs]
            s = [x for r in rs for x in r["seconds"]]
            print(
                f"{kind:8s} {name:8s} n={len(rs):2d}  1 click {statistics.median(d1):.3f} (min {min(d1):.3f})  "
                f"final {statistics.median(d):.3f} (min {min(d):.3f})  s/prompt median {statistics.median(s):.2f} "
                f"max {max(s):.2f}"
            )
    if not (args.quick or args.no_timing):
        print("\n512x512x300 (CIP ct-64 resampled), right-lung click:")
        for k, v in timing_512(args.repeats).items():
            print(f"  {k}: {v:.3f}{'' if k.startswith('dice') else ' s'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
