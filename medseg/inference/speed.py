"""Making the same windows cheaper: batch-norm folding and the CPU memory layout.

Neither changes what is computed, only how: the labels equal those of the plain network up to
float32 rounding (tests/inference/test_speed.py). Measured effects: benchmarks/README.md.

* :func:`fold_batchnorm`: an eval-mode ``BatchNorm`` right after a convolution is an affine map
  per channel, so it folds into the convolution's weights and bias (``torch.nn.utils.fusion``) and
  one pass over every activation disappears (MONAI's ``Convolution`` blocks: conv -> ADN(N, D, A)).
* :func:`tune_windows`: oneDNN's 3D convolutions on a CPU are often faster on ``channels_last_3d``
  tensors (no reorder into its blocked layout and back), and a smaller window batch is sometimes
  faster per window than a larger one (caches), but neither holds for every network and window
  size; both are timed once per network, roi and machine on random batches and the answer kept
  in ``~/.cache/medseg/layout.json``.
"""

from __future__ import annotations

import platform
import time

import torch
from torch.nn.utils.fusion import fuse_conv_bn_eval

from medseg.inference.disk_cache import JsonCache, cache_key

_CONV = (torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.Conv3d)
_CONV_T = (torch.nn.ConvTranspose1d, torch.nn.ConvTranspose2d, torch.nn.ConvTranspose3d)
_BN = (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d, torch.nn.BatchNorm3d)


def _foldable(conv, bn) -> bool:
    return (
        isinstance(conv, _CONV + _CONV_T)
        and isinstance(bn, _BN)
        and not bn.training
        and bn.track_running_stats
        and bn.running_mean is not None
        and bn.num_features == conv.out_channels
        and conv.weight.device.type != "meta"
    )


def _fold(conv, bn):
    return fuse_conv_bn_eval(conv, bn, transpose=isinstance(conv, _CONV_T))


def fold_batchnorm(network: torch.nn.Module) -> int:
    """Fold every eval-mode BatchNorm that directly follows a convolution into it, in place.

    Patterns: MONAI ``Convolution`` (children ``conv`` and ``adn`` whose first child is ``N``) and
    consecutive ``conv``, ``bn`` children of an ``nn.Sequential``. Returns how many were folded.
    A training-mode network, TorchScript and anything else are left alone.
    """
    if isinstance(network, torch.jit.ScriptModule) or network.training:
        return 0
    folded = 0
    with torch.no_grad():
        for module in list(network.modules()):
            conv, adn = getattr(module, "conv", None), getattr(module, "adn", None)
            if conv is not None and isinstance(adn, torch.nn.Sequential) and len(adn) and "N" in adn._modules:
                first = next(iter(adn._modules))
                if first == "N" and _foldable(conv, adn.N):
                    module.conv = _fold(conv, adn.N)
                    adn.N = torch.nn.Identity()
                    folded += 1
                    continue
            if isinstance(module, torch.nn.Sequential):
                names = list(module._modules)
                for a, b in zip(names, names[1:]):
                    conv, bn = module._modules[a], module._modules[b]
                    if _foldable(conv, bn):
                        module._modules[a] = _fold(conv, bn)
                        module._modules[b] = torch.nn.Identity()
                        folded += 1
    return folded


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _time_forward(network, x: torch.Tensor, repeats: int = 2) -> float:
    with torch.inference_mode():
        network(x)  # oneDNN creates its primitives on the first call
        best = float("inf")
        for _ in range(repeats):
            t = time.perf_counter()
            network(x)
            best = min(best, time.perf_counter() - t)
    return best


def tune_windows(network: torch.nn.Module, in_channels: int, roi: tuple[int, ...], max_batch: int) -> tuple[int, bool]:
    """The fastest ``(window batch, channels_last)`` for ``network`` on this CPU, per window.

    Window batches 1, 2, 4, .. up to ``max_batch`` (the memory plan's, so every candidate fits) in
    both memory layouts are timed once on a random batch and the answer cached, keyed by the
    network's architecture, the shapes, torch's thread count and version and the CPU model. Larger
    batches are not always faster on a CPU (measured once: 4 spleen U-Net windows of 96^3 took 0.32 s
    as two batches of 2 and 0.40 s as one of 4; equal in another run).
    """
    layouts = [False, True]
    if len(roi) != 3 or isinstance(network, torch.jit.ScriptModule):
        return max_batch, False
    batches = sorted({b for b in (1, 2, 4, 8, 16) if b <= max_batch} | {max_batch})
    threads = torch.get_num_threads()
    key = cache_key(torch.__version__, threads, _cpu_name(), in_channels, tuple(roi), batches, layouts, repr(network))
    cache = JsonCache("layout")
    hit = cache.get(key)
    if isinstance(hit, dict) and "batch" in hit:
        return int(hit["batch"]), bool(hit["channels_last"])
    timings = {}
    try:
        for cl in layouts:
            fmt = torch.channels_last_3d if cl else torch.contiguous_format
            network.to(memory_format=fmt)
            for b in batches:
                x = torch.rand((b, in_channels, *roi)).contiguous(memory_format=fmt)
                timings[(b, cl)] = _time_forward(network, x, repeats=1) / b
    finally:
        network.to(memory_format=torch.contiguous_format)
    plain = min(t for (b, cl), t in timings.items() if not cl)
    best = min(timings, key=timings.get)
    if best[1] and timings[best] > 0.95 * plain:  # a clear win only for a layout change
        best = min((k for k in timings if not k[1]), key=timings.get)
    seconds = {f"b{b}{' channels_last' if cl else ''}": round(t, 4) for (b, cl), t in timings.items()}
    cache.put(key, {"batch": best[0], "channels_last": best[1], "seconds_per_window": seconds})
    return best
