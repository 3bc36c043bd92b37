"""What this machine can run: the device a run asks for and the CPU features a precision needs.

Checked where the option enters (the CLI's ``--device`` and ``--precision``, the napari widget's device
list, and the models that take them), so that a request the machine cannot serve is one line naming what
is missing, never a torch error from inside a run. torch is imported on first use.
"""

from __future__ import annotations

from medseg.errors import MedsegError

#: what ``--device`` takes
DEVICE_HELP = "auto, cpu, cuda or cuda:N."


def resolve_device(device: str | None = "auto") -> str:
    """``auto`` -> ``cuda`` when a CUDA GPU is usable, else ``cpu``; an explicit CUDA request is checked.

    Raises:
        MedsegError: ``cuda``/``cuda:N`` without a usable CUDA GPU (a CPU-only torch build, no driver, no
            such index), or a device name medseg does not know.
    """
    import torch

    device = (device or "auto").strip().lower()
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu":
        return "cpu"
    if device == "cuda" or device.startswith("cuda:"):
        index = 0
        if ":" in device:
            try:
                index = int(device.split(":", 1)[1])
            except ValueError:
                raise MedsegError(f"bad device {device!r} (expected cuda or cuda:N)") from None
        if not torch.cuda.is_available():
            raise MedsegError(f"--device {device} requested but {_why_no_cuda(torch)} (use --device cpu)")
        if not 0 <= index < torch.cuda.device_count():
            raise MedsegError(f"--device {device}: only {torch.cuda.device_count()} CUDA device(s) present")
        return device
    raise MedsegError(f"unknown device {device!r} (expected {DEVICE_HELP[:-1]})")


def check_device_name(device: str | None) -> str:
    """``device`` if it is a device name medseg knows (``auto``, ``cpu``, ``cuda``, ``cuda:N``), whether or not
    this machine has it."""
    name = (device or "auto").strip().lower()
    if name in ("auto", "cpu", "cuda"):
        return name
    if name.startswith("cuda:"):
        if not name[5:].isdigit():
            raise MedsegError(f"bad device {name!r} (expected cuda or cuda:N)")
        return name
    raise MedsegError(f"unknown device {name!r} (expected {DEVICE_HELP[:-1]})")


def gpu_present(device: str = "cuda") -> bool:
    """Whether ``device`` (``cuda`` or ``cuda:N``) is a usable CUDA GPU here."""
    try:
        return resolve_device(device).startswith("cuda")
    except MedsegError:
        return False


def _why_no_cuda(torch) -> str:
    if not torch.backends.cuda.is_built():
        return f"this PyTorch ({torch.__version__}) is a CPU-only build, so no CUDA GPU is available"
    return "no CUDA GPU is available (no device or driver found)"


def available_devices() -> tuple[str, ...]:
    """The device names a chooser may offer here: ``auto``, ``cpu`` and each usable CUDA device."""
    import torch

    if not torch.cuda.is_available():
        return ("auto", "cpu")
    count = torch.cuda.device_count()
    return ("auto", "cpu", "cuda", *(f"cuda:{i}" for i in range(count) if count > 1))


def cpu_bf16_problem() -> str | None:
    """Why bfloat16 convolutions cannot run on this CPU, or ``None`` when they can.

    PyTorch's oneDNN convolutions take bfloat16 only on CPUs with AVX-512 BW, VL and DQ or with
    AVX-NE-CONVERT (``torch.ops.mkldnn._is_mkldnn_bf16_supported``); elsewhere they fail inside the
    run. Many x86-64 machines have AVX2 only.
    """
    import torch

    if not torch.backends.mkldnn.is_available():
        return f"this PyTorch ({torch.__version__}) has no oneDNN (mkldnn) CPU backend"
    probe = getattr(getattr(torch.ops, "mkldnn", None), "_is_mkldnn_bf16_supported", None)
    if probe is not None:
        supported = bool(probe())
    else:  # an older torch without the probe: try a tiny bf16 convolution
        try:
            x = torch.zeros(1, 1, 4, 4, 4, dtype=torch.bfloat16)
            w = torch.zeros(1, 1, 1, 1, 1, dtype=torch.bfloat16)
            torch.mkldnn_convolution(x, w, None, (0, 0, 0), (1, 1, 1), (1, 1, 1), 1)
            supported = True
        except RuntimeError:
            supported = False
    if supported:
        return None
    isa = torch.backends.cpu.get_cpu_capability()
    return (
        f"this CPU ({isa}) has no bfloat16 convolution support (PyTorch's oneDNN needs AVX-512 BW/VL/DQ or "
        "AVX-NE-CONVERT)"
    )


def check_precision(precision: str | None, device: str | None) -> None:
    """Refuse ``precision`` where it cannot run: ``bf16`` on a CPU without bfloat16 convolutions.

    ``device`` is what the run asked for (``auto`` resolves as the run would). On CUDA, nnU-Net's
    networks run under float16 autocast whatever ``--precision`` says, so nothing is checked there.

    Raises:
        MedsegError: one line naming what the CPU lacks and the alternative.
    """
    if (precision or "fp32").lower() != "bf16":
        return
    name = (device or "auto").strip().lower()
    if name.startswith("cuda") or (name == "auto" and resolve_device(name) != "cpu"):
        return  # a CUDA run (its availability is --device's check, not this one's)
    problem = cpu_bf16_problem()
    if problem:
        raise MedsegError(f"--precision bf16: {problem}; use --precision fp32 (the default)")
