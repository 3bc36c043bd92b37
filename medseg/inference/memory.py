"""Memory estimator and planner: what a run will need, and the fastest plan that fits a budget.

Estimator. Every term is computed from shapes, never from a per-model constant:

* **activations**: a forward pass of the network itself on ``meta`` tensors (no data, no memory)
  under a ``TorchDispatchMode`` that counts the bytes of every live storage (a storage is freed
  when its last tensor is, exactly as with real tensors under ``inference_mode``); the peak is the
  activation term. Convolutions add their backend's transient workspace: the backend PyTorch
  would pick for these shapes on the target device is asked with
  ``torch._C._select_conv_backend`` (on zero-stride CPU tensors, which occupy no memory). The
  im2col backends (``Slow3d``/``Slow2d``) allocate ``N x C_in x prod(kernel) x out_voxels``
  elements; oneDNN reorders the output to its blocked layout (one extra output copy). On CUDA,
  cuDNN's workspace is bounded by the same im2col size (GEMM-based algorithms) -- an upper bound,
  not measured here.
* **windows**: the window batch cut from the image and its float32 logits (``fp32`` copy under
  autocast), and the copy to the aggregation device when it differs.
* **aggregation**: ``classes x padded X x padded Y x depth`` float32 sums plus one weight map
  ``X x Y x depth``, where depth is the whole volume (MONAI's full buffer) or the streaming
  engine's buffer (``buffer_planes``), plus one finalised chunk (16 planes) being divided.
* **post-processing**: the source-grid inversion's temporaries (interpolated logits for a chunk of
  source planes on each resampling pass), the label volume and its reoriented copy.
* **image / input / preprocessing**: the scan as read, the preprocessed float32 image (padded
  copy when it is smaller than the roi) and the transient peak of preprocessing.
* **framework**: on the host, this process's resident memory when planning (Python, torch,
  MONAI, the loaded model); on CUDA, the CUDA context and the caching allocator's slack, documented
  in ``benchmarks/README.md`` with their sources (not measured: no GPU was available).

Measured counterpart of the activation term: :func:`profiled_peak_bytes` runs one real forward
pass under ``torch.profiler`` (``profile_memory=True``) and replays its allocation events.

Planner: enumerates device placements (image and aggregation on the GPU or the host), window
batch sizes, full buffer or slab streaming, and -- only if nothing else fits -- smaller rois that
the network can take; keeps the candidates whose predicted peaks fit the budgets and picks the
one with the lowest predicted time (:func:`relative_cost`). When nothing fits it says what would.
"""

from __future__ import annotations

import functools
import math
import re
import weakref
from dataclasses import dataclass, field

import numpy as np
import torch

from medseg.errors import MedsegError
from medseg.inference.disk_cache import JsonCache, cache_key
from medseg.inference.host_memory import available_host_bytes
from medseg.inference.plan import Plan

GiB = 1 << 30
MiB = 1 << 20
F32 = 4
#: bump when the activation trace's terms change: traced peaks cached on disk are keyed by it
TRACE_REVISION = 2

#: CUDA context + kernels of torch/cuDNN/cuBLAS loaded on first use (see benchmarks/README.md)
CUDA_CONTEXT_BYTES = 600 * MiB
#: fraction of the device peak the caching allocator adds by rounding and fragmentation
CUDA_ALLOCATOR_SLACK = 0.10


# ---------------------------------------------------------------------------------------------
# budgets


def parse_bytes(text: str | int | float | None) -> int | None:
    """``"12GB"``, ``"24 GiB"``, ``"800MB"``, ``"6"`` (GB) -> bytes (GB = GiB = 2**30); ``auto``/None -> None."""
    if text is None:
        return None
    if isinstance(text, (int, float)):
        return int(text)
    s = str(text).strip().lower().replace(" ", "")
    if s in ("", "auto"):
        return None
    m = re.fullmatch(r"([0-9]*\.?[0-9]+)(gib|gb|g|mib|mb|m|tib|tb|t)?", s)
    if not m:
        raise MedsegError(f"cannot read memory size {text!r} (use e.g. 12GB, 24GB, 800MB or auto)")
    unit = (m.group(2) or "gb")[0]
    return int(float(m.group(1)) * {"m": MiB, "g": GiB, "t": 1024 * GiB}[unit])


