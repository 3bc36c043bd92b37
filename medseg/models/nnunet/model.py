"""An nnU-Net v2 results folder behind medseg's model interface, with nnU-Net's own semantics.

The steps follow ``nnunetv2``'s ``nnUNetPredictor`` (version 2.x) one by one, and where nnU-Net has a
function for a step, that function is called, so the numbers are the reference's:

1. read: the scan's voxels in nnU-Net's axis order (SimpleITK's: ``(c, z, y, x)``, spacing reversed),
   reoriented to RAS first when the plans' reader is ``NibabelIOWithReorient``;
2. preprocess: the plans' preprocessor (``DefaultPreprocessor.run_case_npy``): ``transpose_forward``,
   crop to the non-zero region, CT or z-score normalisation from the plans' intensity properties
   before resampling, resampling with the plans' functions (separate-z for anisotropic spacing);
3. network: built by the checkpoint's trainer class (``build_network_architecture``, from the plans'
   ``architecture``: ``network_class_name``, ``arch_kwargs``, ``_kw_requires_import``; older plans
   formats through the trainer's own path), deep supervision off;
4. sliding windows: nnU-Net's tile positions (``compute_steps_for_sliding_window``, step 0.5 by
   default), its Gaussian (sigma 1/8 of the patch, scaled to 10), zero padding of an image smaller
   than the patch; mirroring TTA over the checkpoint's allowed axes; folds averaged as logits;
5. export: ``convert_predicted_logits_to_segmentation_with_correct_shape`` (logits resampled back,
   separate-z again; argmax, or sigmoid > 0.5 in ``regions_class_order`` for region-based models;
   uncropped and transposed back); then onto medseg's exact grid (axes reversed back, reorientation
   undone), so the label file keeps the input's shape, affine and qform/sform codes.

Logits are accumulated in float16 as the reference does on every device (a float32 sum would flip
near-tied voxels), and nothing is written by nnU-Net's writers: medseg writes the labels.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from medseg.errors import ModelError
from medseg.models.base import Accepts, AlgorithmOutput, Label, Model
from medseg.models.nnunet.folder import (
    CHECKPOINT,
    available_folds,
    file_sha256,
    load_checkpoint,
    parse_name,
    resolve_folder,
)
from medseg.volume import Volume

#: readers of nnU-Net that read voxels in the file's own axis order (what medseg's Volume holds)
_AXIS_ORDER_READERS = {"SimpleITKIO", "NibabelIO", "Tiff3DIO", None}
_PALETTE = [
    (230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48), (145, 30, 180),
    (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212), (0, 128, 128), (220, 190, 255),
    (170, 110, 40), (255, 250, 200), (128, 0, 0), (170, 255, 195), (128, 128, 0), (255, 215, 180),
]  # fmt: skip


def require_nnunet():
    """Import nnunetv2, or one line naming the extra that installs it."""
    try:
        import nnunetv2  # noqa: F401
    except ImportError as err:
        raise ModelError(
            'nnU-Net v2 models need the nnunet extra: pip install torch==2.13.0 -e ".[nnunet]" '
            f"(pin your torch build in the same command; missing: {err.name})",
            "nnunetv2",
        ) from err
    import nnunetv2

    return nnunetv2


def labels_from_dataset_json(dataset: dict, regions_class_order: list[int] | None) -> dict[int, Label]:
    """medseg labels from nnU-Net's ``labels`` (``name -> value``, or ``name -> [values]`` for regions)."""
    entries = dict(dataset.get("labels", {}))
    out: dict[int, Label] = {0: Label("background", (0, 0, 0))}
    foreground = [(name, value) for name, value in entries.items() if name != "background" and name != "ignore"]
    if regions_class_order:
        for i, (name, _) in enumerate(foreground):
            if i < len(regions_class_order):
                value = int(regions_class_order[i])
                out[value] = Label(name, _PALETTE[(value - 1) % len(_PALETTE)])
        return out
    for name, value in foreground:
        value = int(value if not isinstance(value, (list, tuple)) else value[0])
        out[value] = Label(name, _PALETTE[(value - 1) % len(_PALETTE)])
    return out


