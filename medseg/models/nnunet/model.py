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

Memory: :meth:`NnUNetModel.memory_phases` predicts the host peak of a case from the plans and the scan's
shape, before any checkpoint is read (the network is built on the meta device and traced); when the
full float16 logits do not fit the host budget and the export can stream, the windows run in
first-axis bands (:meth:`NnUNetModel._band_windows`), with labels identical to the full buffer's. On
CUDA the windows run under float16 autocast, as nnU-Net's predictor does; the logits stay on the host.

CPU speed, same arithmetic in float32: the network runs channels-last with oneDNN convolutions
(:mod:`medseg.models.nnunet.cpu_layout`), and each core runs whole mirrored copies or small windows
on its own thread (:meth:`NnUNetModel._view_workers`), summed in the reference's order.

By concern: this module opens, loads and runs a folder; :mod:`~medseg.models.nnunet.memory` holds the memory
terms and the layout, :mod:`~medseg.models.nnunet.windows` the sliding windows, and
:mod:`~medseg.models.nnunet.export` the export (mixins of :class:`NnUNetModel`).
"""

from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path
from typing import Any

import numpy as np

from medseg import devices
from medseg.devices import resolve_device
from medseg.errors import MedsegError, ModelError, OptionError, install_extra
from medseg.models.base import Accepts, AlgorithmOutput, Label, Model
from medseg.models.nnunet.cpu_layout import channels_last_network
from medseg.models.nnunet.export import NnUNetExport
from medseg.models.nnunet.folder import (
    CHECKPOINT,
    available_folds,
    file_sha256,
    load_checkpoint,
    parse_name,
    resolve_folder,
)
from medseg.models.nnunet.memory import NnUNetMemory
from medseg.models.nnunet.windows import NnUNetWindows
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
            f"nnU-Net v2 models need the nnunet extra ({err.name} is missing): {install_extra('nnunet')}",
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


class NnUNetModel(NnUNetMemory, NnUNetWindows, NnUNetExport, Model):
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
        stream_slabs: bool | None = None,
        host_budget: int | None = None,
        precision: str | None = None,
    ) -> None:
        super().__init__()
        if roi_subset:
            raise OptionError("--roi-subset is for TotalSegmentator tasks (--model totalsegmentator:TASK)", path)
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
        self.device = resolve_device(device)
        self.precision = check_precision(precision, self.folder, self.device)
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
        self.checkpoints: list[dict[str, Any]] = []
        #: logits in first-axis bands (True), the full buffer (False), or by the host budget (None)
        self.stream_slabs = stream_slabs
        self.host_budget = None if host_budget is None else int(host_budget)
        self._pool = (None, 1)  # (thread pool, its workers) while :meth:`_view_workers` runs
        self._network_memory = None

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
            "precision": self.precision,
            "step_size": self.step_size,
            "checkpoints": self.checkpoints,
        }

    # --- loading -------------------------------------------------------------------------------
    def _managers(self) -> None:
        """nnU-Net's plans, configuration and label managers (cheap: no checkpoint is read)."""
        if getattr(self, "plans_manager", None) is not None:
            return
        require_nnunet()
        from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

        reader = self.plans.get("image_reader_writer")
        if reader not in _AXIS_ORDER_READERS and reader != "NibabelIOWithReorient":
            raise ModelError(f"plans.json names the image reader {reader!r}, which medseg does not follow", self.folder)
        self.reorient = reader == "NibabelIOWithReorient"
        self.plans_manager = PlansManager(self.plans)
        self.configuration_manager = self.plans_manager.get_configuration(self.configuration_name)
        self.label_manager = self.plans_manager.get_label_manager(self.dataset)

    def _build_network(self, trainer_name: str):
        """The network the plans describe, built by the trainer class as nnU-Net builds it (deep supervision
        off), with freshly initialised weights on the current default device."""
        from nnunetv2.utilities.label_handling.label_handling import determine_num_input_channels

        self._managers()
        n_in = determine_num_input_channels(self.plans_manager, self.configuration_manager, self.dataset)
        n_out = self.label_manager.num_segmentation_heads
        cm = self.configuration_manager
        if _builds_default_network(trainer_name):
            from nnunetv2.utilities.get_network_from_plans import get_network_from_plans

            # what nnUNetTrainer.build_network_architecture returns, without importing the trainers; no He
            # initialisation: the checkpoint's weights replace every parameter (strict load), and on the
            # meta device (the memory planner) torch's normal_ imports torch._dynamo (1.4 s)
            try:
                return get_network_from_plans(
                    cm.network_arch_class_name, cm.network_arch_init_kwargs, cm.network_arch_init_kwargs_req_import,
                    n_in, n_out, allow_init=False, deep_supervision=False,
                )  # fmt: skip
            except (ImportError, AttributeError, KeyError) as err:
                raise ModelError(f"cannot build the network the plans describe ({err})", self.folder) from err
        trainer = _trainer_class(trainer_name, self.folder)
        try:
            return trainer.build_network_architecture(
                self.plans_manager, self.configuration_manager, n_in, n_out, enable_deep_supervision=False
            )
        except TypeError:  # trainers with nnU-Net's older signature
            cm = self.configuration_manager
            return trainer.build_network_architecture(
                cm.network_arch_class_name, cm.network_arch_init_kwargs, cm.network_arch_init_kwargs_req_import,
                n_in, n_out, enable_deep_supervision=False,
            )  # fmt: skip
        except (ImportError, AttributeError, KeyError) as err:
            raise ModelError(f"cannot build the network the plans describe ({err})", self.folder) from err

    def _load(self) -> None:
        import torch

        self._managers()

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

        network = self._build_network(self.trainer_name)
        try:
            network.load_state_dict(self.states[0])
        except RuntimeError as err:
            first = str(err).splitlines()[0]
            raise ModelError(f"fold weights do not fit the planned network ({first})", self.folder) from err
        self.network = network.to(torch.device(self.device)).eval()
        if self.device == "cpu":
            self.fast_layers = channels_last_network(self.network)

    # --- model space (nnU-Net runs on its own grid inside run_algorithm) -----------------------
    def model_grid(self, volume: Volume):
        raise ModelError("runs nnU-Net's own preprocessing; it has no medseg model grid", self.name)

    def prepare(self, volume: Volume):
        raise ModelError("runs nnU-Net's own preprocessing; it has no medseg model grid", self.name)

    # --- running -------------------------------------------------------------------------------
    def run_algorithm(self, volume: Volume, progress, host_budget: int | None = None) -> AlgorithmOutput:
        t = time.perf_counter()
        data, spacing, undo = self._to_nnunet(volume)
        timings = {"nnunet.read": time.perf_counter() - t}
        notes: list[str] = []
        seg = self.segment_array(data, spacing, progress, timings, host_budget, notes)
        labels = undo(seg)
        dtype = np.uint8 if max(self.labels) < 256 else np.uint16
        return AlgorithmOutput(np.ascontiguousarray(labels.astype(dtype, copy=False)), notes, timings)

    def segment_array(
        self,
        data: np.ndarray,
        spacing,
        progress=None,
        timings: dict | None = None,
        host_budget: int | None = None,
        notes: list[str] | None = None,
    ) -> np.ndarray:
        """nnU-Net's prediction for ``data`` (``(c, z, y, x)`` float32 in the reader's axis order, as
        nnU-Net's readers return it) at ``spacing`` (``(z, y, x)`` mm): labels on the same grid.
        ``timings`` (a dict) receives the steps' seconds, ``notes`` (a list) the layout's notes; the layout
        (:meth:`layout`) follows ``host_budget``."""
        import torch
        from nnunetv2.inference.export_prediction import convert_predicted_logits_to_segmentation_with_correct_shape

        timings = {} if timings is None else timings
        t = time.perf_counter()
        shape_zyx, channels = tuple(int(n) for n in data.shape[1:]), int(data.shape[0])
        preprocessor = self.configuration_manager.preprocessor_class(verbose=False)
        pre, _, props = preprocessor.run_case_npy(
            data, None, {"spacing": list(spacing)}, self.plans_manager, self.configuration_manager, self.dataset
        )
        del data
        timings["nnunet.preprocess"] = timings.get("nnunet.preprocess", 0.0) + time.perf_counter() - t
        t = time.perf_counter()
        cropped = [int(n) for n in props["shape_after_cropping_and_before_resampling"]]
        geometry = self._geometry(channels, shape_zyx, list(spacing), cropped, 0)
        layout = self._layout(geometry, host_budget)
        if notes is not None:
            notes.extend(layout.notes)
        if layout.banded:
            seg = self._band_windows(torch.from_numpy(np.ascontiguousarray(pre)), props, progress, layout.one_view)
            del pre
            timings["nnunet.windows+export"] = time.perf_counter() - t
            return np.asarray(seg)
        logits = self.predict_logits(torch.from_numpy(np.ascontiguousarray(pre)), progress, layout.one_view)
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


