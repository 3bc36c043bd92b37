"""Where nnU-Net's own predictor spends its time: read, preprocess, windows, export, write.

``nnUNetv2_predict_from_modelfolder`` overlaps its steps across worker processes, so its wall time
does not split by step. This runs the same steps of ``nnUNetPredictor`` one after another in one
process, with the functions the command calls (the plans' reader, ``run_case_npy``,
``predict_logits_from_preprocessed_data``, ``convert_predicted_logits_to_segmentation_with_correct_shape``,
the plans' writer), on the scan ``nnunet_vs_reference.py`` uses, and prints each step's seconds;
medseg's sidecar gives its own (``timings_s``).

    python benchmarks/nnunet_reference_steps.py [--tta] [--shape 384 384 160]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _clinical_ct import ROOT, clinical_ct  # noqa: E402

MODEL = (
    ROOT / "sample_data" / "models" / "nnunet-phantom" / "Dataset501_Phantom" / "nnUNetTrainer__nnUNetPlans__3d_fullres"
)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tta", action="store_true", help="mirroring TTA on; default off")
    ap.add_argument("--shape", type=int, nargs=3, default=(384, 384, 160))
    ap.add_argument("--spacing", type=float, nargs=3, default=(0.8, 0.8, 1.5))
    ap.add_argument("--folds", nargs="+", default=["0", "1"])
    ap.add_argument("--model", type=Path, default=MODEL)
    args = ap.parse_args()

    import torch
    from nnunetv2.inference.export_prediction import convert_predicted_logits_to_segmentation_with_correct_shape
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    torch.set_num_threads(os.cpu_count() or 1)  # what the command sets on the CPU
    steps: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        scan = clinical_ct(Path(tmp) / "case_0000.nii.gz", tuple(args.spacing), tuple(args.shape))
        t = time.perf_counter()
        predictor = nnUNetPredictor(tile_step_size=0.5, use_gaussian=True, use_mirroring=args.tta,
                                    perform_everything_on_device=False, device=torch.device("cpu"),
                                    verbose=False, allow_tqdm=False)  # fmt: skip
        predictor.initialize_from_trained_model_folder(str(args.model), use_folds=tuple(args.folds))
        steps["model load"] = time.perf_counter() - t
        pm, cm = predictor.plans_manager, predictor.configuration_manager
        io = pm.image_reader_writer_class()
        t = time.perf_counter()
        image, props = io.read_images([str(scan)])
        steps["read"] = time.perf_counter() - t
        t = time.perf_counter()
        data, _, props = cm.preprocessor_class(verbose=False).run_case_npy(
            image, None, props, pm, cm, predictor.dataset_json
        )
        steps["preprocess"] = time.perf_counter() - t
        t = time.perf_counter()
        logits = predictor.predict_logits_from_preprocessed_data(torch.from_numpy(data)).cpu()
        steps["windows"] = time.perf_counter() - t
        t = time.perf_counter()
        seg = convert_predicted_logits_to_segmentation_with_correct_shape(
            logits, pm, cm, predictor.label_manager, props, num_threads_torch=torch.get_num_threads()
        )
        steps["export"] = time.perf_counter() - t
        t = time.perf_counter()
        io.write_seg(seg, str(Path(tmp) / "case.nii.gz"), props)
        steps["write"] = time.perf_counter() - t
    print(f"nnU-Net steps (s), TTA {'on' if args.tta else 'off'}, grid {'x'.join(map(str, args.shape))}: "
          + ", ".join(f"{k} {v:.1f}" for k, v in steps.items())
          + f"; total {sum(steps.values()):.1f}")  # fmt: skip


if __name__ == "__main__":
    main()
