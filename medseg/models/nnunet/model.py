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
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import itertools
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

    # --- memory ------------------------------------------------------------------------------------
    def algorithm_bytes(self, volume: Volume, host_budget: int | None = None) -> int:
        """Predicted host peak of one case on this model's device under ``host_budget``: the largest phase
        of :meth:`memory_phases` (the sum of that phase's terms of :meth:`memory_breakdown`)."""
        return max(sum(phase.values()) for phase in self.memory_phases(volume, host_budget).values())

    def memory_breakdown(self, volume: Volume, host_budget: int | None = None) -> dict[str, int]:
        """Every named host term of one case (bytes); see :meth:`memory_phases` for which are alive together.

        ``gpu.*`` terms (CUDA only) are device memory and are in no host phase: the network's weights,
        their float16 copies autocast caches, and the activations of one window batch traced for
        float16 (nnU-Net runs its windows under ``torch.autocast("cuda")``, as medseg does); the
        logits and weight sums stay on the host, as on the CPU.
        """
        terms: dict[str, int] = {}
        for phase in self.memory_phases(volume, host_budget).values():
            terms.update(phase)
        terms.update(self._gpu_terms())
        return terms

    def memory_phases(self, volume: Volume, host_budget: int | None = None) -> dict[str, dict[str, int]]:
        """The host terms alive together in each step of one case, as the code and nnU-Net's functions
        hold them (the bytes of numpy/torch arrays, counted from the plans and the scan's shape; the
        non-zero crop is assumed to keep the whole scan, as it does for CT):

        * ``preprocess``: the source scan, its float32 copy in nnU-Net's axis order (``input``, held
          by :meth:`run_algorithm` until the labels are done), ``run_case_npy``'s own float32 copy,
          the crop's int8 seg, and ``resample_data_or_seg``'s temporaries (a float64 copy of the
          data, the float32 output, per channel skimage's float64 output and, for order > 1,
          scipy's float64 spline coefficients); without resampling, the non-zero mask's
          ``binary_fill_holes`` temporaries instead;
        * ``windows``: the preprocessed array and its padded copy (only when padding is needed),
          the float16 logits and weight sums on the padded grid (a second fold's logits while
          the sum of the folds is alive), the weights (the network's and each fold's state
          dict), and one window batch: its input (the mirrored copies, ``tta_batch`` at a time),
          the network's traced activation peak (:class:`~medseg.inference.tracing.NetworkMemory`
          on the plans' network, roi = patch size, batch = the TTA batch) and the window's
          float32 logit sums;
        * ``export``: the logits and the export: streamed, one slab of resampled logits (float32,
          its float16 copy and argmax); nnU-Net's own export when :meth:`_can_stream_export`
          refuses, all classes resampled at the output grid (its float64 copy of the logits, the
          float16 output, skimage's float64 output per class) then argmax;
        * ``labels``: the labels uncropped and their contiguous copy.

        When ``stream_slabs`` is True, or None and the full path's peak exceeds the host budget, and
        the export can stream, the windows run in first-axis bands (:meth:`_band_windows`): the
        logits term is then one band per fold and the windows and export phases overlap.
        ``host_budget``: bytes (None: the model's ``host_budget``, else what is free now).
        """
        return self.layout(volume, host_budget).phases

    def layout(self, volume: Volume, host_budget: int | None = None) -> NnUNetLayout:
        """How a case of ``volume``'s shape runs under ``host_budget`` (:class:`NnUNetLayout`), decided from
        the shapes alone; the run decides the same from the same budget."""
        return self._layout(self._geometry_of_volume(volume), host_budget)

    def _layout(self, g: dict, host_budget: int | None) -> NnUNetLayout:
        """Whether the logits stream in bands, and the phases: with the CPU's worker threads, unless their
        windows or mirrored copies in flight do not fit the host budget (then one at a time, noted)."""
        budget = self._budget(host_budget)
        one_view = False
        while True:
            full = self._phases(g, banded=False, one_view=one_view)
            banded, notes = self._use_bands(g, full, budget)
            phases = self._phases(g, banded=True, one_view=one_view) if banded else full
            if one_view or self.views_in_flight() < 2 or not _exceeds(phases, budget):
                break
            one_view = True
        if one_view:
            notes.append("nnU-Net: one window or mirrored copy at a time (one per core does not fit the host budget)")
        return NnUNetLayout(banded, one_view, tuple(notes), phases)

    def _budget(self, host_budget: int | None) -> int:
        budget = host_budget if host_budget is not None else self.host_budget
        if budget is None:
            from medseg.inference.budget import auto_host_budget

            budget = auto_host_budget()
        return int(budget)

    def _use_bands(self, g: dict, full: dict[str, dict[str, int]], budget: int) -> tuple[bool, list[str]]:
        over = self.stream_slabs is not False and _exceeds(full, budget)
        if not g["can_stream"] or len(g["patch"]) != 3:
            if self.stream_slabs or over:
                return False, [
                    "nnU-Net: the logits cannot stream for this scan (nnU-Net's own export: separate-z, "
                    "regions, 2D or another resampling function); the full logits buffer is used"
                ]
            return False, []
        if self.stream_slabs is not None:
            return bool(self.stream_slabs), []
        if over:
            return True, ["nnU-Net: the full logits do not fit the host budget; they stream in first-axis bands"]
        return False, []

    def _geometry_of_volume(self, volume: Volume) -> dict:
        """The shapes nnU-Net will see for ``volume`` (before any checkpoint is loaded)."""
        import nibabel as nib

        self._managers()
        array = np.asarray(volume.array) if not hasattr(volume.array, "shape") else volume.array
        shape = tuple(int(s) for s in array.shape[:3])
        channels = int(array.shape[3]) if len(array.shape) > 3 else 1
        spacing = [float(s) for s in np.sqrt((np.asarray(volume.affine)[:3, :3] ** 2).sum(axis=0))]
        if self.reorient:
            ornt = nib.orientations.io_orientation(volume.affine)
            out_shape, out_spacing = [0, 0, 0], [0.0, 0.0, 0.0]
            for axis, target in enumerate(int(a) for a in ornt[:, 0]):  # input axis -> its RAS axis
                out_shape[target], out_spacing[target] = shape[axis], spacing[axis]
            shape, spacing = tuple(out_shape), out_spacing
        source = int(getattr(array, "nbytes", 0))
        return self._geometry(channels, shape[::-1], spacing[::-1], shape[::-1], source)

    def _geometry(self, channels: int, shape_zyx, spacing_zyx, cropped_t, source_bytes: int) -> dict:
        """Shapes of one case: ``shape_zyx``/``spacing_zyx`` as nnU-Net's reader returns them, ``cropped_t``
        the shape after ``transpose_forward`` and the non-zero crop."""
        from nnunetv2.preprocessing.resampling.default_resampling import compute_new_shape

        tf = self.plans_manager.transpose_forward
        spacing_t = [spacing_zyx[i] for i in tf]
        target = list(self.configuration_manager.spacing)
        if len(target) < 3:
            target = [spacing_t[0], *target]
        model = tuple(int(s) for s in compute_new_shape(cropped_t, spacing_t, target))
        patch = tuple(int(p) for p in self.configuration_manager.patch_size)
        padded = list(model)
        for i, p in enumerate(patch):
            axis = len(model) - len(patch) + i
            padded[axis] = max(padded[axis], p)
        return {
            "channels": channels,
            "source": int(np.prod(shape_zyx)),
            "source_bytes": source_bytes,
            "cropped": tuple(int(s) for s in cropped_t),
            "model": model,
            "padded": tuple(padded),
            "patch": patch,
            "resampled": tuple(model) != tuple(int(s) for s in cropped_t),
            "can_stream": self._can_stream_export({"spacing": list(spacing_zyx)}),
        }

    def _heads(self) -> int:
        return self.label_manager.num_segmentation_heads

    def _label_itemsize(self) -> int:
        return 1 if len(self.label_manager.foreground_labels) < 255 else 2

    def _tta_views(self) -> int:
        if not self.tta:
            return 1
        self._managers()
        axes = (
            getattr(self, "mirror_axes", None)
            if self._loaded
            else tuple(range(len(self.configuration_manager.patch_size)))
        )
        return 2 ** len(axes) if axes else 1

    def planned_tta_batch(self) -> int:
        """Window copies per forward pass, as :meth:`_mirror_and_predict` groups them."""
        return min(self._tta_views(), self.tta_batch())

    def network_memory(self):
        """:class:`~medseg.inference.tracing.NetworkMemory` of the plans' network, built on the meta device
        (no checkpoint read, no weight memory)."""
        if self._network_memory is None:
            import torch

            from medseg.inference.tracing import NetworkMemory

            trainer = self.trainer_name if self._loaded else self.trainer_folder_name
            with torch.device("meta"):
                network = self._build_network(trainer)
            self._network_memory = NetworkMemory(network.eval())
        return self._network_memory

    def _activation_bytes(self, batch: int) -> int:
        """The traced activation peak of one forward pass of ``batch`` windows of the patch size, on the CPU
        as :func:`channels_last_network` runs it."""
        from medseg.inference.tracing import CHANNELS_LAST_CPU

        net = self.network_memory()
        patch = tuple(int(p) for p in self.configuration_manager.patch_size)
        return net.activations(_in_channels(net.network), patch, batch, CHANNELS_LAST_CPU)

    def _gpu_terms(self) -> dict[str, int]:
        if not str(self.device).startswith("cuda"):
            return {}
        import torch

        from medseg.inference.tracing import to_meta, trace_activations

        net = self.network_memory()
        patch = tuple(int(p) for p in self.configuration_manager.patch_size)
        batch = self.planned_tta_batch()
        half = to_meta(net.network).half()
        act, _ = trace_activations(half, (batch, _in_channels(net.network), *patch), "cuda", torch.float16)
        window = batch * _in_channels(net.network) * int(np.prod(patch)) * 2
        return {"gpu.weights": net.weights, "gpu.weights_fp16": net.weights // 2, "gpu.activations": act,
                "gpu.window_batch": window}  # fmt: skip

    def _phases(self, g: dict, banded: bool, one_view: bool = False) -> dict[str, dict[str, int]]:
        c, heads, on_cpu = g["channels"], self._heads(), str(self.device) == "cpu"
        n, nc = g["source"], int(np.prod(g["cropped"]))
        m, mp = int(np.prod(g["model"])), int(np.prod(g["padded"]))
        patch = int(np.prod(g["patch"]))
        folds = len(self.folds)
        resampling = self.configuration_manager.configuration.get("resampling_fn_data_kwargs", {})
        order = int(resampling.get("order", 3))
        base = {"scan": g["source_bytes"], "input": 4 * c * n}
        weights = self.network_memory().weights * (folds + (1 if on_cpu else 0))
        # preprocessing: run_case_npy's float32 copy, the crop's int8 seg, then the resampling's temporaries
        if g["resampled"]:
            # the int8 seg, resample_data_or_seg's float64 copy, skimage's float64 output of one channel,
            # and for order > 1 scipy's zoom prefilter: the channel padded by 12 voxels (np.pad, edge)
            # and its spline coefficients, both float64 and alive together
            padded_channel = int(np.prod([s + 24 for s in g["cropped"]]))
            transient = nc + 8 * c * nc + 8 * m + (16 * padded_channel if order > 1 else 0)
        else:  # the non-zero mask: the mask, its inverse and binary_fill_holes' work arrays (bool)
            transient = nc + 4 * n
        preprocess = {**base, "weights": weights, "preprocess.copy": 4 * c * n, "preprocess.transient": transient}
        if g["resampled"]:  # the float32 output, filled channel by channel (else the copy is the output)
            preprocess["preprocessed"] = 4 * c * m
        batch = self.views_in_flight(one_view)
        window = {
            # the mirrored copies in flight, one per CPU view worker (on CUDA they are made on the device:
            # one window on the host)
            "window.batch": batch * c * patch * 4 if on_cpu else c * patch * 4,
            # on CUDA the activations are device memory (gpu.*); the host receives one window's logits
            "window.activations": self._activation_bytes(batch) if on_cpu else heads * patch * 4,
            # float32 window logits on their way into the float16 sums: ``logits[sl] += pred`` computes in
            # float32 (a copy of the float16 slice and a float32 result, cast back), or with TTA the running
            # sum and each view worker's output and its flipped copy; and the float16 Gaussian
            "window.sums": ((1 + 2 * batch) if on_cpu and batch > 1 else 2) * heads * patch * 4 + 2 * patch,
        }
        if on_cpu and batch > 1:  # each view worker thread's own oneDNN kernels and buffers (measured)
            window["window.view_threads"] = batch * VIEW_THREAD_BYTES
        item = self._label_itemsize()
        if not banded:
            logits = {"logits": 2 * heads * mp, "weight_sums": 2 * mp,
                      "logits.other_fold": 2 * heads * mp if folds > 1 else 0}  # fmt: skip
            windows = {**base, "weights": weights, "preprocessed": 4 * c * m,
                       "padded": 4 * c * mp if mp != m else 0, **logits, **window}  # fmt: skip
            export = {**base, "weights": weights, "logits": 2 * heads * mp, "export.labels": item * nc}
            if g["can_stream"]:
                export["export.slab"] = self._slab_bytes(g, heads)
            else:  # nnU-Net's export: float64 copy, float16 output, one class at a time, then argmax (int64)
                export["export.resampled"] = 2 * heads * nc
                export["export.transient"] = max(8 * heads * m + 8 * nc, 8 * nc)
            return {
                "preprocess": preprocess,
                "windows": windows,
                "export": export,
                "labels": self._labels_phase(base, weights, n, item),
            }
        band = self._band_rows(g)
        plane = int(np.prod(g["padded"][1:]))
        # final rows wait in "ready" until a whole export chunk's source rows are final
        chunk_rows = -(-_export_step(heads, g["cropped"]) * g["model"][0] // g["cropped"][0])
        ready_rows = min(g["model"][0], band + chunk_rows + 2)
        logits = {"logits": 2 * heads * band * plane * folds, "weight_sums": 2 * band * plane,
                  "logits.ready": 2 * heads * ready_rows * int(np.prod(g["model"][1:]))}  # fmt: skip
        windows = {**base, "weights": weights, "preprocessed": 4 * c * m,
                   "padded": 4 * c * mp if mp != m else 0, **logits, "export.labels": item * nc, **window}  # fmt: skip
        export = {**base, "weights": weights, "preprocessed": 4 * c * m,
                  "padded": 4 * c * mp if mp != m else 0, **logits, "export.labels": item * nc,
                  "export.slab": self._slab_bytes(g, heads)}  # fmt: skip
        return {
            "preprocess": preprocess,
            "windows": windows,
            "export": export,
            "labels": self._labels_phase(base, weights, n, item),
        }

    @staticmethod
    def _labels_phase(base: dict, weights: int, n: int, item: int) -> dict[str, int]:
        return {**base, "weights": weights, "labels.uncropped": item * n, "labels.copy": item * n}

    def _band_rows(self, g: dict) -> int:
        """First-axis rows of the padded grid alive at once when the windows run in bands: one patch."""
        return min(g["padded"][0], g["patch"][0])

    def _slab_bytes(self, g: dict, heads: int) -> int:
        """Peak of one slab of :meth:`_export_slices`: lo, hi and their lerp on the model grid's planes
        (float32), then the slab at the output grid (float32), its float16 copy and the argmax (int64)."""
        out = g["cropped"]
        step = _export_step(heads, out)
        model_plane = int(np.prod(g["model"][1:]))
        out_plane = int(np.prod(out[1:]))
        lerp = 3 * heads * step * model_plane * 4
        resized = heads * step * out_plane * 4
        argmax = resized + heads * step * out_plane * 2 + step * out_plane * 8
        return max(lerp, heads * step * model_plane * 4 + resized, argmax)

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

        out_shape = [int(n) for n in props["shape_after_cropping_and_before_resampling"]]
        heads = logits.shape[0]
        seg = torch.empty(out_shape, dtype=self._label_dtype())
        i0, i1, w = _source_rows(logits.shape[1], out_shape[0])
        step = _export_step(heads, out_shape)
        for a in range(0, out_shape[0], step):
            b = min(out_shape[0], a + step)
            seg[a:b] = self._export_slices(logits, 0, i0[a:b], i1[a:b], w[a:b], out_shape)
        return self._uncrop(seg, props)

    def _label_dtype(self):
        import torch

        return torch.uint8 if len(self.label_manager.foreground_labels) < 255 else torch.int16

    def _export_slices(self, rows, offset: int, i0, i1, w, out_shape) -> Any:
        """Labels of the output slices whose source rows are ``i0``/``i1`` (model-grid rows, ``rows`` holding
        rows from ``offset`` on) with lerp weights ``w``."""
        import torch

        lo = rows[:, i0 - offset].to(torch.float32)
        hi = rows[:, i1 - offset].to(torch.float32)
        slab = torch.lerp(lo, hi, w.view(1, -1, 1, 1)).permute(1, 0, 2, 3)  # (s, C, y, x)
        del lo, hi
        if tuple(slab.shape[2:]) != tuple(out_shape[1:]):
            slab = torch.nn.functional.interpolate(slab, size=out_shape[1:], mode="bilinear", align_corners=False)
        return slab.to(torch.float16).argmax(1).to(self._label_dtype())

    def _uncrop(self, seg, props: dict) -> np.ndarray:
        import torch
        from acvl_utils.cropping_and_padding.bounding_boxes import insert_crop_into_image

        full = np.zeros(props["shape_before_cropping"], dtype=np.uint8 if seg.dtype == torch.uint8 else np.uint16)
        full = insert_crop_into_image(full, seg.numpy(), props["bbox_used_for_cropping"])
        return full.transpose(self.plans_manager.transpose_backward)

    def _band_windows(self, data, props: dict, progress=None, one_view: bool = False) -> np.ndarray:
        """The sliding windows and the streamed export interleaved, so that only a band of logits lives.

        The windows run in nnU-Net's order (first-axis start outermost, as ``predict_logits`` runs them),
        a group of equal first-axis start at a time, every fold on the group before the next; each fold
        sums into its own band of float16 logits one patch deep, the Gaussian weights into one shared
        band. Rows before the next group's start are touched by no later window: they are divided by
        their weights, the folds summed and averaged (all in float16 as :meth:`predict_logits`), cropped
        to the unpadded image, and each export chunk of :meth:`_streamed_export` whose source rows are
        all final is exported. Every sum is taken in the same order over the same windows with the same
        values as the full buffer, and the export slices are the same chunks: the labels are identical.
        """
        import torch
        from acvl_utils.cropping_and_padding.padding import pad_nd_image
        from nnunetv2.inference.sliding_window_prediction import compute_gaussian, compute_steps_for_sliding_window

        device = torch.device(self.device)
        patch = tuple(int(p) for p in self.configuration_manager.patch_size)
        padded, revert = pad_nd_image(data, patch, "constant", {"value": 0}, True, None)
        size = padded.shape[1:]
        steps = compute_steps_for_sliding_window(size, patch, self.step_size)
        gaussian = compute_gaussian(patch, sigma_scale=1.0 / 8, value_scaling_factor=10, dtype=torch.float16,
                                    device=torch.device("cpu"))  # fmt: skip
        heads, n_folds = self.label_manager.num_segmentation_heads, len(self.states)
        crop = [slice(int(r.start or 0), int(r.stop)) for r in revert[1:]]
        n_in = crop[0].stop - crop[0].start
        out_shape = [int(n) for n in props["shape_after_cropping_and_before_resampling"]]
        i0, i1, w = _source_rows(n_in, out_shape[0])
        chunk = _export_step(heads, out_shape)
        seg = torch.empty(out_shape, dtype=self._label_dtype())
        depth = patch[0]
        bands = [torch.zeros((heads, depth, *size[1:]), dtype=torch.float16) for _ in range(n_folds)]
        weight = torch.zeros((depth, *size[1:]), dtype=torch.float16)
        starts = list(steps[0])
        total = len(starts) * len(steps[1]) * len(steps[2]) * n_folds
        done, band_start, ready, ready_start, ready_stop, next_out = 0, starts[0], None, 0, 0, 0
        with torch.inference_mode(), self._autocast(device), self._view_workers(one_view):
            for k, sx in enumerate(starts):
                shift = sx - band_start
                for band in bands:
                    _slide(band, 1, shift)
                _slide(weight, 0, shift)
                band_start = sx
                for f in range(n_folds):
                    if n_folds > 1:
                        self.network.load_state_dict(self.states[f])
                    row = [(slice(None), slice(sx, sx + patch[0]), slice(sy, sy + patch[1]), slice(sz, sz + patch[2]))
                           for sy, sz in itertools.product(steps[1], steps[2])]  # fmt: skip
                    for sl, pred in self._predict_windows(padded, row, device):
                        pred *= gaussian
                        bands[f][(slice(None), slice(0, depth), sl[2], sl[3])] += pred
                        if f == 0:
                            weight[(slice(0, depth), sl[2], sl[3])] += gaussian
                        done += 1
                        if progress is not None:
                            progress.update(done / total)
                stop = starts[k + 1] if k + 1 < len(starts) else size[0]
                lo, hi = max(sx, crop[0].start), min(stop, crop[0].stop)
                if hi > lo:
                    final = None
                    for band in bands:
                        part = band[:, lo - sx : hi - sx] / weight[lo - sx : hi - sx]
                        part = part[:, :, crop[1], crop[2]]
                        final = part if final is None else final.add_(part)
                    if n_folds > 1:
                        final /= n_folds
                    ready = final if ready is None else torch.cat([ready, final], 1)
                    ready_stop = hi - crop[0].start
                while next_out < out_shape[0]:
                    b = min(out_shape[0], next_out + chunk)
                    if int(i1[b - 1]) >= ready_stop:
                        break
                    seg[next_out:b] = self._export_slices(ready, ready_start, i0[next_out:b], i1[next_out:b],
                                                          w[next_out:b], out_shape)  # fmt: skip
                    next_out = b
                    if next_out < out_shape[0]:  # rows no later chunk reads
                        keep = int(i0[next_out])
                        ready, ready_start = ready[:, keep - ready_start :], keep
        if next_out < out_shape[0]:  # a broken invariant, never a user error
            raise AssertionError(f"band export stopped at slice {next_out} of {out_shape[0]}")
        return self._uncrop(seg, props)

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

    def predict_logits(self, data, progress=None, one_view: bool = False):
        """nnU-Net's sliding-window logits on the preprocessed ``(c, z, y, x)`` tensor, folds averaged
        (``one_view``: one window or mirrored copy at a time, see :meth:`views_in_flight`)."""

        total = None
        for i, state in enumerate(self.states):
            if i or len(self.states) > 1:
                self.network.load_state_dict(state)
            logits = self._sliding_window(data, progress, i, len(self.states), one_view)
            total = logits if total is None else total.add_(logits)  # float16, as the reference sums folds
        if len(self.states) > 1:
            total /= len(self.states)
        return total

    def _sliding_window(self, data, progress, fold_index: int, n_folds: int, one_view: bool = False):
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
        with torch.inference_mode(), self._autocast(device), self._view_workers(one_view):
            for n, (sl, pred) in enumerate(self._predict_windows(padded, slicers, device)):
                pred *= gaussian
                logits[sl] += pred
                weight[sl[1:]] += gaussian
                if progress is not None:
                    progress.update((fold_index + (n + 1) / len(slicers)) / n_folds)
        torch.div(logits, weight, out=logits)
        return logits[(slice(None), *revert[1:])]

    def _autocast(self, device):
        """nnU-Net's float16 autocast on CUDA; on the CPU float32 (the reference's) or, with
        ``precision="bf16"``, bfloat16 autocast (convolutions in bf16, several times faster on CPUs
        with AVX-512 BF16 or AMX; the window logits go into the same float16 sums as without it, as the
        reference's do)."""
        import torch

        if device.type == "cuda":
            return torch.autocast("cuda", enabled=True)
        if self.precision == "bf16":
            return torch.autocast("cpu", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def _predict_windows(self, padded, slicers, device):
        """``(slicer, logits)`` of each window, in ``slicers``' order. Without TTA on the CPU the windows run
        on :meth:`_view_workers`' threads, one per worker in flight while the caller sums the previous
        one (single-threaded: with 118 classes the sums are a sixth of a window's time); with TTA a
        window at a time (its mirrored copies run on the workers)."""
        pool, workers = self._pool
        if pool is None or self._tta_views() > 1:
            for sl in slicers:
                yield sl, self._mirror_and_predict(padded[sl][None].to(device))[0].to("cpu")
            return
        # one window per worker in flight; the caller sums a finished one while the next ones run
        pending: collections.deque = collections.deque()
        todo = iter(slicers)
        for sl in itertools.islice(todo, workers):
            pending.append((sl, pool.submit(self._view, padded[sl][None], None)))
        while pending:
            sl, future = pending.popleft()
            out = future.result()[0]
            for nxt in itertools.islice(todo, 1):
                pending.append((nxt, pool.submit(self._view, padded[nxt][None], None)))
            yield sl, out
            del out

    def _mirror_and_predict(self, x):
        """The window's logits, averaged over nnU-Net's mirrorings (same order and sums as the reference).

        On the CPU the mirrored copies run on :meth:`_view_workers`' threads, one copy per thread at a
        time; on CUDA ``self.tta_batch`` copies go through the network together."""
        import torch

        axes = self.mirror_axes if self.tta else None
        if not axes:
            return self.network(x).float()
        dims = [a + 2 for a in axes]
        combos = [c for i in range(len(dims)) for c in itertools.combinations(dims, i + 1)]
        views = [None, *combos]
        pool, workers = self._pool
        step = workers if pool is not None else self.tta_batch()
        prediction = None
        for start in range(0, len(views), step):  # a group at a time: at most ``step`` outputs alive
            group = views[start : start + step]
            if pool is not None:
                outs = list(pool.map(lambda f: self._view(x, f), group))
            else:
                out = self.network(torch.cat([x if f is None else torch.flip(x, f) for f in group])).float()
                outs = [out[i : i + 1] if f is None else torch.flip(out[i : i + 1], f) for i, f in enumerate(group)]
            for one in outs:  # the views' order, as the reference sums them
                prediction = one.clone() if prediction is None else prediction.add_(one)
            del outs
        prediction /= len(views)
        return prediction

    def _view(self, x, flip):
        """One mirrored copy's logits, flipped back (run on a worker thread: inference mode and autocast
        are per thread)."""
        import torch

        with torch.inference_mode(), self._autocast(x.device):
            out = self.network(x if flip is None else torch.flip(x, flip)).float()
        return out if flip is None else torch.flip(out, flip)

    @contextlib.contextmanager
    def _view_workers(self, one_view: bool = False):
        """On the CPU: one worker thread per core (:meth:`views_in_flight`), each running whole mirrored
        copies (TTA) or whole windows single-threaded (``torch.set_num_threads(1)`` for the scope,
        restored after). Measured on the 2-core development VM: 8 copies of a 48^3 window 668 ms
        against 784 ms with both cores on each copy (each copy's feature maps stay in one core's
        cache; no synchronisation inside a layer)."""
        import torch

        threads = torch.get_num_threads()
        workers = self.views_in_flight(one_view)
        if self.device != "cpu" or workers < 2:
            yield
            return
        from concurrent.futures import ThreadPoolExecutor

        torch.set_num_threads(1)
        try:
            with ThreadPoolExecutor(workers, thread_name_prefix="medseg-tta") as pool:
                self._pool = (pool, workers)
                yield
        finally:
            self._pool = (None, 1)
            torch.set_num_threads(threads)

    def tta_batch(self) -> int:
        """Mirrored copies per forward pass: one on the CPU (each on a worker thread, see
        :meth:`_view_workers`; in batches of 8 the channels-last network ran 87 ms per 48^3 copy against
        67 ms one at a time: a batch's feature maps leave the caches), 2 on CUDA."""
        return 1 if self.device == "cpu" else 2

    def views_in_flight(self, one_view: bool = False) -> int:
        """Windows or mirrored copies whose activations are alive at once: one per CPU worker thread
        (:meth:`_view_workers`: a thread per core where the cores are no more than the mirrored copies,
        or without TTA no more than :data:`MAX_WINDOW_WORKERS`, and one window's activations are at most
        :data:`WORKER_ACTIVATION_LIMIT`), CUDA's TTA batch, else 1."""
        if one_view:
            return 1
        views = self._tta_views()
        if self.device == "cpu":
            import torch

            threads = torch.get_num_threads()
            if not 2 <= threads <= (views if views > 1 else MAX_WINDOW_WORKERS):
                return 1
            return threads if self._activation_bytes(1) <= WORKER_ACTIVATION_LIMIT else 1
        return self.planned_tta_batch() if views > 1 else 1


@dataclasses.dataclass(frozen=True)
class NnUNetLayout:
    """How one case runs, decided from its shapes and the host budget (never stored on the model, so a
    case planned on one thread while another runs cannot change the other's run)."""

    #: the logits stream in first-axis bands (:meth:`NnUNetModel._band_windows`)
    banded: bool
    #: one window or mirrored copy at a time (one per core does not fit the host budget)
    one_view: bool
    notes: tuple[str, ...]
    #: the host terms alive together in each step (:meth:`NnUNetModel.memory_phases`)
    phases: dict[str, dict[str, int]]


def _exceeds(phases: dict[str, dict[str, int]], budget: int) -> bool:
    return max(sum(p.values()) for p in phases.values()) > budget


def _source_rows(n_in: int, n_out: int):
    """Model-grid rows and lerp weights of each output slice of the first axis (``align_corners=False``)."""
    import torch

    scale = n_in / n_out
    src = ((torch.arange(n_out, dtype=torch.float64) + 0.5) * scale - 0.5).clamp_(min=0)
    i0 = src.floor().long().clamp_(max=n_in - 1)
    i1 = (i0 + 1).clamp_(max=n_in - 1)
    return i0, i1, (src - i0).to(torch.float32)


def _export_step(heads: int, out_shape) -> int:
    """Output slices per export chunk: about 64 MiB of float32 resampled logits."""
    plane = heads * int(out_shape[1]) * int(out_shape[2]) * 4
    return max(1, min(int(out_shape[0]), (64 << 20) // max(plane, 1)))


def _slide(band, dim: int, shift: int) -> None:
    """Move ``band``'s rows along ``dim`` ``shift`` places towards 0, zeros behind (in place)."""
    if shift <= 0:
        return
    length = band.shape[dim]
    if shift >= length:
        band.zero_()
        return
    kept = band.narrow(dim, shift, length - shift).clone()
    band.narrow(dim, 0, length - shift).copy_(kept)
    band.narrow(dim, length - shift, shift).zero_()


#: the most CPU worker threads running whole windows (no TTA) each single-threaded; with more cores the
#: threads work inside each window as before (measured on 2 cores only)
MAX_WINDOW_WORKERS = 8

#: worker threads only for windows whose traced activations are at most this: small windows gain from a
#: core each (their feature maps stay in its cache); large ones (nnU-Net's 128^3 networks, 1.9 GB) keep
#: every thread inside one window, as before, and one window's activations alive, not one per core
WORKER_ACTIVATION_LIMIT = 256 << 20

#: resident bytes each worker thread adds on its first window (oneDNN's kernels and buffers made for a
#: single-threaded caller, kept with the thread): beyond the traced activations, 2 workers grew the
#: process by 38-73 MiB (53 on average, four runs of benchmarks/nnunet_memory.py's TTA row, shipped
#: model, 48^3 windows, development VM with AVX-512)
VIEW_THREAD_BYTES = 27 << 20

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


def _in_channels(network) -> int:
    """Input channels of a network's first convolution."""
    import torch

    for module in network.modules():
        if isinstance(module, (torch.nn.Conv3d, torch.nn.Conv2d)):
            return int(module.in_channels)
    raise ModelError("the network has no convolution to read its input channels from", type(network).__name__)


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
