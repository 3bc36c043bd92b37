"""Options shared by medseg's commands, declared once: parameter types checked where they enter (memory sizes,
folds, devices, ranges), the run options of ``infer``, ``plan`` and ``batch``, the family options and the DICOM
reader options (each folded into one keyword argument)."""

from __future__ import annotations

import functools

import click

from medseg.errors import MedsegError


class MemorySize(click.ParamType):
    """A memory budget: ``12GB``, ``800MB``, ``24 GiB`` or ``auto``; anything else, or zero, is a usage error."""

    name = "size"

    def convert(self, value, param, ctx):
        from medseg.inference.budget import parse_bytes

        if value is None or str(value).strip().lower() == "auto":
            return value
        try:
            size = parse_bytes(value)
        except MedsegError as err:
            self.fail(str(err), param, ctx)
        if size is None or size <= 0:
            self.fail(f"{value!r} is not a positive size (use e.g. 12GB, 800MB or auto)", param, ctx)
        return value


class FoldList(click.ParamType):
    """nnU-Net folds: ``0,1``, ``0 1`` or ``all``; fold numbers are non-negative integers."""

    name = "folds"

    def convert(self, value, param, ctx):
        from medseg.models.nnunet.folder import parse_folds

        bad = [str(f) for f in parse_folds(value) or [] if not (isinstance(f, int) or f == "all")]
        if bad:
            self.fail(f"{', '.join(bad)}: folds are numbers such as 0,1 (or all)", param, ctx)
        return None if value is None or not str(value).strip() else str(value)


def _positive_spacing(ctx, param, value):
    if value is not None and any(not (v > 0 and v < float("inf")) for v in value):
        raise click.BadParameter(f"voxel sizes must be positive and finite, got {' '.join(map(str, value))}")
    return value


class FiniteRange(click.FloatRange):
    """click's FloatRange that also refuses NaN (every comparison with NaN is false, so click lets it pass)."""

    def convert(self, value, param, ctx):
        number = super().convert(value, param, ctx)
        if number != number:
            self.fail(f"{value!r} is not a number", param, ctx)
        return number


class Device(click.ParamType):
    """``auto``, ``cpu``, ``cuda`` or ``cuda:N``; a CUDA device this machine does not have is a usage error
    (checked here, before any scan is read or model loaded)."""

    name = "device"

    def __init__(self, absent_gpu: bool = False) -> None:
        #: ``medseg plan`` plans for a GPU this machine lacks (with an explicit --gpu-memory): only the name is checked
        self.absent_gpu = absent_gpu

    def convert(self, value, param, ctx):
        from medseg.devices import check_device_name, resolve_device

        value = str(value).strip().lower()
        try:
            check_device_name(value)
            if not self.absent_gpu:
                resolve_device(value)
        except MedsegError as err:
            self.fail(err.problem.removeprefix(f"--device {value} requested but "), param, ctx)
        return value


OVERLAP = FiniteRange(0.0, 1.0, max_open=True)
MEMORY = MemorySize()
#: ``--device`` on infer, plan and batch
DEVICE_OPTION = click.option(
    "--device", type=Device(), default="auto", show_default=True, help="auto, cpu, cuda or cuda:N."
)
#: ``--model`` on infer, plan and batch
MODEL_OPTION = click.option(
    "--model",
    "model",
    default=None,
    help="Model name (see `medseg models`), ModelSpec .yaml, MONAI bundle, nnU-Net v2 results folder or "
    "totalsegmentator:TASK.",
)


#: the run options infer, plan and batch share, declared once
STATS_OPTION = click.option(
    "--stats", is_flag=True, help="Also write per-label statistics (<stem>_seg_stats.csv/.json)."
)
PREVIEW_OPTION = click.option("--preview", is_flag=True, help="Also write a PNG montage (<stem>_seg_preview.png).")
OVERLAP_OPTION = click.option(
    "--overlap", type=OVERLAP, default=None, help="Sliding-window overlap in [0, 1) (default: the model's)."
)
FORMAT_OPTION = click.option(
    "--format",
    "output_format",
    type=click.Choice(["nifti", "dicom-seg", "nifti+dicom-seg"]),
    default="nifti",
    show_default=True,
    help="Label NIfTI, a DICOM SEG referencing the source series (DICOM input), or both.",
)
SPLIT_MASKS_OPTION = click.option(
    "--split-masks", is_flag=True, help="Also write one mask per structure (<stem>_seg_masks/<name>.nii.gz)."
)
GPU_MEMORY_OPTION = click.option(
    "--gpu-memory",
    type=MEMORY,
    default=None,
    help="GPU memory budget for the planner: 12GB, 24GB, <N>GB or auto (free memory now; the default).",
)
HOST_MEMORY_OPTION = click.option(
    "--host-memory", type=MEMORY, default=None, help="Host RAM budget, e.g. 6GB (default: available RAM)."
)
TRUST_BUNDLE_OPTION = click.option(
    "--trust-bundle", is_flag=True, help="Evaluate a MONAI bundle's config (runs its code)."
)
FORCE_MODALITY_OPTION = click.option(
    "--force-modality", is_flag=True, help="Run the model even if the scan does not look like what it accepts."
)
CROP_TO_BODY_OPTION = click.option(
    "--crop-to-body", is_flag=True, help="Segment only the body's bounding box (CT); outside is background."
)


