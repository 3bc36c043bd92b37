"""Accuracy of ``ct-anatomy`` on the shared real CTs: Dice where a reference exists, volumes elsewhere.

References (``../shared/data``, see its README section 13): CIP's lung label map of ``ct-64`` (left
regions 9-11, right 12-14) and its oblique copy, the crop ``crop_ct_2slices`` (slices 60-61 of its
label map: 10 left, 13 right, 512 main bronchi), the elastix right-lung mask (2x finer grid, resampled
nearest), the dicompyler RTSTRUCT ``BODY`` on its one slice, and lungmask R231's voxel counts on its
two test slices. CIP's own classical output on ``ct-64`` is scored too, as the baseline to beat.
Writes medseg's preview picture of each scan to ``docs/ct_anatomy/``.

    python benchmarks/ct_anatomy_accuracy.py [--no-png]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
CT = DATA / "ct"
OUT = ROOT / "docs" / "ct_anatomy"


def dice(a: np.ndarray, b: np.ndarray) -> float:
    s = int(a.sum()) + int(b.sum())
    return float("nan") if s == 0 else 2.0 * int((a & b).sum()) / s


def read(path: Path):
    from medseg.io.registry import read_volume

    vol = read_volume(path)
    return np.asarray(vol.array), vol.affine


def dicompyler():
    import pydicom
    import SimpleITK as sitk

    from medseg.io.rtstruct import dicom_slice_affine, roi_mask

    d = CT / "dicompyler_core"
    hu = sitk.GetArrayFromImage(sitk.ReadImage(str(d / "ct.0.dcm"))).transpose(2, 1, 0)
    affine = dicom_slice_affine(pydicom.dcmread(d / "ct.0.dcm"), thickness=3.0)
    return hu, affine, roi_mask(d / "rtss.dcm", "BODY", affine, hu.shape)


def elastix_reference():
    import SimpleITK as sitk

    ref_img = sitk.ReadImage(str(CT / "elastix" / "3DCT_lung_baseline_small.mha"))
    mask = sitk.ReadImage(str(CT / "elastix" / "3DCT_lung_baseline_mask.mha"))
    mask = sitk.Resample(mask, ref_img, sitk.Transform(), sitk.sitkNearestNeighbor, 0)
    return sitk.GetArrayFromImage(mask).transpose(2, 1, 0) > 0


def preview(name: str, hu: np.ndarray, affine: np.ndarray, labels: np.ndarray) -> None:
    """medseg's own ``--preview`` picture (axial, coronal, sagittal through the labels' centre)."""
    from medseg.io.preview import write_preview
    from medseg.models.ct_anatomy.model import CtAnatomyModel
    from medseg.volume import Volume

    model_labels = CtAnatomyModel().labels
    colors = {k: v.color for k, v in model_labels.items()}
    names = {k: v.name for k, v in model_labels.items()}
    OUT.mkdir(parents=True, exist_ok=True)
    write_preview(OUT / f"{name}.png", Volume(hu, np.asarray(affine, float)), labels, colors, names)


def main() -> None:
    from medseg.models.ct_anatomy import labels as L
    from medseg.models.ct_anatomy.method import segment_ct

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--no-png", action="store_true")
    args = parser.parse_args()
    cip = CT / "chestimagingplatform"
    lungs = [L.LUNG_LEFT, L.LUNG_RIGHT]

    cases = {
        "ct-64": read(cip / "ct-64.nrrd"),
        "ct-64-oblique20": read(cip / "ct-64-transformed.nrrd"),
        "crop_ct_2slices": read(cip / "crop_ct_2slices.nrrd"),
        "elastix_right_hemithorax": read(CT / "elastix" / "3DCT_lung_baseline_small.mha"),
        "lungmask_2slices": read(DATA / "dicom" / "lungmask_testdata"),
        "TestInput_chest": read(cip / "TestInput.nrrd"),
        "simple_dicom_abdomen": read(cip / "simple_dicom"),
        "STS_025_leg": read(CT / "ibsi_validation" / "STS_025" / "CT" / "image"),
        "rt_utils_water_phantom": read(CT / "rt_utils"),
    }
    hu_d, aff_d, body_ref = dicompyler()
    cases["dicompyler_neck_arms_up"] = (hu_d, aff_d)

    lm = read(cip / "lm-64.nrrd")[0] % 256
    cip_out = read(cip / "GeneratePartialLungLabelMap_Test_ct-64.nrrd")[0] % 256
    crop_lm = read(cip / "crop_ct_partialLungLabelMap.nrrd")[0][:, :, 60:62]
    crop_lm_full = crop_lm
    elastix_ref = elastix_reference()

    print(f"{'scan':<26} {'structure':<18} {'Dice':>6}  reference")
    rows = []
    for name, (hu, affine) in cases.items():
        t0 = time.perf_counter()
        res = segment_ct(hu, affine)
        dt = time.perf_counter() - t0
        lab = res.labels
        if not args.no_png:
            preview(name, hu, affine, lab)
        scores = []
        if name.startswith("ct-64"):
            left, right = (lm >= 9) & (lm <= 11), (lm >= 12) & (lm <= 14)
            scores += [
                ("lung_left", dice(lab == L.LUNG_LEFT, left), "CIP lm-64"),
                ("lung_right", dice(lab == L.LUNG_RIGHT, right), "CIP lm-64"),
                ("lungs", dice(np.isin(lab, lungs), left | right), "wholeLung-64"),
            ]
            if name == "ct-64":
                cl, cr = (cip_out >= 9) & (cip_out <= 11), (cip_out >= 12) & (cip_out <= 14)
                scores += [
                    ("CIP baseline L", dice(cl, left), "CIP classical vs lm-64"),
                    ("CIP baseline R", dice(cr, right), "CIP classical vs lm-64"),
                ]
        if name == "crop_ct_2slices":
            scores += [
                ("lung_left", dice(lab == L.LUNG_LEFT, crop_lm_full % 256 == 10), "CIP label map slices 60-61"),
                ("lung_right", dice(lab == L.LUNG_RIGHT, crop_lm_full % 256 == 13), "CIP label map slices 60-61"),
                ("airway", dice(lab == L.AIRWAY, crop_lm_full == 512), "CIP 512 (main bronchi)"),
            ]
        if name == "elastix_right_hemithorax":
            scores += [("lung_right", dice(lab == L.LUNG_RIGHT, elastix_ref), "elastix right-lung mask")]
        if name == "dicompyler_neck_arms_up":
            scores += [("body", dice(lab > 0, body_ref), "RTSTRUCT BODY")]
        if name == "lungmask_2slices":
            r, left = int((lab == L.LUNG_RIGHT).sum()), int((lab == L.LUNG_LEFT).sum())
            scores += [
                ("lung_right count", r / 64752, "lungmask R231 64 752 vox (ratio)"),
                ("lung_left count", left / 36536, "lungmask R231 36 536 vox (ratio)"),
            ]
        if name == "ct-64":  # partial fields of view of the same scan: lung bases, abdomen below the lungs
            first = int(np.flatnonzero(((lm >= 9) & (lm <= 14)).any(axis=(0, 1)))[0])
            base = segment_ct(hu[:, :, : first + 9], affine).labels
            lm_b = lm[:, :, : first + 9]
            below = segment_ct(hu[:, :, :first], affine).labels
            scores += [
                ("bases lung_left", dice(base == L.LUNG_LEFT, (lm_b >= 9) & (lm_b <= 11)), "lowest 36 mm of lung"),
                ("bases lung_right", dice(base == L.LUNG_RIGHT, (lm_b >= 12) & (lm_b <= 14)), "lowest 36 mm of lung"),
                ("below: lung+airway", float(np.isin(below, [*lungs, L.AIRWAY]).sum()), "voxels (0 expected)"),
            ]
        for s, d, ref in scores:
            print(f"{name:<26} {s:<18} {d:6.3f}  {ref}")
            rows.append((name, s, d))
        vox_ml = abs(np.linalg.det(np.asarray(affine)[:3, :3])) / 1000.0
        vols = ", ".join(f"{L.NAMES[i]} {int((lab == i).sum()) * vox_ml:.0f}" for i in range(1, 9) if (lab == i).any())
        print(f"{name:<26} {'volumes (ml)':<18} {'':>6}  {vols}; {dt:.2f} s; notes: {res.notes}")


if __name__ == "__main__":
    main()
