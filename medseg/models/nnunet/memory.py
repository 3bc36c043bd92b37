"""nnU-Net's memory terms: the host terms alive together in each step of a case (:meth:`NnUNetMemory.memory_phases`),
the GPU terms, and how a case runs under a host budget (:class:`NnUNetLayout`: bands, windows in flight), all
from the plans and the scan's shape before any checkpoint is read."""

from __future__ import annotations

import dataclasses

import numpy as np

from medseg.errors import ModelError
from medseg.models.nnunet.export import _export_step
from medseg.volume import Volume

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


def _in_channels(network) -> int:
    """Input channels of a network's first convolution."""
    import torch

    for module in network.modules():
        if isinstance(module, (torch.nn.Conv3d, torch.nn.Conv2d)):
            return int(module.in_channels)
    raise ModelError("the network has no convolution to read its input channels from", type(network).__name__)


class NnUNetMemory:
    """The memory half of :class:`~medseg.models.nnunet.model.NnUNetModel` (a mixin: it reads the model's plans,
    folds, device and TTA settings)."""

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
