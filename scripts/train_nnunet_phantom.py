#!/usr/bin/env python
"""Train a small nnU-Net v2 model on synthetic torso CT phantoms, on CPU.

Everything below uses nnU-Net v2's own code: dataset fingerprint, experiment planning
(ExperimentPlanner -> nnUNetPlans.json), preprocessing (DefaultPreprocessor) and training
(nnUNetTrainer). The only deviations from a stock nnU-Net run are

  * the 3d_fullres configuration of nnUNetPlans.json is shrunk (patch size, 3 stages with
    16-32-64 features, batch size 2) *before* preprocessing, so that it trains on 2 CPU cores
    in minutes, and
  * a trainer subclass (nnUNetTrainerPhantomCPU) that only shortens training (epochs,
    iterations per epoch) and skips the final sliding-window validation.

The result is a regular nnU-Net v2 results folder

  OUT/Dataset501_Phantom/nnUNetTrainer__nnUNetPlans__3d_fullres/
      plans.json  dataset.json  dataset_fingerprint.json
      fold_0/checkpoint_final.pth  fold_1/checkpoint_final.pth

that nnU-Net's own predictor loads (nnUNetv2_predict_from_modelfolder, or
nnUNetPredictor.initialize_from_trained_model_folder). Scratch work (raw data, preprocessed
data, full training output with logs) stays under --work.

Usage (from the repository root):

  python scripts/train_nnunet_phantom.py \
      --out sample_data/models/nnunet-phantom --work /tmp/nnunet_work \
      --cases 12 --epochs 30 --iterations 30
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

DATASET_ID = 501
DATASET_NAME = "Dataset501_Phantom"
CONFIG = "3d_fullres"
LABELS = ["background", "body", "lungs", "liver", "spleen", "kidneys", "spine", "aorta"]


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--out",
        default="sample_data/models/nnunet-phantom",
        help="where the committed results folder goes (OUT/Dataset501_Phantom/...)",
    )
    p.add_argument(
        "--work",
        default="/tmp/nnunet_work",
        help="scratch folder: nnUNet_raw, nnUNet_preprocessed, nnUNet_results, phantoms",
    )
    p.add_argument("--cases", type=int, default=12, help="number of training phantoms (seeds 2000, 2001, ...)")
    p.add_argument("--epochs", type=int, default=30, help="epochs per fold")
    p.add_argument("--iterations", type=int, default=30, help="training iterations per epoch")
    return p.parse_args()


# Fixed recipe constants (recorded in RECIPE.md).
FIRST_SEED = 2000
TRAIN_SPACING = ("3", "3", "3")
FOLDS = (0, 1)
VAL_ITERATIONS = 5
THREADS = 2
PATCH_SIZE = [48, 48, 48]
FEATURES = [16, 32, 64]
BATCH_SIZE = 2


def setup_env(work: Path) -> None:
    # nnunetv2.paths reads these at import time, so they must be set before any nnunetv2 import.
    for name, sub in (
        ("nnUNet_raw", "nnUNet_raw"),
        ("nnUNet_preprocessed", "nnUNet_preprocessed"),
        ("nnUNet_results", "nnUNet_results"),
    ):
        os.environ[name] = str(work / sub)
        (work / sub).mkdir(parents=True, exist_ok=True)
    # one data-augmentation worker + the training process = 2 busy processes on a 2-core box
    os.environ.setdefault("nnUNet_n_proc_DA", "1")
    os.environ.setdefault("nnUNet_compile", "f")
    for v in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ.setdefault(v, str(THREADS))


def make_raw_dataset(work: Path, n_cases: int) -> None:
    """Generate phantoms with `medseg phantom` and lay them out as an nnU-Net raw dataset."""
    import nibabel as nib
    import numpy as np

    phantoms = work / "phantoms_train"
    if phantoms.exists():
        shutil.rmtree(phantoms)
    subprocess.run(
        [
            "medseg",
            "phantom",
            str(phantoms),
            "-n",
            str(n_cases),
            "--seed",
            str(FIRST_SEED),
            "--spacing",
            *TRAIN_SPACING,
            "--orientation",
            "RAS",
            "--no-oblique",
            "--layout",
            "flat",
        ],
        check=True,
    )
    raw = work / "nnUNet_raw" / DATASET_NAME
    if raw.exists():
        shutil.rmtree(raw)
    (raw / "imagesTr").mkdir(parents=True)
    (raw / "labelsTr").mkdir(parents=True)
    seeds = []
    for i in range(n_cases):
        seed = FIRST_SEED + i
        seeds.append(seed)
        img_f = phantoms / f"phantom_{seed:05d}.nii.gz"
        gt_f = phantoms / f"phantom_{seed:05d}_gt.nii.gz"
        case = f"phantom_{i:03d}"
        img = nib.load(img_f)
        gt = nib.load(gt_f)
        assert img.shape == gt.shape, (img_f, img.shape, gt.shape)
        shutil.copyfile(img_f, raw / "imagesTr" / f"{case}_0000.nii.gz")
        if np.allclose(img.affine, gt.affine, atol=1e-5):
            shutil.copyfile(gt_f, raw / "labelsTr" / f"{case}.nii.gz")
        else:
            # nnU-Net's integrity check requires identical geometry: put the labels on the image's header
            lab = nib.Nifti1Image(np.asarray(gt.dataobj).astype(np.uint8), img.affine, img.header)
            lab.set_data_dtype(np.uint8)
            nib.save(lab, raw / "labelsTr" / f"{case}.nii.gz")
    dataset_json = {
        "channel_names": {"0": "CT"},
        "labels": {name: i for i, name in enumerate(LABELS)},
        "numTraining": n_cases,
        "file_ending": ".nii.gz",
        "name": "Phantom",
        "description": f"medseg synthetic torso CT phantoms, seeds {seeds[0]}..{seeds[-1]}, "
        f"spacing {'x'.join(TRAIN_SPACING)} mm, RAS, not oblique",
    }
    (raw / "dataset.json").write_text(json.dumps(dataset_json, indent=2))


def shrink_plans(plans_file: Path) -> dict:
    """Make the 3d_fullres configuration small enough for CPU training (before preprocessing)."""
    plans = json.loads(plans_file.read_text())
    cfg = plans["configurations"][CONFIG]
    n = len(FEATURES)
    cfg["patch_size"] = list(PATCH_SIZE)
    cfg["batch_size"] = BATCH_SIZE
    ak = cfg["architecture"]["arch_kwargs"]
    ak["n_stages"] = n
    ak["features_per_stage"] = list(FEATURES)
    ak["kernel_sizes"] = [[3, 3, 3]] * n
    ak["strides"] = [[1, 1, 1]] + [[2, 2, 2]] * (n - 1)
    ak["n_conv_per_stage"] = [2] * n
    ak["n_conv_per_stage_decoder"] = [2] * (n - 1)
    # drop the other configurations so only 3d_fullres is preprocessed/used
    plans["configurations"] = {CONFIG: cfg}
    plans_file.write_text(json.dumps(plans, indent=4))
    return cfg


def plan_and_preprocess(work: Path) -> None:
    from nnunetv2.experiment_planning.plan_and_preprocess_api import extract_fingerprints, plan_experiments, preprocess

    extract_fingerprints([DATASET_ID], num_processes=1, check_dataset_integrity=True, clean=True)
    plan_experiments([DATASET_ID])
    pre = work / "nnUNet_preprocessed" / DATASET_NAME
    cfg = shrink_plans(pre / "nnUNetPlans.json")
    print(
        "edited 3d_fullres:",
        json.dumps({k: cfg[k] for k in ("patch_size", "batch_size", "spacing")}),
        json.dumps(cfg["architecture"]["arch_kwargs"]),
    )
    data_dir = pre / cfg["data_identifier"]
    if data_dir.exists():
        shutil.rmtree(data_dir)
    preprocess([DATASET_ID], configurations=(CONFIG,), num_processes=(1,))


def make_trainer_class(epochs: int, iterations: int):
    import torch
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    class nnUNetTrainerPhantomCPU(nnUNetTrainer):
        """nnUNetTrainer with a short schedule. Network, loss, augmentation, mirroring axes and
        inference are inherited unchanged."""

        def __init__(
            self,
            plans: dict,
            configuration: str,
            fold: int,
            dataset_json: dict,
            device: torch.device = torch.device("cuda"),
        ):
            super().__init__(plans, configuration, fold, dataset_json, device)
            self.num_epochs = epochs
            self.num_iterations_per_epoch = iterations
            self.num_val_iterations_per_epoch = VAL_ITERATIONS
            self.save_every = 10**9  # no intermediate checkpoint_latest.pth

    return nnUNetTrainerPhantomCPU


def train_fold(work: Path, fold: int, trainer_cls) -> tuple[Path, float]:
    import torch

    pre = work / "nnUNet_preprocessed" / DATASET_NAME
    plans = json.loads((pre / "nnUNetPlans.json").read_text())
    plans["continue_training"] = False  # nnUNetTrainer.__init__ pops this key (see run_training.py)
    dataset_json = json.loads((pre / "dataset.json").read_text())
    results = work / "nnUNet_results" / DATASET_NAME / f"{trainer_cls.__name__}__nnUNetPlans__{CONFIG}"
    fold_dir = results / f"fold_{fold}"
    if fold_dir.exists():
        shutil.rmtree(fold_dir)  # start from scratch, never from an older run's checkpoint
    trainer = trainer_cls(
        plans=plans, configuration=CONFIG, fold=fold, dataset_json=dataset_json, device=torch.device("cpu")
    )
    t0 = time.time()
    trainer.run_training()  # writes fold_X/checkpoint_final.pth; final validation deliberately skipped
    dt = time.time() - t0
    print(f"fold {fold}: {dt:.0f} s for {trainer.num_epochs} epochs x {trainer.num_iterations_per_epoch} it")
    return Path(trainer.output_folder_base), dt


def export(train_out: Path, out: Path) -> Path:
    """Copy only what inference needs, under the stock trainer name."""
    import torch

    dst = out / DATASET_NAME / f"nnUNetTrainer__nnUNetPlans__{CONFIG}"
    if dst.exists():
        shutil.rmtree(dst)
    dst.mkdir(parents=True)
    for f in ("plans.json", "dataset.json", "dataset_fingerprint.json"):
        if (train_out / f).exists():
            shutil.copyfile(train_out / f, dst / f)
    for fold in FOLDS:
        ck = torch.load(train_out / f"fold_{fold}" / "checkpoint_final.pth", map_location="cpu", weights_only=False)
        # nnUNetPredictor looks the trainer class up by ck['trainer_name'] inside the nnunetv2
        # package (recursive_find_trainer_class_by_name) to call build_network_architecture.
        # nnUNetTrainerPhantomCPU lives in this script, not in nnunetv2, and it only changes the
        # training length: the network, the mirroring axes and inference are exactly
        # nnUNetTrainer's. So record the stock trainer name; every other key stays as written.
        ck["trainer_name"] = "nnUNetTrainer"
        # The optimizer state (SGD momentum buffers, a copy of the weights' size) is only needed to
        # continue training; nnUNetPredictor reads network_weights, trainer_name,
        # init_args['configuration'] and inference_allowed_mirroring_axes. Dropped to keep the
        # committed file small (verified: nnUNetv2_predict_from_modelfolder still runs).
        ck["optimizer_state"] = None
        ck["grad_scaler_state"] = None
        (dst / f"fold_{fold}").mkdir()
        torch.save(ck, dst / f"fold_{fold}" / "checkpoint_final.pth")
    return dst


def main() -> int:
    args = parse_args()
    work = Path(args.work).resolve()
    out = Path(args.out).resolve()
    setup_env(work)
    import torch

    torch.set_num_threads(THREADS)
    torch.manual_seed(0)

    t0 = time.time()
    make_raw_dataset(work, args.cases)
    plan_and_preprocess(work)
    print(f"data + plan + preprocess: {time.time() - t0:.0f} s")

    trainer_cls = make_trainer_class(args.epochs, args.iterations)
    times = {}
    train_out = None
    for fold in FOLDS:
        train_out, times[fold] = train_fold(work, fold, trainer_cls)
    dst = export(train_out, out)
    print("wrote", dst)
    print("training wall time per fold (s):", {k: round(v) for k, v in times.items()})
    return 0


if __name__ == "__main__":
    sys.exit(main())
