"""``medseg evaluate PRED GT``: per-label Dice, IoU and HD95 for one case or a folder of cases."""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path

import numpy as np

from medseg.errors import InputError
from medseg.inference.outputs import SEG_SUFFIX, output_stem
from medseg.io import read_volume
from medseg.train.metrics import label_metrics


def _pairs(pred: Path, gt: Path) -> list[tuple[str, Path, Path]]:
    """File vs file, or folder vs folder matched by name (``X_seg.nii.gz`` matches ``X.nii.gz``)."""
    if pred.is_file() and gt.is_file():
        return [(gt.name.split(".")[0], pred, gt)]
    if pred.is_dir() and gt.is_dir():
        preds = {output_stem(p): p for p in pred.iterdir() if p.name.endswith((".nii", ".nii.gz"))}
        out = []
        for g in sorted(gt.iterdir()):
            if not g.name.endswith((".nii", ".nii.gz")):
                continue
            stem = output_stem(g)
            names = (stem, stem + SEG_SUFFIX, stem.removesuffix("_gt") + SEG_SUFFIX)
            key = next((k for k in names if k in preds), None)
            if key is None:
                raise InputError(f"no prediction for ground truth '{g.name}'", pred)
            out.append((stem, preds[key], g))
        if not out:
            raise InputError("no ground-truth NIfTI files found", gt)
        return out
    missing = pred if not pred.exists() else gt
    if not missing.exists():
        raise InputError("no such file or folder", missing)
    raise InputError("PRED and GT must both be files or both be folders", pred)


def evaluate(pred: str | Path, gt: str | Path, names: dict[int, str] | None = None) -> dict:
    """Compare label maps; returns ``{"cases": [...rows], "per_label": {...}, "mean_dice": x}``."""
    rows = []
    for case, p, g in _pairs(Path(pred), Path(gt)):
        pv, gv = read_volume(p), read_volume(g)
        if pv.shape != gv.shape:
            raise InputError(f"prediction shape {pv.shape} differs from ground truth {gv.shape} ({g.name})", p)
        if not np.allclose(pv.affine, gv.affine, atol=1e-3):
            raise InputError(f"prediction affine differs from ground truth ({g.name}); not on the same grid", p)
        pa, ga = np.asarray(pv.array).astype(np.int64), np.asarray(gv.array).astype(np.int64)
        labels = names or {int(i): f"label_{int(i)}" for i in np.union1d(np.unique(pa), np.unique(ga)) if i != 0}
        for row in label_metrics(pa, ga, labels, gv.spacing):
            rows.append({"case": case, **row})
    per_label: dict[str, dict[str, float]] = {}
    for name in dict.fromkeys(r["name"] for r in rows):
        sel = [r for r in rows if r["name"] == name]
        per_label[name] = {k: _nanmean([r[k] for r in sel]) for k in ("dice", "iou", "hd95_mm")}
    mean_dice = _nanmean([v["dice"] for v in per_label.values()])
    return {"cases": rows, "per_label": per_label, "mean_dice": mean_dice, "n_cases": len({r["case"] for r in rows})}


def _nanmean(values: list[float]) -> float:
    vals = [v for v in values if v is not None and not math.isnan(v)]
    return float(np.mean(vals)) if vals else float("nan")


def to_csv(report: dict) -> str:
    buf = io.StringIO()
    rows = report["cases"]
    writer = csv.DictWriter(buf, fieldnames=list(rows[0].keys()) if rows else ["case"], lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


def to_json(report: dict) -> str:
    return json.dumps(report, indent=2, default=float) + "\n"