class NnUNetModel(Model):
    """An nnU-Net v2 ``Trainer__Plans__configuration`` folder (or a dataset folder holding one)."""

    family = "nnunet-v2"

    def __init__(
        self,
        path: str | Path,
        device: str = "cpu",
        folds: list[int | str] | None = None,
        tta: bool | None = True,
        step_size: float | None = 0.5,
        trust_checkpoint: bool = False,
        name: str | None = None,
        roi_subset: list[str] | None = None,
    ) -> None:
        super().__init__()
        if roi_subset:
            raise ModelError("--roi-subset is for TotalSegmentator tasks (--model totalsegmentator:TASK)", path)
        tta = True if tta is None else tta  # nnU-Net's predictor defaults
        step_size = 0.5 if step_size is None else step_size
        self.folder = resolve_folder(path)
        self.plans = json.loads((self.folder / "plans.json").read_text())
        self.dataset = json.loads((self.folder / "dataset.json").read_text())
        parts = parse_name(self.folder)
        self.trainer_folder_name, self.configuration_name = parts["trainer"], parts["configuration"]
        configurations = self.plans.get("configurations", {})
        if self.configuration_name not in configurations:
            known = ", ".join(configurations) or "none"
            raise ModelError(
                f"configuration {self.configuration_name!r} is not in plans.json (it has: {known})", self.folder
            )
        config = self._configuration()
        if config.get("previous_stage"):
            raise ModelError(
                f"is a cascade stage (previous_stage {config['previous_stage']!r}): cascades are not supported; "
                "use a 3d_fullres or 2d configuration",
                self.folder,
            )
        present = available_folds(self.folder)
        if not present:
            raise ModelError(f"has no fold_*/{CHECKPOINT}", self.folder)
        wanted = list(folds) if folds else present
        missing = [f for f in wanted if f not in present]
        if missing:
            have = ", ".join(str(f) for f in present)
            raise ModelError(f"has no fold {', '.join(map(str, missing))} (folds present: {have})", self.folder)
        if not 0 < float(step_size) <= 1:
            raise ModelError(f"step size must be in (0, 1], got {step_size}", self.folder)
        self.folds = wanted
        self.tta = bool(tta)
        self.step_size = float(step_size)
        self.trust_checkpoint = trust_checkpoint
        self.name = name or f"{self.folder.parent.name}/{self.folder.name}"
        self.version = ""  # nnU-Net folders carry no version; the sidecar records each checkpoint's sha256
        self.plans_name = str(self.plans.get("plans_name", parts["plans"]))
        self.description = (
            f"nnU-Net v2 {self.plans_name} {self.configuration_name} ({self.folder}), {len(self.folds)} fold(s), "
            f"{'mirroring TTA' if self.tta else 'no TTA'}, step {self.step_size:g}"
        )
        self.labels = labels_from_dataset_json(self.dataset, self.dataset.get("regions_class_order"))
        channels = len(self.dataset.get("channel_names", self.dataset.get("modality", {"0": "?"})))
        schemes = config.get("normalization_schemes", [])
        ct = bool(schemes) and all(s == "CTNormalization" for s in schemes)
        self.accepts = Accepts("CT" if ct else "any", max(1, channels), "HU (nnU-Net CT normalisation)" if ct else "")
        self.windows = None  # nnU-Net's own tiling runs inside run_algorithm
        self.device = _resolve_device(device)
        self.checkpoints: list[dict[str, Any]] = []

    # --- what it is --------------------------------------------------------------------------
    @property
    def kind(self) -> str:
        return f"{len(self._configuration().get('patch_size', [0, 0, 0]))}D nnU-Net"

    def _configuration(self) -> dict[str, Any]:
        """The configuration's dict with ``inherits_from`` resolved (as nnU-Net's PlansManager does)."""
        configs = self.plans["configurations"]
        config = dict(configs[self.configuration_name])
        seen = {self.configuration_name}
        while "inherits_from" in config:
            parent = config.pop("inherits_from")
            if parent in seen or parent not in configs:
                raise ModelError(f"plans.json: configuration inherits from unknown {parent!r}", self.folder)
            seen.add(parent)
            config = {**configs[parent], **config}
        return config

    def weights_status(self) -> str:
        return f"folds {','.join(str(f) for f in self.folds)}"

    def weights_digest(self) -> str | None:
        """sha256 of the folds' checkpoint files (combined), without loading them; each file is read once."""
        if not self.checkpoints:
            for fold in self.folds:
                path = self.folder / f"fold_{fold}" / CHECKPOINT
                self.checkpoints.append({"fold": str(fold), "sha256": file_sha256(path), "bytes": path.stat().st_size})
            digests = [c["sha256"] for c in self.checkpoints]
            self.weights_sha256 = digests[0] if len(digests) == 1 else _combined_digest(digests)
        return self.weights_sha256

    def describe(self) -> dict[str, Any]:
        return {
            **super().describe(),
            "folder": str(self.folder),
            "configuration": self.configuration_name,
            "trainer": self.trainer_name if self._loaded else self.trainer_folder_name,
            "folds": [str(f) for f in self.folds],
            "tta": self.tta,
            "step_size": self.step_size,
            "checkpoints": self.checkpoints,
        }

    # --- loading -------------------------------------------------------------------------------
    def _load(self) -> None:
        require_nnunet()
        import torch
        from nnunetv2.utilities.label_handling.label_handling import determine_num_input_channels
        from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

        self.plans_manager = PlansManager(self.plans)
        self.configuration_manager = self.plans_manager.get_configuration(self.configuration_name)
        self.label_manager = self.plans_manager.get_label_manager(self.dataset)
        reader = self.plans.get("image_reader_writer")
        if reader not in _AXIS_ORDER_READERS and reader != "NibabelIOWithReorient":
            raise ModelError(f"plans.json names the image reader {reader!r}, which medseg does not follow", self.folder)
        self.reorient = reader == "NibabelIOWithReorient"

        self.states: list[dict[str, torch.Tensor]] = []
        for fold in self.folds:
            path = self.folder / f"fold_{fold}" / CHECKPOINT
            checkpoint = load_checkpoint(path, self.trust_checkpoint)
            missing = [k for k in ("network_weights", "trainer_name", "init_args") if k not in checkpoint]
            if missing:
                raise ModelError(f"is not an nnU-Net v2 checkpoint (no {', '.join(missing)})", path)
            if not self.states:
                self.trainer_name = str(checkpoint["trainer_name"])
                conf = checkpoint["init_args"].get("configuration", self.configuration_name)
                if conf != self.configuration_name:
                    raise ModelError(f"checkpoint is for configuration {conf!r}, the folder says "
                                     f"{self.configuration_name!r}", path)  # fmt: skip
                axes = checkpoint.get("inference_allowed_mirroring_axes")
                self.mirror_axes = tuple(int(a) for a in axes) if axes is not None else None
            self.states.append(checkpoint["network_weights"])
            del checkpoint
        self.weights_digest()  # each fold's sha256 and size, for the sidecar

        trainer = _trainer_class(self.trainer_name, self.folder)
        n_in = determine_num_input_channels(self.plans_manager, self.configuration_manager, self.dataset)
        n_out = self.label_manager.num_segmentation_heads
        try:
            network = trainer.build_network_architecture(
                self.plans_manager, self.configuration_manager, n_in, n_out, enable_deep_supervision=False
            )
        except TypeError:  # trainers with nnU-Net's older signature
            cm = self.configuration_manager
            network = trainer.build_network_architecture(
                cm.network_arch_class_name, cm.network_arch_init_kwargs, cm.network_arch_init_kwargs_req_import,
                n_in, n_out, enable_deep_supervision=False,
            )  # fmt: skip
        except (ImportError, AttributeError, KeyError) as err:
            raise ModelError(f"cannot build the network the plans describe ({err})", self.folder) from err
        try:
            network.load_state_dict(self.states[0])
        except RuntimeError as err:
            first = str(err).splitlines()[0]
            raise ModelError(f"fold weights do not fit the planned network ({first})", self.folder) from err
        self.network = network.to(torch.device(self.device)).eval()
        if self.device == "cpu":
            self.fast_convs = use_onednn_convolutions(self.network)

    # --- model space (nnU-Net runs on its own grid inside run_algorithm) -----------------------
    def model_grid(self, volume: Volume):
        raise ModelError("runs nnU-Net's own preprocessing; it has no medseg model grid", self.name)

    def prepare(self, volume: Volume):
        raise ModelError("runs nnU-Net's own preprocessing; it has no medseg model grid", self.name)

    def algorithm_bytes(self, volume: Volume) -> int:
        """Host peak of one case: the float32 input, the preprocessed copy, the float32 logits on the
        model grid and nnU-Net's export (logits resampled to the cropped input grid, float32)."""
        heads = self.label_manager.num_segmentation_heads if self._loaded else len(self.labels)
        n = int(np.prod(volume.shape))
        target = self._configuration().get("spacing") or volume.spacing[::-1]
        src = volume.spacing[::-1]
        scale = float(np.prod([s / t for s, t in zip(src, target[-3:] if len(target) >= 3 else [src[0], *target])]))
        model_n = int(n * scale)
        return int(4 * (2 * n + model_n * (heads + 2) + n * heads + n))

    # --- running -------------------------------------------------------------------------------
    def run_algorithm(self, volume: Volume, progress) -> AlgorithmOutput:
        t = time.perf_counter()
        data, spacing, undo = self._to_nnunet(volume)
        timings = {"nnunet.read": time.perf_counter() - t}
        seg = self.segment_array(data, spacing, progress, timings)
        labels = undo(seg)
        dtype = np.uint8 if max(self.labels) < 256 else np.uint16
        return AlgorithmOutput(np.ascontiguousarray(labels.astype(dtype, copy=False)), [], timings)

    def segment_array(self, data: np.ndarray, spacing, progress=None, timings: dict | None = None) -> np.ndarray:
        """nnU-Net's prediction for ``data`` (``(c, z, y, x)`` float32 in the reader's axis order, as
        nnU-Net's readers return it) at ``spacing`` (``(z, y, x)`` mm): labels on the same grid.
        ``timings`` (a dict) receives the steps' seconds."""
        import torch
        from nnunetv2.inference.export_prediction import convert_predicted_logits_to_segmentation_with_correct_shape

        timings = {} if timings is None else timings
        t = time.perf_counter()
        preprocessor = self.configuration_manager.preprocessor_class(verbose=False)
        pre, _, props = preprocessor.run_case_npy(
            data, None, {"spacing": list(spacing)}, self.plans_manager, self.configuration_manager, self.dataset
        )
        del data
        timings["nnunet.preprocess"] = timings.get("nnunet.preprocess", 0.0) + time.perf_counter() - t
        t = time.perf_counter()
        logits = self.predict_logits(torch.from_numpy(np.ascontiguousarray(pre)), progress)
        del pre
        timings["nnunet.windows"] = timings.get("nnunet.windows", 0.0) + time.perf_counter() - t
        t = time.perf_counter()
        if self._can_stream_export(props):
            seg = self._streamed_export(logits, props)
        else:  # nnU-Net's own export (separate-z, regions, 2D, other resampling functions)
            seg = convert_predicted_logits_to_segmentation_with_correct_shape(
                logits, self.plans_manager, self.configuration_manager, self.label_manager, props,
                num_threads_torch=torch.get_num_threads(),
            )  # fmt: skip
        del logits
        timings["nnunet.export"] = timings.get("nnunet.export", 0.0) + time.perf_counter() - t
        return np.asarray(seg)

    # --- export ------------------------------------------------------------------------------------
    def _can_stream_export(self, props: dict) -> bool:
        """nnU-Net's export is ``resample_data_or_seg_to_shape`` (order 1, no separate z) then argmax:
        the one case :meth:`_streamed_export` reproduces. Everything else goes to nnU-Net's function."""
        from nnunetv2.preprocessing.resampling.default_resampling import determine_do_sep_z_and_axis

        cm = self.configuration_manager.configuration
        kwargs = cm.get("resampling_fn_probabilities_kwargs", {})
        if cm.get("resampling_fn_probabilities") != "resample_data_or_seg_to_shape" or self.label_manager.has_regions:
            return False
        if kwargs.get("is_seg", False) or int(kwargs.get("order", 1)) != 1:
            return False
        if len(self.configuration_manager.spacing) != 3:
            return False
        current = self.configuration_manager.spacing
        original = [props["spacing"][i] for i in self.plans_manager.transpose_forward]
        separate, _ = determine_do_sep_z_and_axis(kwargs.get("force_separate_z"), current, original)
        return not separate

    def _streamed_export(self, logits, props: dict) -> np.ndarray:
        """nnU-Net's export, slab by slab: the float16 logits resampled linearly to the cropped input grid
        (``skimage.transform.resize`` order 1, edge mode, as nnU-Net: the same sample positions as
        ``align_corners=False``), rounded to float16 as nnU-Net stores them, argmax (first maximum),
        then uncropped and transposed back. Only one slab of resampled logits exists at a time, where
        nnU-Net holds all classes at full resolution."""
        import torch
        from acvl_utils.cropping_and_padding.bounding_boxes import insert_crop_into_image

        out_shape = [int(n) for n in props["shape_after_cropping_and_before_resampling"]]
        heads, n_in = logits.shape[0], logits.shape[1]
        dtype = torch.uint8 if len(self.label_manager.foreground_labels) < 255 else torch.int16
        seg = torch.empty(out_shape, dtype=dtype)
        scale = n_in / out_shape[0]
        src = ((torch.arange(out_shape[0], dtype=torch.float64) + 0.5) * scale - 0.5).clamp_(min=0)
        i0 = src.floor().long().clamp_(max=n_in - 1)
        i1 = (i0 + 1).clamp_(max=n_in - 1)
        w = (src - i0).to(torch.float32)
        plane = heads * out_shape[1] * out_shape[2] * 4
        step = max(1, min(out_shape[0], (64 << 20) // max(plane, 1)))
        for a in range(0, out_shape[0], step):
            b = min(out_shape[0], a + step)
            lo = logits[:, i0[a:b]].to(torch.float32)
            hi = logits[:, i1[a:b]].to(torch.float32)
            slab = torch.lerp(lo, hi, w[a:b].view(1, -1, 1, 1)).permute(1, 0, 2, 3)  # (s, C, y, x)
            del lo, hi
            if tuple(slab.shape[2:]) != tuple(out_shape[1:]):
                slab = torch.nn.functional.interpolate(slab, size=out_shape[1:], mode="bilinear", align_corners=False)
            seg[a:b] = slab.to(torch.float16).argmax(1).to(dtype)
            del slab
        full = np.zeros(props["shape_before_cropping"], dtype=np.uint8 if dtype == torch.uint8 else np.uint16)
        full = insert_crop_into_image(full, seg.numpy(), props["bbox_used_for_cropping"])
        return full.transpose(self.plans_manager.transpose_backward)

    def _to_nnunet(self, volume: Volume):
        """``(c, z, y, x)`` float32, spacing ``(z, y, x)``, and the map of labels back to ``volume``'s grid."""
        import nibabel as nib

        array = np.asarray(volume.array)
        chans = array[..., None] if array.ndim == 3 else array
        affine = volume.affine
        ornt = None
        if self.reorient:  # nnU-Net's NibabelIOWithReorient: closest canonical (RAS) first
            ornt = nib.orientations.io_orientation(affine)
            chans = nib.orientations.apply_orientation(chans, ornt)
            affine = affine @ nib.orientations.inv_ornt_aff(ornt, volume.shape)
        spacing = [float(s) for s in np.sqrt((affine[:3, :3] ** 2).sum(axis=0))][::-1]
        data = np.ascontiguousarray(chans.transpose(3, 2, 1, 0), dtype=np.float32)

        def undo(seg_zyx: np.ndarray) -> np.ndarray:
            seg = seg_zyx.transpose(2, 1, 0)
            if ornt is not None:
                back = nib.orientations.ornt_transform(nib.orientations.axcodes2ornt(("R", "A", "S")), ornt)
                seg = nib.orientations.apply_orientation(seg, back)
            return seg

        return data, spacing, undo

    def predict_logits(self, data, progress=None):
        """nnU-Net's sliding-window logits on the preprocessed ``(c, z, y, x)`` tensor, folds averaged."""

        total = None
        for i, state in enumerate(self.states):
            if i or len(self.states) > 1:
                self.network.load_state_dict(state)
            logits = self._sliding_window(data, progress, i, len(self.states))
            total = logits if total is None else total.add_(logits)  # float16, as the reference sums folds
        if len(self.states) > 1:
            total /= len(self.states)
        return total

    def _sliding_window(self, data, progress, fold_index: int, n_folds: int):
        import torch
        from acvl_utils.cropping_and_padding.padding import pad_nd_image
        from nnunetv2.inference.sliding_window_prediction import compute_gaussian, compute_steps_for_sliding_window

        device = torch.device(self.device)
        patch = tuple(int(p) for p in self.configuration_manager.patch_size)
        padded, revert = pad_nd_image(data, patch, "constant", {"value": 0}, True, None)
        size = padded.shape[1:]
        slicers = []
        if len(patch) < len(size):  # 2D configuration: every slice of the first axis
            steps = compute_steps_for_sliding_window(size[1:], patch, self.step_size)
            for d in range(size[0]):
                for sx in steps[0]:
                    for sy in steps[1]:
                        slicers.append((slice(None), d, slice(sx, sx + patch[0]), slice(sy, sy + patch[1])))
        else:
            steps = compute_steps_for_sliding_window(size, patch, self.step_size)
            for sx, sy, sz in itertools.product(*steps):
                slicers.append((slice(None), *(slice(s, s + p) for s, p in zip((sx, sy, sz), patch))))
        # nnU-Net's own precision: Gaussian, logit and weight sums in float16 (the reference does so on every
        # device); a float32 sum flips near-tied voxels of a weakly trained model
        gaussian = compute_gaussian(patch, sigma_scale=1.0 / 8, value_scaling_factor=10, dtype=torch.float16,
                                    device=torch.device("cpu"))  # fmt: skip
        heads = self.label_manager.num_segmentation_heads
        logits = torch.zeros((heads, *size), dtype=torch.float16)
        weight = torch.zeros(size, dtype=torch.float16)
        autocast = torch.autocast("cuda", enabled=True) if device.type == "cuda" else contextlib.nullcontext()
        with torch.inference_mode(), autocast:
            for n, sl in enumerate(slicers):
                window = padded[sl][None].to(device)
                pred = self._mirror_and_predict(window)[0].to("cpu")
                pred *= gaussian
                logits[sl] += pred
                weight[sl[1:]] += gaussian
                if progress is not None:
                    progress.update((fold_index + (n + 1) / len(slicers)) / n_folds)
        torch.div(logits, weight, out=logits)
        return logits[(slice(None), *revert[1:])]

    def _mirror_and_predict(self, x):
        """The window's logits, averaged over nnU-Net's mirrorings (same order and sums as the reference);
        the mirrored copies go through the network together, ``self.tta_batch`` at a time."""
        import torch

        axes = self.mirror_axes if self.tta else None
        if not axes:
            return self.network(x)
        dims = [a + 2 for a in axes]
        combos = [c for i in range(len(dims)) for c in itertools.combinations(dims, i + 1)]
        views = [None, *combos]
        step = max(1, self.tta_batch(x))
        prediction = None
        for start in range(0, len(views), step):
            group = views[start : start + step]
            batch = torch.cat([x if f is None else torch.flip(x, f) for f in group])
            out = self.network(batch)
            for i, f in enumerate(group):
                one = out[i : i + 1] if f is None else torch.flip(out[i : i + 1], f)
                prediction = one.clone() if prediction is None else prediction.add_(one)
        prediction /= len(combos) + 1
        return prediction

    def tta_batch(self, x) -> int:
        """Mirrored copies per forward pass: all 8 for windows up to 64^3 voxels on the CPU, else 2 (the
        activations of a batch grow with it)."""
        voxels = int(np.prod(x.shape[2:]))
        return 8 if voxels <= 64**3 and self.device == "cpu" else 2


def use_onednn_convolutions(network) -> int:
    """Route the network's 3D/2D convolutions to oneDNN (``torch.mkldnn_convolution``) on the CPU.

    PyTorch sends convolutions with few channels (nnU-Net's first stages of small models) to its
    reference ``slow_conv3d`` kernel, 5-9x slower than oneDNN's on the same layer (measured on this
    project's phantom model: 8->8 channels at 48^3, 103 ms against 12.5 ms); the results agree to
    float32 rounding (2e-6). Returns how many layers were routed.
    """
    import types

    import torch

    if not torch.backends.mkldnn.is_available():
        return 0

    def forward(self, x):
        if x.device.type == "cpu" and x.dtype == torch.float32 and not isinstance(self.padding, str):
            if self.padding_mode == "zeros":
                return torch.mkldnn_convolution(
                    x.contiguous(), self.weight, self.bias, self.padding, self.stride, self.dilation, self.groups
                )
        return type(self).forward(self, x)

    n = 0
    for module in network.modules():
        if type(module) in (torch.nn.Conv3d, torch.nn.Conv2d):
            module.forward = types.MethodType(forward, module)
            n += 1
    return n


def _resolve_device(device: str | None) -> str:
    if device in (None, "", "auto"):
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    return str(device)


def _combined_digest(digests: list[str]) -> str:
    import hashlib

    return hashlib.sha256("".join(digests).encode()).hexdigest()


def _trainer_class(name: str, folder: Path):
    """nnU-Net's trainer class ``name``, found as ``recursive_find_trainer_class_by_name`` finds it (the
    modules of ``nnunetv2.training.nnUNetTrainer`` in the same order), except that a module that fails
    to import is skipped instead of failing the search: nnU-Net imports every trainer module until it
    finds the class, and one broken optional dependency of an unrelated trainer (torchvision beside a
    CPU-only torch build: "operator torchvision::nms does not exist") would otherwise make every
    trainer after it, ``nnUNetTrainerNoMirroring`` among them, impossible to load."""
    import importlib
    import pkgutil

    import nnunetv2.training.nnUNetTrainer as package
    from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name

    try:  # nnU-Net's own search first (it also looks in external trainer folders)
        return recursive_find_trainer_class_by_name(name)
    except Exception:  # noqa: BLE001 - not found, or a module on the way failed to import
        pass

    def search(path: str, prefix: str):
        modules = list(pkgutil.iter_modules([path]))
        for info in (m for m in modules if not m.ispkg):
            try:
                module = importlib.import_module(f"{prefix}.{info.name}")
            except Exception:  # noqa: BLE001 - an unrelated trainer module that cannot import here
                continue
            if hasattr(module, name):
                return getattr(module, name)
        for info in (m for m in modules if m.ispkg):
            found = search(str(Path(path) / info.name), f"{prefix}.{info.name}")
            if found is not None:
                return found
        return None

    found = search(package.__path__[0], package.__name__)
    if found is None:
        raise ModelError(
            f"was trained with trainer {name!r}, which nnunetv2 does not have (install the package that defines "
            "it, or point nnUNet_extTrainer at its folder)",
            folder,
        )
    return found
