"""A network's memory terms: its weights, and the peak of one forward pass traced on meta tensors.

**Activations** come from a forward pass of the network itself on ``meta`` tensors (no data, no
memory) under a ``TorchDispatchMode`` that counts the bytes of every live storage (a storage is
freed when its last tensor is, exactly as with real tensors under ``inference_mode``); the peak is
the activation term. Convolutions add their backend's transient workspace: the backend PyTorch
would pick for these shapes on the target device is asked with ``torch._C._select_conv_backend``
(on zero-stride CPU tensors, which occupy no memory). The im2col backends (``Slow3d``/``Slow2d``)
allocate ``N x C_in x prod(kernel) x out_voxels`` elements; oneDNN reorders the output to its
blocked layout (one extra output copy). On CUDA, cuDNN's workspace is bounded by the same im2col
size (GEMM-based algorithms) -- an upper bound, not measured here.

The measured counterpart, for tests and benchmarks, is
:func:`tests.reference.monai_full_buffer.profiled_peak_bytes`.
"""

from __future__ import annotations

import copy
import functools
import math
import weakref

import numpy as np
import torch
from torch.utils._pytree import tree_flatten

from medseg.inference.disk_cache import JsonCache, cache_key

#: bump when the activation trace's terms change: traced peaks cached on disk are keyed by it
TRACE_REVISION = 4


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
    if device_kind == CHANNELS_LAST_CPU:
        return _channels_last_workspace(x, w, out, bool(transposed), item)
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
    if transposed:
        # oneDNN deconvolution (AVX-512, torch profiler): the output and one more output-sized buffer, two
        # from an input of 2^19 elements on (128 x 16^3: 3 x the output alive; 64 x 16^3: 2 x)
        return int((2 if x.numel() >= 1 << 19 else 1) * out.numel() * item)
    # oneDNN convolution (AVX-512, torch profiler): the weights reordered, and the larger of the input and
    # the output in the blocked layout (channels padded to 16), alive with the output: 64->32 channels at
    # 64^3 is 32 MiB output + 64 MiB input + 0.2 MiB weights = the measured 96.2 MiB; 32->64 at 32^3 is
    # 8 + 8 (+0.2) MiB, measured 16.0; a strided 32->64 at 64^3 is 8 + 32 + 0.2, measured 40.2
    blocked_out = out.shape[0] * (-(-out.shape[1] // 16) * 16) * int(np.prod(out.shape[2:]))
    blocked_in = x.shape[0] * (-(-x.shape[1] // 16) * 16) * int(np.prod(x.shape[2:]))
    return int((max(blocked_in, blocked_out) + w.numel()) * item)


#: device kind of a network run by :func:`medseg.models.nnunet.cpu_layout.channels_last_network`
CHANNELS_LAST_CPU = "cpu-channels-last"


def _channels_last_workspace(x, w, out: torch.Tensor, transposed: bool, item: int) -> int:
    """Transient bytes beyond the output of the channels-last CPU layers (traced through the plain layers
    on meta tensors): oneDNN reads and writes NDHWC as it is, so a convolution adds its reordered
    weights only (the torch profiler shows no other allocation), and the output's channels-last copy
    where the input has one channel (oneDNN answers it in NCDHW); an upsampling (a matrix product) has
    its kernel blocks and their interleaved copy alive together."""
    out_bytes = out.numel() * item
    if transposed:
        return int(out_bytes)
    return int(w.numel() * item + (out_bytes if x.shape[1] == 1 else 0))


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


def weights_bytes(network: torch.nn.Module) -> int:
    return int(sum(t.numel() * t.element_size() for t in list(network.parameters()) + list(network.buffers())))


class NetworkMemory:
    """Weights and traced activation peaks of one network, cached per (roi, batch, device kind).

    ``network`` may hold real weights (it is copied onto the meta device) or be built on the meta
    device already (TorchScript cannot be traced: its family builds the same architecture there).
    """

    def __init__(self, network: torch.nn.Module) -> None:
        self.network = network if _is_meta(network) else to_meta(network)
        self.weights = weights_bytes(network)
        self._cache: dict[tuple, int] = {}

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
            cpu = (onednn_channel_block(), torch.get_num_threads()) if device_kind.startswith("cpu") else ()
            shape = (batch, in_channels, *roi)
            disk_key = cache_key(TRACE_REVISION, torch.__version__, device_kind, cpu, shape, repr(self.network))
            hit = disk.get(disk_key)
            if not isinstance(hit, int):
                hit = trace_activations(self.network, (batch, in_channels, *roi), device_kind)[0]
                disk.put(disk_key, hit)
            self._cache[key] = int(hit)
        return self._cache[key]