#: ``--precision`` values: fp32 (nnU-Net's own on the CPU) or bf16 (CPU autocast); CUDA runs float16 autocast
PRECISIONS = ("fp32", "bf16")


def check_precision(precision: str | None, where, device: str = "cpu") -> str:
    """``precision`` checked: one of :data:`PRECISIONS`, and runnable on ``device`` (bf16 on a CPU needs
    bfloat16 convolutions: :func:`medseg.devices.check_precision`)."""
    precision = (precision or "fp32").lower()
    if precision not in PRECISIONS:
        raise ModelError(f"precision must be one of {', '.join(PRECISIONS)}, not {precision!r}", where)
    try:
        devices.check_precision(precision, device)
    except MedsegError as err:
        raise ModelError(err.problem, where) from None
    return precision


def _combined_digest(digests: list[str]) -> str:
    import hashlib

    return hashlib.sha256("".join(digests).encode()).hexdigest()


#: nnunetv2's trainers that build nnU-Net's default network (they change epochs or mirroring only; none
#: overrides ``build_network_architecture``): their network is built from the plans directly, without
#: importing nnU-Net's trainer modules (3 s of imports on this VM, torch._dynamo among them)
_DEFAULT_NETWORK_TRAINERS = re.compile(r"nnUNetTrainer(NoMirroring)?(_\d+epochs)?(_NoMirroring)?")


def _builds_default_network(name: str) -> bool:
    """``name`` is one of nnunetv2's default-network trainers (and no external trainer folder could shadow it)."""
    return bool(_DEFAULT_NETWORK_TRAINERS.fullmatch(name)) and not os.environ.get("nnUNet_extTrainer")


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
