"""What this machine can run: ``--device`` and ``--precision`` requests it cannot serve are one line, exit 2,
for every command that takes them and for every model family where the model opens."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from medseg import devices
from medseg.cli import main
from medseg.errors import MedsegError

torch = pytest.importorskip("torch")

no_gpu = pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA GPU is present: the request would be served")
AVX2_ONLY = "this CPU (AVX2) has no bfloat16 convolution support (PyTorch's oneDNN needs AVX-512 BW/VL/DQ)"
SAMPLE = "sample_data/chest_ct.nii.gz"


def _run(args, tmp_path):
    return CliRunner().invoke(main, [str(a) for a in args])


def _one_line_usage_error(result, *needles):
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("medseg: error: "), result.stderr
    assert "Traceback" not in result.output
    for needle in needles:
        assert needle in lines[0]


@no_gpu
@pytest.mark.parametrize("device", ["cuda", "cuda:0", "cuda:1"])
@pytest.mark.parametrize(
    "command",
    [
        ["infer", SAMPLE, "-o", "{tmp}/x.nii.gz"],
        ["infer", SAMPLE, "-o", "{tmp}/x.nii.gz", "--model", "nnunet-phantom"],
        ["plan", SAMPLE, "--model", "phantom-unet3d"],
        ["batch", "sample_data", "-o", "{tmp}/out"],
    ],
    ids=["infer", "infer-nnunet", "plan", "batch"],
)
def test_cuda_without_a_gpu_is_one_line_exit_2(command, device, tmp_path):
    args = [a.format(tmp=tmp_path) for a in command] + ["--device", device]
    result = _run(args, tmp_path)
    if command[0] == "plan":  # plans for a GPU that is not here, given its size (tests/inference/test_gpu_plan.py)
        _one_line_usage_error(result, "--device", "this machine has no such CUDA GPU", "give --gpu-memory")
    else:
        _one_line_usage_error(result, "--device", "no CUDA GPU is available", "--device cpu")
    assert not list(tmp_path.iterdir())  # nothing read, nothing written


@no_gpu
@pytest.mark.parametrize("model", ["phantom-unet3d", "ct-anatomy", "nnunet-phantom"])
def test_every_family_refuses_cuda_where_it_opens(model):
    from medseg.models.registry import open_model

    with pytest.raises(MedsegError, match="no CUDA GPU is available"):
        open_model(model, "cuda")


@no_gpu
def test_the_widget_offers_only_usable_devices_and_refuses_cuda_in_one_line():
    from medseg.viewer.actions import get_segmenter

    assert devices.available_devices() == ("auto", "cpu")
    with pytest.raises(MedsegError, match="^--device cuda requested but .*no CUDA GPU is available"):
        get_segmenter("phantom-unet3d", "cuda")


def test_unknown_devices_are_usage_errors(tmp_path):
    _one_line_usage_error(_run(["infer", SAMPLE, "--device", "tpu"], tmp_path), "--device", "unknown device 'tpu'")
    _one_line_usage_error(_run(["infer", SAMPLE, "--device", "cuda:x"], tmp_path), "--device", "cuda:N")


def test_bf16_probe_agrees_with_torch():
    probe = torch.ops.mkldnn._is_mkldnn_bf16_supported()
    assert (devices.cpu_bf16_problem() is None) == bool(probe)


def test_bf16_on_a_cpu_without_it_is_one_line_exit_2(monkeypatch, tmp_path):
    """On an AVX2-only CPU, --precision bf16 is refused where the option enters, naming what the CPU lacks
    and the alternative, for every command that takes it; fp32 is unaffected."""
    monkeypatch.setattr(devices, "cpu_bf16_problem", lambda: AVX2_ONLY)
    for command in (
        ["infer", SAMPLE, "-o", tmp_path / "x.nii.gz", "--model", "nnunet-phantom"],
        ["plan", SAMPLE, "--model", "nnunet-phantom"],
        ["batch", "sample_data", "-o", tmp_path / "out", "--model", "nnunet-phantom"],
    ):
        result = _run([*command, "--precision", "bf16", "--device", "cpu"], tmp_path)
        _one_line_usage_error(result, "--precision", "(AVX2) has no bfloat16", "use --precision fp32")
    assert not list(tmp_path.iterdir())


def test_bf16_is_only_checked_on_the_cpu(monkeypatch):
    monkeypatch.setattr(devices, "cpu_bf16_problem", lambda: AVX2_ONLY)
    devices.check_precision("fp32", "cpu")
    devices.check_precision(None, "cpu")
    monkeypatch.setattr(devices, "resolve_device", lambda device: "cuda")  # nnU-Net runs float16 autocast on CUDA
    devices.check_precision("bf16", "cuda")