def free_gpu_bytes(device: str) -> int:
    """Free memory on a CUDA device right now (``cudaMemGetInfo``)."""
    free, _total = torch.cuda.mem_get_info(torch.device(device))
    return int(free)


def process_rss_bytes() -> int:
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    import psutil

    return int(psutil.Process().memory_info().rss)


# ---------------------------------------------------------------------------------------------
# activation trace


def _fake_cpu(shape, dtype) -> torch.Tensor:
    """A CPU tensor of ``shape`` that occupies one element (all strides 0)."""
    return torch.empty(1, dtype=dtype).as_strided(tuple(int(s) for s in shape), (0,) * len(shape))


def conv_workspace_bytes(args: tuple, out: torch.Tensor, device_kind: str) -> int:
    """Transient bytes a convolution's backend allocates beyond its output."""
    x, w = args[0], args[1]
    stride, padding, dilation, transposed, output_padding, groups = args[3:9]
    item = out.element_size()
    kernel = int(np.prod(w.shape[2:]))
    if device_kind == "cuda":
        cols = x.shape[0] * (x.shape[1] // max(groups, 1)) * kernel * int(np.prod(out.shape[2:]))
        return int(cols * item)
    try:
        backend = torch._C._select_conv_backend(
            _fake_cpu(x.shape, x.dtype),
            _fake_cpu(w.shape, w.dtype),
            None,
            list(stride),
            list(padding),
            list(dilation),
            bool(transposed),
            list(output_padding),
            int(groups),
            None,
        )
        name = str(backend).rsplit(".", 1)[-1]
    except (RuntimeError, TypeError, AttributeError):
        name = "unknown"
    if name in ("Slow3d", "Slow2d"):
        one_by_one = kernel == 1 and all(s == 1 for s in stride) and all(p == 0 for p in padding)
        if one_by_one:
            return 0
        return int(x.shape[0] * x.shape[1] * kernel * int(np.prod(out.shape[2:])) * item)
    if name.startswith("SlowTranspose"):
        return int(w.shape[1] * groups * kernel * int(np.prod(x.shape[2:])) * item)
    if onednn_channel_block() == 8:
        return _onednn_avx2_workspace(x, w, out, bool(transposed), kernel, item)
    if transposed:  # oneDNN deconvolution: one operand reordered to channels-last
        return int(max(x.numel(), out.numel()) * item)
    # oneDNN convolution: the output in its blocked layout, channels padded to a multiple of 16
    blocked = out.shape[0] * (-(-out.shape[1] // 16) * 16) * int(np.prod(out.shape[2:]))
    return int(blocked * item)


@functools.cache
def onednn_channel_block() -> int:
    """Channels per block of oneDNN's CPU layouts here: 16 with AVX-512 (``aBcde16b``), else 8
    (``aBcde8b``), as ``ONEDNN_VERBOSE=1`` shows. Their kernels differ, and so do their buffers."""
    return 16 if torch.backends.cpu.get_cpu_capability().startswith("AVX512") else 8


def _onednn_avx2_workspace(x, w, out: torch.Tensor, transposed: bool, kernel: int, item: int) -> int:
    """Transient bytes beyond the output of oneDNN's AVX2 kernels (allocation order read from the
    torch profiler's memory events, layouts from ``ONEDNN_VERBOSE=1``).

    Convolution (``jit:avx2``): the input reordered to ``aBcde8b`` (kept plain below 8 channels),
    the weights reordered and the output computed in ``aBcde8b`` (channels padded to 8) are alive
    together; then the blocked output and its plain copy. Deconvolution (``brg_deconv``): a
    per-thread scratchpad (about ``C_in x (D + 3) x H x W`` elements plus 40 kB; fitted within
    3-7% for 16-64 channels on 12-16 voxel inputs, 15% high on 8 voxels), the channels-last input,
    weights and output; then the output and two plain copies.
    """
    out_bytes = out.numel() * item
    spatial_in = [int(s) for s in x.shape[2:]]
    if transposed:
        threads = max(torch.get_num_threads(), 1)
        per_thread = x.shape[1] * int(np.prod(spatial_in[1:])) * (spatial_in[0] + 3) * item + 40_000
        during = threads * per_thread + x.numel() * item + w.numel() * item + out_bytes
        return int(max(during, 3 * out_bytes) - out_bytes)
    cin, cout = int(x.shape[1]), int(out.shape[1])
    pad = -(-cout // 8) * 8
    blocked_out = out.shape[0] * pad * int(np.prod(out.shape[2:])) * item
    if cin < 8:  # oneDNN's first-layer kernels read the plain input
        blocked_in, weights = 0, pad * cin * kernel * item
    else:
        blocked_in = x.shape[0] * (-(-cin // 8) * 8) * int(np.prod(spatial_in)) * item
        weights = pad * (-(-w.shape[1] // 8) * 8) * kernel * item
    return int(max(blocked_in + weights + blocked_out, blocked_out + out_bytes) - out_bytes)


def _conv_args(func, args: tuple, kwargs: dict) -> tuple | None:
    """``aten.convolution``-style arguments for any aten convolution overload, else None."""
    name = func.overloadpacket.__name__ if hasattr(func, "overloadpacket") else ""
    if name not in (
        "convolution",
        "conv1d",
        "conv2d",
        "conv3d",
        "conv_transpose1d",
        "conv_transpose2d",
        "conv_transpose3d",
        "_convolution",
    ):
        return None
    x, w = args[0], args[1]
    n = w.dim() - 2
    bias = args[2] if len(args) > 2 else kwargs.get("bias")

    def arg(i, key, default):
        v = args[i] if len(args) > i else kwargs.get(key, default)
        return [v] * n if isinstance(v, int) else list(v)

    if name in ("convolution", "_convolution"):
        return tuple(args[:9])
    if name.startswith("conv_transpose"):
        groups = args[6] if len(args) > 6 else kwargs.get("groups", 1)
        return (
            x,
            w,
            bias,
            arg(3, "stride", 1),
            arg(4, "padding", 0),
            arg(7, "dilation", 1),
            True,
            arg(5, "output_padding", 0),
            groups,
        )
    padding = args[4] if len(args) > 4 else kwargs.get("padding", 0)
    if isinstance(padding, str):  # "same"/"valid": only the shape matters for the workspace
        padding = [(k - 1) // 2 for k in w.shape[2:]] if padding == "same" else [0] * n
    padding = [padding] * n if isinstance(padding, int) else list(padding)
    groups = args[6] if len(args) > 6 else kwargs.get("groups", 1)
    return (x, w, bias, arg(3, "stride", 1), padding, arg(5, "dilation", 1), False, [0] * n, groups)


class _LiveBytes(torch.utils._python_dispatch.TorchDispatchMode):
    """Counts bytes of live storages created by ops, and their peak (plus transient workspace)."""

    def __init__(self, device_kind: str) -> None:
        super().__init__()
        self.device_kind = device_kind
        self.refs: dict[int, int] = {}
        self.sizes: dict[int, int] = {}
        self.current = 0
        self.peak = 0

    def _release(self, key: int) -> None:
        self.refs[key] -= 1
        if self.refs[key] == 0:
            self.current -= self.sizes.pop(key)
            del self.refs[key]

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        from torch.utils._pytree import tree_flatten

        out = func(*args, **(kwargs or {}))
        conv_args = _conv_args(func, args, kwargs or {})
        extra = conv_workspace_bytes(conv_args, out, self.device_kind) if conv_args else 0
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor):
                storage = t.untyped_storage()
                key = storage._cdata
                if key not in self.refs:
                    self.refs[key] = 0
                    self.sizes[key] = storage.nbytes()
                    self.current += storage.nbytes()
                self.refs[key] += 1
                weakref.finalize(t, self._release, key)
        self.peak = max(self.peak, self.current + extra)
        return out


def to_meta(network: torch.nn.Module) -> torch.nn.Module:
    """A copy of ``network`` with parameters and buffers on the meta device (no weight memory)."""
    import copy

    memo: dict[int, object] = {}
    for t in list(network.parameters()) + list(network.buffers()):
        m = torch.empty_like(t, device="meta")
        memo[id(t)] = torch.nn.Parameter(m, requires_grad=False) if isinstance(t, torch.nn.Parameter) else m
    return copy.deepcopy(network, memo)


def _is_meta(network: torch.nn.Module) -> bool:
    return all(p.is_meta for p in network.parameters())


def trace_activations(
    network: torch.nn.Module, input_shape: tuple[int, ...], device_kind: str = "cpu", dtype=torch.float32
) -> tuple[int, tuple[int, ...]]:
    """Peak live bytes of one forward pass on an input of ``input_shape`` (the input excluded).

    Returns ``(peak_bytes, output_shape)``. ``network`` may hold real weights: it is copied onto the
    meta device first (no weight memory).
    """
    meta = network if _is_meta(network) else to_meta(network)
    meta.eval()
    x = torch.empty(input_shape, device="meta", dtype=dtype)
    mode = _LiveBytes(device_kind)
    with torch.inference_mode(), mode:
        out = meta(x)
    if isinstance(out, (tuple, list)):
        out = out[0]
    shape = tuple(int(s) for s in out.shape)
    del out
    return int(mode.peak), shape


def profiled_peak_bytes(network: torch.nn.Module, x: torch.Tensor) -> int:
    """Measured counterpart of :func:`trace_activations`: peak live bytes of PyTorch's CPU
    allocations during ``network(x)`` on real tensors (``x`` excluded, the output included).

    Runs the forward pass under ``torch.profiler`` with ``profile_memory=True`` and replays its
    ``[memory]`` events (one per allocation, positive bytes, and per free, negative) in time
    order. They are read from the profiler's Kineto results, because ``prof.events()`` folds each
    allocation into the operator that made it (an im2col buffer allocated and freed inside one op
    nets to zero there). Allocations outside PyTorch's allocator (MKL/oneDNN internals, freed
    memory the C library keeps) are not seen: process RSS covers those.
    """
    from torch.profiler import ProfilerActivity, profile

    with torch.inference_mode(), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        out = network(x)
    del out
    events = [
        (e.start_ns(), e.nbytes())
        for e in prof.profiler.kineto_results.events()
        if e.name() == "[memory]" and e.device_type() == torch.autograd.DeviceType.CPU
    ]
    live = peak = 0
    for _, nbytes in sorted(events, key=lambda e: e[0]):
        live += nbytes
        peak = max(peak, live)
    return int(peak)


def weights_bytes(network: torch.nn.Module) -> int:
    return int(sum(t.numel() * t.element_size() for t in list(network.parameters()) + list(network.buffers())))


# ---------------------------------------------------------------------------------------------
# what a run needs


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
    def from_volume(cls, volume, spec) -> Workload:
        from medseg.inference.preprocess import plan_grid

        record = plan_grid(volume, spec)
        return cls(
            model_shape=tuple(int(v) for v in record.model_shape),
            source_shape=tuple(int(v) for v in volume.shape),
            reoriented_shape=tuple(int(v) for v in record.reoriented_shape),
            in_channels=spec.network.in_channels,
            out_channels=spec.network.out_channels,
            spatial_dims=spec.network.spatial_dims,
            source_itemsize=int(np.asarray(volume.array).dtype.itemsize),
            resampled=any(abs(s - 1.0) > 1e-9 for s in record.scale),
        )


class NetworkModel:
    """Weights and traced activation peaks of one network, cached per (roi, batch, device kind)."""

    def __init__(self, network: torch.nn.Module) -> None:
        self.network = network if _is_meta(network) else to_meta(network)
        self.weights = weights_bytes(network)
        self._cache: dict[tuple, tuple[int, tuple[int, ...]]] = {}

    @classmethod
    def for_spec(cls, spec, loaded: torch.nn.Module | None = None) -> NetworkModel:
        """Built from the spec on the meta device (also for TorchScript weights, which cannot be traced)."""
        from medseg.models.registry import build_network

        if isinstance(loaded, torch.nn.Module) and not isinstance(loaded, torch.jit.ScriptModule):
            return cls(loaded)
        with torch.device("meta"):
            net = build_network(spec)
        return cls(net)

    def activations(self, in_channels: int, roi: tuple[int, ...], batch: int, device_kind: str) -> int:
        """Traced at batch 1 and 2; larger batches scale the batch-2 trace (same backends as batch 2)."""
        if batch <= 2:
            return self._trace(in_channels, roi, batch, device_kind)
        two = self._trace(in_channels, roi, 2, device_kind)
        return int(math.ceil(two * batch / 2))

    def _trace(self, in_channels, roi, batch, device_kind) -> int:
        key = (in_channels, tuple(roi), batch, device_kind)
        if key not in self._cache:
            # traced peaks on disk: the first trace in a process costs about 2 s (PyTorch loads its
            # Python dispatcher); keyed by the estimator's revision, torch version, device kind, the
            # CPU's oneDNN block and thread count (its buffers), input shape and architecture
            disk = JsonCache("activations")
            cpu = (onednn_channel_block(), torch.get_num_threads()) if device_kind == "cpu" else ()
            shape = (batch, in_channels, *roi)
            disk_key = cache_key(TRACE_REVISION, torch.__version__, device_kind, cpu, shape, repr(self.network))
            hit = disk.get(disk_key)
            if not isinstance(hit, int):
                hit = trace_activations(self.network, (batch, in_channels, *roi), device_kind)[0]
                disk.put(disk_key, hit)
            self._cache[key] = (int(hit), ())
        return self._cache[key][0]


def _vox(shape) -> int:
    return int(np.prod([int(s) for s in shape], dtype=np.int64))


def padded_shape(shape: tuple[int, ...], roi: tuple[int, ...]) -> tuple[int, ...]:
    return tuple(max(int(s), int(r)) for s, r in zip(shape, roi))


def aggregation_planes(work: Workload, plan: Plan) -> int:
    """Depth of the aggregation buffer the engine will allocate (3D), or slices per chunk (2D)."""
    from medseg.inference.engine import buffer_planes, window_starts

    if work.spatial_dims == 2:
        return work.model_shape[2] if not plan.streaming else min(plan.slab_depth, work.model_shape[2])
    padded = padded_shape(work.model_shape, plan.roi_size)
    if not plan.streaming:
        return padded[2]
    starts = window_starts(padded, tuple(plan.roi_size), plan.overlap)
    need = buffer_planes(starts, int(plan.roi_size[2]), plan.sw_batch_size)
    return min(max(need, plan.slab_depth), padded[2])


def window_count(work: Workload, plan: Plan) -> int:
    from medseg.inference.engine import window_starts

    if work.spatial_dims == 2:
        padded = padded_shape(work.model_shape[:2], plan.roi_size)
        return len(window_starts(padded, tuple(plan.roi_size), plan.overlap)) * work.model_shape[2]
    padded = padded_shape(work.model_shape, plan.roi_size)
    return len(window_starts(padded, tuple(plan.roi_size), plan.overlap))


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
    from medseg.inference.engine import chunk_planes
    from medseg.inference.preprocess import source_labels_bytes

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


def estimate(work: Workload, plan: Plan, net: NetworkModel, framework_host: int = 0) -> Estimate:
    """Predicted peak memory of running ``plan`` on ``work``, per component and device."""
    from medseg.inference.engine import chunk_planes, constant_window_bytes

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
    roi_vox = _vox(roi)
    model_vox = _vox(work.model_shape)

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
        image += cin * _vox(padded) * F32
    src_vox = _vox(work.source_shape)
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
    return int((work.out_channels + 1) * _vox(work.model_shape) * F32)


# ---------------------------------------------------------------------------------------------
# planner


def roi_divisor(spec) -> int:
    """The factor every roi side must be a multiple of for the spec's network to take it."""
    net = spec.network
    kw = net.kwargs
    if net.cls in ("UNet",):
        return int(np.prod(kw.get("strides", [2, 2, 2, 2])))
    if net.cls == "BasicUNet":
        return 16
    if net.cls == "SegResNet":
        return 2 ** (len(kw.get("blocks_down", (1, 2, 2, 4))) - 1)
    if net.cls == "DynUNet":
        strides = kw.get("strides", [1, 2, 2, 2])
        return int(np.prod([s if isinstance(s, int) else max(s) for s in strides]))
    if net.cls in ("SwinUNETR",):
        return 32
    if net.cls == "UNETR":
        return 16
    if net.cls == "AttentionUnet":
        return int(np.prod(kw.get("strides", [2, 2, 2, 2])))
    return 16


def smaller_rois(roi: tuple[int, ...], divisor: int) -> list[tuple[int, ...]]:
    """Smaller rois the network can take, largest first: the slab axis shrinks first (it sets the
    streaming buffer's depth), then every axis."""

    def down(v: float) -> int:
        return max(divisor, int(v) // divisor * divisor)

    out: list[tuple[int, ...]] = []
    for f in (0.75, 0.5, 0.375, 0.25):
        out.append((*roi[:-1], down(roi[-1] * f)))
    for f in (0.75, 0.5):
        out.append(tuple(down(r * f) for r in roi[:-1]) + (down(roi[-1] * 0.25),))
    seen, uniq = {tuple(roi)}, []
    for r in out:
        if r not in seen:
            seen.add(r)
            uniq.append(r)
    return uniq


def relative_cost(work: Workload, plan: Plan) -> float:
    """Predicted relative run time: network voxels computed, per-batch overhead, transfers, slides.

    Heuristic weights (documented, not measured per model): a window batch costs its voxels plus a
    fixed overhead of 5% of one window; logits copied device -> host cost 10% of their compute;
    streaming slides copy about half the buffer per slab (5% of a full buffer pass).
    """
    n = window_count(work, plan)
    roi_vox = _vox(plan.roi_size)
    batches = math.ceil(n / plan.sw_batch_size)
    cost = n * roi_vox + batches * 0.05 * roi_vox
    if plan.device.startswith("cuda") and plan.aggregation_device == "cpu":
        cost += 0.10 * n * roi_vox
    if plan.device.startswith("cuda") and plan.image_device == "cpu":
        cost += 0.02 * n * roi_vox
    if plan.streaming:
        cost += 0.05 * _vox(work.model_shape)
    return float(cost)


@dataclass
class PlanResult:
    plan: Plan
    estimate: Estimate
    fits: bool
    cost: float
    message: str = ""


def plan_memory(
    work: Workload,
    spec,
    net: NetworkModel,
    device: str = "cpu",
    gpu_budget: int | None = None,
    host_budget: int | None = None,
    overlap: float | None = None,
    framework_host: int | None = None,
    weights_loaded_here: bool = False,
) -> PlanResult:
    """The fastest plan whose predicted peaks fit ``gpu_budget`` and ``host_budget`` (bytes).

    ``None`` budgets mean: free memory on the device now (``auto``) and MemAvailable on the host.
    When nothing fits, the smallest plan is returned with ``fits=False`` and a message that says
    which budget would suffice.
    """
    inf = spec.inference
    on_gpu = device.startswith("cuda")
    if framework_host is None:  # this process now; weights are their own term
        framework_host = max(0, process_rss_bytes() - (net.weights if weights_loaded_here else 0))
    if on_gpu and gpu_budget is None:
        gpu_budget = free_gpu_bytes(device)
    if host_budget is None:
        host_budget = available_host_bytes() + process_rss_bytes()
    base = Plan(
        device=device,
        roi_size=tuple(inf.roi_size),
        sw_batch_size=inf.sw_batch_size,
        overlap=inf.overlap if overlap is None else overlap,
        blend=inf.blend,
        precision=inf.precision if on_gpu else "fp32",
        aggregation_device=device,
        image_device=device,
    )
    budgets = {"host": int(host_budget)}
    if on_gpu:
        budgets["gpu"] = int(gpu_budget)
    rois = [base.roi_size] + smaller_rois(base.roi_size, roi_divisor(spec))
    batch_options = sorted({1, 2, 4, 8, 16, inf.sw_batch_size} if on_gpu else {1, inf.sw_batch_size})
    placements = [(device, device)] if not on_gpu else [(device, device), ("cpu", device), ("cpu", "cpu")]
    smallest: PlanResult | None = None
    for roi in rois:
        results = []
        for batch in batch_options:
            for agg, img in placements:
                for slab in (0, 1):
                    cand = base.replace(
                        roi_size=tuple(roi), sw_batch_size=batch, aggregation_device=agg, image_device=img
                    )
                    if slab:
                        cand = cand.replace(slab_depth=_min_slab(work, cand))
                    est = estimate(work, cand, net, framework_host)
                    fits = est.host_peak <= budgets["host"] and (not on_gpu or est.gpu_peak <= budgets["gpu"])
                    res = PlanResult(cand, est, fits, relative_cost(work, cand))
                    results.append(res)
                    key = (est.gpu_peak if on_gpu else 0, est.host_peak)
                    if smallest is None or key < (
                        smallest.estimate.gpu_peak if on_gpu else 0,
                        smallest.estimate.host_peak,
                    ):
                        smallest = res
        fitting = [r for r in results if r.fits]
        if fitting:
            best = min(fitting, key=lambda r: (r.cost, r.estimate.host_peak, r.estimate.gpu_peak))
            notes = []
            if tuple(roi) != tuple(base.roi_size):
                notes.append(
                    f"roi reduced from {list(base.roi_size)} to {list(roi)}: the model's roi does not fit the budget"
                )
            if best.plan.streaming:
                notes.append(
                    f"slab streaming: the full buffer would need {_fmt(full_buffer_bytes(work))} for "
                    f"{work.out_channels} classes x {'x'.join(map(str, work.model_shape))} voxels"
                )
            best.plan = _finish(best.plan, best.estimate, budgets, notes)
            return best
    assert smallest is not None
    need = [f"host {_fmt(smallest.estimate.host_peak)}"]
    if on_gpu:
        need.insert(0, f"GPU {_fmt(smallest.estimate.gpu_peak)}")
    msg = (
        f"nothing fits the budget ({', '.join(f'{k} {_fmt(v)}' for k, v in budgets.items())}); the smallest plan "
        f"(roi {list(smallest.plan.roi_size)}, batch 1, slab streaming"
        f"{', buffers on the host' if on_gpu else ''}) needs {' and '.join(need)}"
        + ("; on the CPU it needs less GPU memory (--device cpu)" if on_gpu else "")
    )
    smallest.plan = _finish(smallest.plan, smallest.estimate, budgets, [msg])
    smallest.message = msg
    return smallest


def _min_slab(work: Workload, plan: Plan) -> int:
    if work.spatial_dims == 2:
        return max(1, min(work.model_shape[2], 8))
    return max(1, int(plan.roi_size[2]))


#: the fast host allocator (freed blocks kept for reuse, host_memory.use_host_allocator) only when
#: ``predicted host peak x HEADROOM + EXTRA`` fits the host budget: with it the process measured up
#: to 1.31x the strict-mode peak (benchmarks/README.md), a retention this model does not predict
FAST_ALLOCATOR_HEADROOM = 1.5
FAST_ALLOCATOR_EXTRA = 512 * MiB


def host_allocator_for(est: Estimate, budgets: dict[str, int]) -> str:
    fast = est.host_peak * FAST_ALLOCATOR_HEADROOM + FAST_ALLOCATOR_EXTRA <= budgets["host"]
    return "fast" if fast else "strict"


def _finish(plan: Plan, est: Estimate, budgets: dict[str, int], notes: list[str]) -> Plan:
    return plan.replace(
        predicted_bytes=est.flat(),
        budget_bytes=dict(budgets),
        notes=tuple(notes),
        host_allocator=host_allocator_for(est, budgets),
    )


def _fmt(n: int | float) -> str:
    n = float(n)
    if n >= GiB:
        return f"{n / GiB:.2f} GiB"
    return f"{n / MiB:.0f} MiB"


def describe(result: PlanResult, work: Workload) -> str:
    """The plan as a short table for ``medseg plan``."""
    p = result.plan
    est = result.estimate
    lines = [
        f"device            {p.device}  (precision {p.precision})",
        f"model grid        {'x'.join(map(str, work.model_shape))} voxels, {work.out_channels} classes, "
        f"{work.spatial_dims}D network",
        f"roi               {'x'.join(map(str, p.roi_size))}  overlap {p.overlap}  blend {p.blend}",
        f"window batch      {p.sw_batch_size}  ({window_count(work, p)} windows)",
        f"image on          {p.image_device}",
        f"host allocator    {p.host_allocator}"
        + ("  (freed blocks reused: faster, peak may exceed the prediction)" if p.host_allocator == "fast" else ""),
        f"aggregation on    {p.aggregation_device}  "
        + (f"slab streaming, {aggregation_planes(work, p)} planes" if p.streaming else "full buffer"),
        "",
        f"{'predicted peak':<26}{'GPU':>12}{'host':>12}",
    ]
    names = list(dict.fromkeys(list(est.gpu) + list(est.host)))
    for name in names:
        g = est.gpu.get(name)
        h = est.host.get(name)
        lines.append(f"  {name:<24}{_fmt(g) if g else '-':>12}{_fmt(h) if h else '-':>12}")
    lines.append(
        f"  {'total':<24}{_fmt(est.gpu_peak) if est.gpu else '-':>12}{_fmt(est.host_peak):>12}",
    )
    budget = p.budget_bytes
    lines.append(
        f"  {'budget':<24}{_fmt(budget['gpu']) if 'gpu' in budget else '-':>12}{_fmt(budget.get('host', 0)):>12}"
    )
    lines.append(f"MONAI full buffer would need {_fmt(full_buffer_bytes(work))} for the output alone")
    lines.append("fits the budget" if result.fits else "DOES NOT FIT")
    lines += [f"note: {n}" for n in p.notes]
    return "\n".join(lines)