_READER_OPTIONS = (
    click.option("--series", default=None, help="Stack id, SeriesInstanceUID or SeriesNumber (DICOM)."),
    click.option(
        "--resample-irregular", is_flag=True, help="Interpolate DICOM stacks with missing slices/uneven gaps evenly."
    ),
    click.option("--keep-tilt", is_flag=True, help="Keep gantry tilt as a sheared affine instead of resampling."),
)


_MODEL_OPTIONS = (
    click.option(
        "--folds", type=FoldList(), default=None, help="nnU-Net: folds to ensemble, e.g. 0,1 (default: all present)."
    ),
    click.option("--tta/--no-tta", default=None, help="nnU-Net: mirroring test-time augmentation [default: on]."),
    click.option(
        "--step-size",
        type=FiniteRange(0.0, 1.0, min_open=True),
        default=None,
        help="nnU-Net: tile step, a fraction of the patch, in (0, 1] [0.5].",
    ),
    click.option(
        "--roi-subset",
        default=None,
        help="TotalSegmentator: only these structures, e.g. liver,spleen (crops by its coarse model first).",
    ),
    click.option(
        "--trust-checkpoint", is_flag=True, help="Unpickle checkpoints that hold more than tensors (runs code in them)."
    ),
    click.option(
        "--precision",
        type=click.Choice(["fp32", "bf16"]),
        default=None,
        help="nnU-Net/TotalSegmentator on the CPU: fp32 (the reference's) or bf16 autocast (faster on CPUs "
        "with AVX-512 BF16/AMX; labels may differ at boundaries) [fp32].",
    ),
)


def model_options(fn):
    """Add ``--folds``, ``--tta/--no-tta``, ``--step-size``, ``--roi-subset``, ``--trust-checkpoint`` and
    ``--precision``, folded into one kwarg ``model_options`` (a dict for :func:`medseg.models.registry.open_model`)."""

    @functools.wraps(fn)
    def wrapper(*args, folds, tta, step_size, roi_subset, trust_checkpoint, precision, **kwargs):
        from medseg.models.nnunet.folder import parse_folds

        options = {"folds": parse_folds(folds), "tta": tta, "step_size": step_size}
        options["trust_checkpoint"] = trust_checkpoint
        if precision:
            from medseg.devices import check_precision

            try:
                check_precision(precision, kwargs.get("device", "auto"))
            except MedsegError as err:
                raise click.BadParameter(
                    err.problem.removeprefix("--precision bf16: "), param_hint="--precision"
                ) from None
            options["precision"] = precision
        if roi_subset:
            options["roi_subset"] = [name.strip() for name in roi_subset.split(",") if name.strip()]
        return fn(*args, model_options=options, **kwargs)

    for option in reversed(_MODEL_OPTIONS):
        wrapper = option(wrapper)
    return wrapper


def reader_options(fn):
    """Add ``--series``, ``--resample-irregular`` and ``--keep-tilt`` to a command, folded into one kwarg.

    The command receives ``read_options: medseg.io.ReadOptions`` (never the three flags) and hands it
    to ``read_volume``, which refuses DICOM options on non-DICOM input. Place it among the
    ``click.option`` decorators, above ``@handle_errors``:

    \b
        @main.command()
        @click.argument("input_path", type=click.Path(path_type=Path))
        @reader_options
        @handle_errors
        def convert(input_path, read_options): ...
    """

    @functools.wraps(fn)
    def wrapper(*args, series, resample_irregular, keep_tilt, **kwargs):
        from medseg.io import ReadOptions

        try:
            options = ReadOptions(series=series, resample_irregular=resample_irregular, keep_tilt=keep_tilt)
        except ValueError as err:
            raise click.BadParameter(str(err), param_hint="--series") from None
        return fn(*args, read_options=options, **kwargs)

    for option in reversed(_READER_OPTIONS):  # click lists options in decorator order, top first
        wrapper = option(wrapper)
    return wrapper
