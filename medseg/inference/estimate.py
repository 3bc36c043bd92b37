"""The memory estimator: what a run of a plan will need, per component and device.

Every term is computed from shapes, never from a per-model constant:

* **activations**: the network's traced forward pass (:mod:`medseg.inference.tracing`).
* **windows**: the window batch cut from the image and its float32 logits (``fp32`` copy under
  autocast), and the copy to the aggregation device when it differs.
* **aggregation**: ``classes x padded X x padded Y x depth`` float32 sums plus one weight map
  ``X x Y x depth``, where depth is the whole volume (MONAI's full buffer) or the streaming
  engine's buffer (:func:`medseg.inference.windows.streaming_planes`), plus one finalised chunk
  (16 planes) being divided.
* **post-processing**: the source-grid inversion's temporaries (:mod:`medseg.inference.invert`),
  the label volume and its reoriented copy.
* **image / input / preprocessing**: the scan as read, the preprocessed float32 image (padded
  copy when it is smaller than the roi) and the transient peak of preprocessing.
* **framework**: on the host, the process's own memory (Python, torch, MONAI, the loaded model:
  :func:`medseg.inference.budget.framework_host_bytes`); on CUDA, the CUDA context and the caching
  allocator's slack, documented in ``benchmarks/README.md`` with their sources (not measured: no
  GPU was available).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from medseg.inference.budget import MiB
from medseg.inference.engine import constant_window_bytes
from medseg.inference.invert import source_labels_bytes
from medseg.inference.plan import Plan
from medseg.inference.tracing import NetworkMemory
from medseg.inference.windows import chunk_planes, padded_shape, streaming_planes, vox, window_count

F32 = 4
#: CUDA context + kernels of torch/cuDNN/cuBLAS loaded on first use (see benchmarks/README.md)
CUDA_CONTEXT_BYTES = 600 * MiB
#: fraction of the device peak the caching allocator adds by rounding and fragmentation
CUDA_ALLOCATOR_SLACK = 0.10


@dataclass
class Workload:
    """What the planner needs to know about a case: shapes only, no voxel data."""

    model_shape: tuple[int, ...]  # preprocessed image (X, Y, Z) on the model grid
    source_shape: tuple[int, ...]  # the scan as read
    reoriented_shape: tuple[int, ...]  # the scan in model orientation (inversion target)
    in_channels: int
    out_channels: int
    spatial_dims: int
    source_itemsize: int = 2
    resampled: bool = True

    @classmethod
    def of(cls, volume, model) -> Workload:
        """The workload of segmenting ``volume`` with ``model`` (a :class:`~medseg.models.base.Model`)."""
        record = model.model_grid(volume)
        return cls(
            model_shape=tuple(int(v) for v in record.model_shape),
            source_shape=tuple(int(v) for v in volume.shape),
            reoriented_shape=tuple(int(v) for v in record.reoriented_shape),
            in_channels=model.accepts.channels,
            out_channels=model.out_channels,
            spatial_dims=model.spatial_dims,
            source_itemsize=int(np.asarray(volume.array).dtype.itemsize),
            resampled=any(abs(s - 1.0) > 1e-9 for s in record.scale),
        )


def aggregation_planes(work: Workload, plan: Plan) -> int:
    """Depth of the aggregation buffer the engine will allocate (3D), or slices per chunk (2D)."""
    if work.spatial_dims == 2:
        return work.model_shape[2] if not plan.streaming else min(plan.slab_depth, work.model_shape[2])
    return streaming_planes(work.model_shape, tuple(plan.roi_size), plan.overlap, plan.sw_batch_size, plan.slab_depth)


def plan_windows(work: Workload, plan: Plan) -> int:
    """Windows the engine runs for ``work`` under ``plan``."""
    return window_count(work.model_shape, tuple(plan.roi_size), plan.overlap)


@dataclass
class Estimate:
    """Predicted peak bytes per component on the GPU and on the host.

    Components in ``*_phases`` are alive at different times (a window batch's activations, then a
    finalised chunk's inversion, ...): only the largest phase counts towards the peak.
    """

    gpu: dict[str, int] = field(default_factory=dict)
    host: dict[str, int] = field(default_factory=dict)
    gpu_phases: tuple[tuple[str, ...], ...] = ()
    host_phases: tuple[tuple[str, ...], ...] = ()

    @staticmethod
    def _peak(terms: dict[str, int], phases) -> int:
        grouped = {k for g in phases for k in g}
        base = sum(v for k, v in terms.items() if k not in grouped)
        return int(base + max((sum(terms.get(k, 0) for k in g) for g in phases), default=0))

    @property
    def gpu_peak(self) -> int:
        return self._peak(self.gpu, self.gpu_phases) if self.gpu else 0

    @property
    def host_peak(self) -> int:
        return self._peak(self.host, self.host_phases)

    def flat(self) -> dict[str, int]:
        out = {f"gpu.{k}": v for k, v in self.gpu.items()}
        out.update({f"host.{k}": v for k, v in self.host.items()})
        out["gpu.peak"] = self.gpu_peak
        out["host.peak"] = self.host_peak
        return out


def invert_bytes(work: Workload, push_planes: int | None = None) -> int:
    """Peak of SourceGridFinaliser: carried model planes plus the resampling temporaries of one chunk."""
    k = work.out_channels
    mx, my, mz = work.model_shape
    sx, sy, sz = work.reoriented_shape
    chunk = chunk_planes(k, sx * sy)
    ratio = mz / max(sz, 1)
    # pushed planes wait (with up to two carried ones) until the source planes they serve are due
    push = push_planes or chunk_planes(k, mx * my)  # model planes handed over at once
    carry_planes = min(mz, int(math.ceil(chunk * ratio)) + 2) if ratio > 1 else min(mz, push + 2)
    carry = k * mx * my * carry_planes * F32
    c = min(chunk, sz, int(math.ceil((push + 1) / max(ratio, 1e-9))))  # source planes one push serves
    if not work.resampled:  # labels are the argmax of the pushed planes: running maximum, labels, masks
        return int(carry + mx * my * c * (F32 + 2))
    kk = min(mz, int(math.ceil(c * ratio)) + 2)  # model planes those source planes interpolate
    return int(carry + source_labels_bytes(k, (mx, my, kk), (sx, sy, c)))


def estimate(work: Workload, plan: Plan, net: NetworkMemory, framework_host: int = 0) -> Estimate:
    """Predicted peak memory of running ``plan`` on ``work``, per component and device."""
    on_gpu = plan.device.startswith("cuda")
    dev_kind = "cuda" if on_gpu else "cpu"
    roi = tuple(int(r) for r in plan.roi_size)
    b = plan.sw_batch_size
    k, cin = work.out_channels, work.in_channels
    if work.spatial_dims == 3:
        padded = padded_shape(work.model_shape, roi)
        plane_vox = padded[0] * padded[1]
    else:
        padded = (*padded_shape(work.model_shape[:2], roi), work.model_shape[2])
        plane_vox = padded[0] * padded[1]
    depth = aggregation_planes(work, plan)
    roi_vox = vox(roi)
    model_vox = vox(work.model_shape)

    weights = net.weights
    act = net.activations(cin, roi, b, dev_kind)
    windows = b * cin * roi_vox * F32 + (b * k * roi_vox * F32 if plan.precision != "fp32" and on_gpu else 0)
    windows += constant_window_bytes(plan, k) if work.spatial_dims == 3 else 0  # one reused window's logits
    if work.spatial_dims == 3:
        aggregation = (k + 1) * plane_vox * depth * F32
        finalise_planes = min(chunk_planes(k, work.model_shape[0] * work.model_shape[1]), depth)
        finalise = k * work.model_shape[0] * work.model_shape[1] * finalise_planes * F32
    else:  # MONAI's inferer over a chunk of slices: sums and weights while the windows run, then the
        # divided output (a new tensor, made after the last window, alive with the inversion)
        aggregation = (k + 1) * plane_vox * depth * F32
        finalise, finalise_planes = k * plane_vox * depth * F32, depth
    image = cin * model_vox * F32
    if padded != tuple(work.model_shape) and work.spatial_dims == 3:
        image += cin * vox(padded) * F32
    src_vox = vox(work.source_shape)
    labels = src_vox  # uint8 labels on the source grid, filled as planes are finalised
    # planes handed to the inversion at once; a single 2D push is inverted in place (no carried copy)
    push = finalise_planes if work.spatial_dims == 3 else (depth if plan.streaming else 1)
    post = invert_bytes(work, push) + src_vox  # inversion temporaries; the reoriented copy at the end
    source = src_vox * work.source_itemsize
    preprocess = max(src_vox * F32 * 2 + model_vox * F32, model_vox * F32 * 3)
    to_host = b * k * roi_vox * F32 if plan.aggregation_device != plan.device else 0

    gpu: dict[str, int] = {}
    host: dict[str, int] = {"framework": int(framework_host), "input": source, "image": image, "labels": labels}
    if on_gpu:
        gpu["weights"] = weights
        gpu["activations"] = act
        gpu["windows"] = windows + to_host
        gpu["image"] = image if plan.image_device != "cpu" else 0
        if plan.aggregation_device != "cpu":
            gpu["aggregation"] = aggregation
            gpu["finalise"] = finalise
            host["finalise"] = finalise  # the divided chunk is copied to the host for inversion
        else:
            host["aggregation"] = aggregation
            host["windows"] = to_host
            host["finalise"] = finalise
        host["post_processing"] = post
        gpu["context"] = CUDA_CONTEXT_BYTES
        phases = (("activations", "windows"), ("finalise",))
        body = Estimate._peak({n: v for n, v in gpu.items() if n != "context"}, phases)
        gpu["allocator_slack"] = int(CUDA_ALLOCATOR_SLACK * body)
        gpu_phases = phases
        host_phases = (("windows",), ("finalise", "post_processing"), ("preprocess_transient",))
    else:
        host["weights"] = weights
        host["activations"] = act
        host["windows"] = windows
        host["aggregation"] = aggregation
        host["finalise"] = finalise
        host["post_processing"] = post
        gpu_phases = ()
        host_phases = (("activations", "windows"), ("finalise", "post_processing"), ("preprocess_transient",))
    host["preprocess_transient"] = max(0, preprocess - image - host.get("aggregation", 0) - labels)
    return Estimate(gpu, host, gpu_phases, host_phases)


def full_buffer_bytes(work: Workload) -> int:
    """MONAI's default output buffer: classes x all voxels, float32 (plus its weight map)."""
    return int((work.out_channels + 1) * vox(work.model_shape) * F32)
