"""The ``medseg`` command line: a thin click layer over the library.

Heavy modules (torch, monai) are imported inside the commands so that ``medseg --help`` is instant:
measured on the 2-core development VM, importing this module takes 0.2 s and importing the
inference pipeline (torch, MONAI, nibabel, SimpleITK) 2.5-5 s.
Errors a user can act on print as one line and exit 1; ``--debug`` shows the traceback.
"""

from __future__ import annotations

import functools
import os
import sys
import warnings
from pathlib import Path

import click

from medseg import __version__
from medseg.errors import MedsegError, OptionError, describe_error


def _fail(message: str) -> None:
    click.echo(f"medseg: error: {message}", err=True)
    sys.exit(1)


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """medseg's own warnings (e.g. DICOM tilt corrected) as one line; others as Python prints them."""
    if getattr(category, "medseg_warning", False):
        click.echo(f"medseg: warning: {message}", err=True)
    else:
        sys.stderr.write(warnings.formatwarning(message, category, filename, lineno, line))


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


def handle_errors(fn):
    """Turn errors into one line (:func:`medseg.errors.describe_error`) and exit code 1 unless --debug."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        ctx = click.get_current_context()
        debug = bool(ctx.find_root().params.get("debug"))
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("always", UserWarning)
                warnings.showwarning = _show_warning
                return fn(*args, **kwargs)
        except KeyboardInterrupt:
            _fail("interrupted")
        except (click.exceptions.Exit, click.ClickException, SystemExit):
            raise
        except OptionError as err:  # an option the chosen model does not take: a usage error, as click's
            if debug:
                raise
            raise click.UsageError(str(err)) from None
        except Exception as err:  # noqa: BLE001 - never a bare traceback for users
            if debug:
                raise
            message = describe_error(err)
            known = isinstance(err, (MedsegError, MemoryError)) or (isinstance(err, OSError) and err.strerror)
            _fail(message if known else f"{message} (rerun with --debug for the traceback)")

    return wrapper


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


class _Group(click.Group):
    """medseg's command group: a usage error is one line, ``medseg: error: <problem> (see 'medseg CMD
    --help')``, and exit code 2, as click's usage errors exit but without its usage block."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        try:
            code = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except click.UsageError as err:
            where = err.ctx.command_path if err.ctx is not None else "medseg"
            click.echo(f"medseg: error: {err.format_message().rstrip('.')} (see '{where} --help')", err=True)
            sys.exit(err.exit_code)
        except click.ClickException as err:
            err.show()
            sys.exit(err.exit_code)
        except click.Abort:
            click.echo("Aborted!", err=True)
            sys.exit(1)
        sys.exit(code if isinstance(code, int) else 0)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="medseg")
@click.option("--debug", is_flag=True, help="Show full tracebacks on errors.")
def main(debug: bool) -> None:
    """medseg: segment CT/MR volumes into label maps that keep the scan's exact geometry.

    \b
    Quick start:
      medseg infer sample_data/chest_ct.nii.gz --stats --preview
      medseg models
    """


@main.command()
@click.argument("input_path", metavar="INPUT", type=click.Path(path_type=Path))
@click.option(
    "-o", "--output", type=click.Path(path_type=Path), help="Label file (default: <stem>_seg.nii.gz beside INPUT)."
)
@MODEL_OPTION
@DEVICE_OPTION
@STATS_OPTION
@PREVIEW_OPTION
@OVERLAP_OPTION
@click.option("--quiet", "-q", is_flag=True, help="No progress display; only the summary line.")
@FORMAT_OPTION
@GPU_MEMORY_OPTION
@HOST_MEMORY_OPTION
@TRUST_BUNDLE_OPTION
@FORCE_MODALITY_OPTION
@CROP_TO_BODY_OPTION
@SPLIT_MASKS_OPTION
@reader_options
@model_options
@handle_errors
def infer(
    input_path,
    output,
    model,
    device,
    stats,
    preview,
    overlap,
    quiet,
    output_format,
    gpu_memory,
    host_memory,
    trust_bundle,
    force_modality,
    crop_to_body,
    split_masks,
    read_options,
    model_options,
) -> None:
    """Segment INPUT (.nii/.nii.gz, .nrrd, .mha, or a DICOM folder/file) and write labels on its exact grid.

    \b
    Example:
      medseg infer scan.nii.gz --stats --preview           (CT: the weights-free ct-anatomy model)
      medseg infer scan.nii.gz -o labels.nii.gz --model phantom-unet2d --device cpu --crop-to-body
      medseg infer dicom/CT_series/ --format nifti+dicom-seg
      medseg infer ct.nii.gz --model totalsegmentator:total --roi-subset liver,spleen --split-masks
    """
    from medseg.inference.host_memory import share_one_heap
    from medseg.inference.outputs import output_paths
    from medseg.inference.pipeline import infer_file
    from medseg.progress import Progress

    # worker threads (nnU-Net's TTA view workers, progress) allocate from the main heap, as the planner
    # assumes; set before any thread starts
    share_one_heap()
    try:  # an unusable output name is a usage error, before anything is read
        output_paths(input_path, output, output_format, split_masks)
    except MedsegError as err:
        raise click.BadParameter(str(err), param_hint="-o/--output") from None
    with Progress(enabled=not quiet) as progress:
        result = infer_file(
            input_path,
            output=output,
            model=model,
            device=device,
            stats=stats,
            preview=preview,
            overlap=overlap,
            progress=progress,
            output_format=output_format,
            gpu_memory=gpu_memory,
            host_memory=host_memory,
            trust_bundle=trust_bundle,
            read_options=read_options,
            tune_allocator=True,
            force_modality=force_modality,
            crop_to_body=crop_to_body,
            model_options=model_options,
            split_masks=split_masks,
        )
    click.echo(result.summary_line())


@main.command()
def models() -> None:
    """List the models medseg ships (built-in and configs/models/*.yaml): name, family, labels, weights state."""
    from medseg.models.registry import DEFAULT_MODEL, model_names, open_model

    for name in model_names():
        try:
            model = open_model(name)
        except MedsegError as err:
            click.echo(f"{name:18s} invalid: {err}")
            continue
        names = [v.name for v in model.foreground().values()]
        labels = ", ".join(names if len(names) <= 12 else [*names[:8], f"... ({len(names)} structures)"])
        version = f" v{model.version}" if model.version else ""
        default = " (default for CT)" if name == DEFAULT_MODEL else ""
        click.echo(f"{name:18s} {model.kind} {model.family}{version}{default} [{model.weights_status()}] {labels}")
        detail = f"{model.accepts.modality}, {model.accepts.intensity}" if model.accepts.intensity else ""
        for line in (model.description, detail):
            if line:
                click.echo(f"{'':18s} {line}")


@main.command()
@click.argument("out_dir", type=click.Path(path_type=Path))
@click.option("-n", "--count", type=click.IntRange(min=1), default=1, show_default=True, help="Number of phantoms.")
@click.option("--seed", default=0, show_default=True, help="Seed of the first phantom; the next ones count up.")
@click.option("--orientation", default=None, help="Voxel axis codes, e.g. RAS or LPS (default: random).")
@click.option(
    "--spacing", nargs=3, type=float, default=None, callback=_positive_spacing, help="Voxel size, mm (default: random)."
)
@click.option("--oblique/--no-oblique", default=None, help="Rotate the grid 5-20 degrees (default: random).")
@click.option(
    "--layout",
    type=click.Choice(["dataset", "flat"]),
    default="dataset",
    show_default=True,
    help="dataset: images/ and labels/ subfolders (for `medseg train`); flat: <name>.nii.gz and <name>_gt.nii.gz.",
)
@handle_errors
def phantom(out_dir, count, seed, orientation, spacing, oblique, layout) -> None:
    """Generate synthetic torso CT phantoms (HU) with ground-truth labels.

    \b
    Example:
      medseg phantom data/train -n 40 --seed 1000
    """
    from medseg.phantom import write_phantom

    for s in range(seed, seed + count):
        name = f"phantom_{s:05d}"
        if layout == "dataset":
            image, labels = out_dir / "images" / f"{name}.nii.gz", out_dir / "labels" / f"{name}.nii.gz"
        else:
            image, labels = out_dir / f"{name}.nii.gz", out_dir / f"{name}_gt.nii.gz"
        vol, _ = write_phantom(
            s,
            str(image),
            str(labels),
            axcodes=orientation,
            spacing=tuple(spacing) if spacing else None,
            oblique=oblique,
        )
        click.echo(f"{image}  {vol.shape} {''.join(vol.axcodes)} spacing {tuple(round(x, 2) for x in vol.spacing)}")


@main.command()
@click.argument("spec_path", metavar="[SPEC]", required=False, type=click.Path(path_type=Path))
@click.option(
    "--data", "data_dir", required=True, type=click.Path(path_type=Path), help="Folder with images/ and labels/."
)
@click.option("--out", "out_dir", required=True, type=click.Path(path_type=Path), help="Run folder (the result model).")
@click.option(
    "--init-from",
    default=None,
    help="Start from this model's weights (as --model: name, ModelSpec .yaml or folder, MONAI bundle).",
)
@click.option(
    "--labels",
    default=None,
    help="Label names in index order (kidney_left,kidney_right) or a JSON file [from DIR or the label sidecars].",
)
@click.option("--name", default=None, help="The result model's name [fine-tune: the --out folder's name; else SPEC's].")
@click.option(
    "--val-fraction",
    type=FiniteRange(0.0, 1.0, max_open=True),
    default=0.2,
    show_default=True,
    help="Share of the cases held out for validation (at least one of two or more; 0: none).",
)
@click.option(
    "--val", "val_dir", default=None, type=click.Path(path_type=Path), help="Validation cases folder instead."
)
@click.option("--steps", type=click.IntRange(min=1), default=2000, show_default=True)
@click.option("--batch-size", type=click.IntRange(min=1), default=2, show_default=True)
@click.option("--lr", type=FiniteRange(min=0.0, min_open=True, max=10.0), default=2e-3, show_default=True)
@click.option(
    "--head-lr-factor",
    type=FiniteRange(min=0.0, min_open=True, max=1000.0),
    default=10.0,
    show_default=True,
    help="With --init-from: the output-channel layers learn this many times faster.",
)
@click.option("--seed", default=0, show_default=True)
@click.option("--checkpoint-every", type=click.IntRange(min=1), default=100, show_default=True)
@click.option("--threads", default=None, type=click.IntRange(min=1), help="torch CPU threads.")
@click.option("--no-augment", is_flag=True)
@click.option("--resume", is_flag=True, help="Continue from OUT/last.pt.")
@TRUST_BUNDLE_OPTION
@handle_errors
def train(
    spec_path,
    data_dir,
    out_dir,
    init_from,
    labels,
    name,
    val_fraction,
    val_dir,
    steps,
    batch_size,
    lr,
    head_lr_factor,
    seed,
    checkpoint_every,
    threads,
    no_augment,
    resume,
    trust_bundle,
) -> None:
    """Train a network (Dice + cross-entropy) on image/label pairs, or fine-tune one with --init-from.

    \b
    Writes OUT/model.yaml (a ModelSpec: `medseg infer SCAN --model OUT`), OUT/best.pt (best mean
    validation Dice), OUT/model.pt (last step), OUT/last.pt (for --resume) and train_summary.json.
    With --init-from, SPEC is optional: the network, preprocessing and tiling are the model's (a
    SPEC replaces them; the weights must still fit), the labels those of the data (DIR/labels.json,
    DIR/dataset.json, the label files' sidecars, or --labels). Channels are matched by name: kept
    labels keep their weights, new labels start from the parent structure the model predicts
    for them, labels the data no longer has are dropped.
    \b
    Examples:
      medseg phantom data/train -n 40 --seed 1000
      medseg train configs/models/phantom-unet3d.yaml --data data/train --out runs/unet3d --steps 2000
      medseg train --init-from phantom-unet3d --data corrected/ --out runs/kidneys --steps 300
      medseg infer scan.nii.gz --model runs/kidneys
    """
    from medseg.models.registry import resolve_spec
    from medseg.train.loop import TrainConfig
    from medseg.train.loop import train as run_training

    if spec_path is None and init_from is None:
        raise click.UsageError("give a SPEC to train, or --init-from MODEL to fine-tune")
    spec = resolve_spec(spec_path, trust_bundle) if spec_path is not None else None
    parent = None
    if init_from is not None:
        from medseg.train.finetune import prepare_finetune

        parent, spec = prepare_finetune(
            init_from, data_dir, name or Path(out_dir).resolve().name, spec, labels, trust_bundle
        )
    elif labels is not None:
        raise click.UsageError("--labels needs --init-from (a SPEC's labels are its own)")
    elif name:
        spec = spec.model_copy(update={"name": name})
    cfg = TrainConfig(
        steps=steps,
        batch_size=batch_size,
        lr=lr,
        seed=seed,
        checkpoint_every=checkpoint_every,
        augment=not no_augment,
        head_lr_factor=head_lr_factor,
        val_fraction=val_fraction,
        threads=threads,
    )
    run_training(spec, data_dir, out_dir, cfg, resume=resume, log=lambda m: click.echo(m), val_dir=val_dir, init=parent)


@main.command()
@click.argument("pred", type=click.Path(path_type=Path))
@click.argument("gt", type=click.Path(path_type=Path))
@click.option("--model", default=None, help="Take label names from this model (name or spec path).")
@click.option("--csv", "csv_path", type=click.Path(path_type=Path), help="Write per-case, per-label rows as CSV.")
@click.option("--json", "json_path", type=click.Path(path_type=Path), help="Write the full report as JSON.")
@handle_errors
def evaluate(pred, gt, model, csv_path, json_path) -> None:
    """Per-label Dice, IoU and HD95 (mm) of PRED against GT (two files, or two folders).

    \b
    Folders are matched by case name: PRED/X_seg.nii.gz (or X.nii.gz) against GT/X.nii.gz.
    Example:
      medseg evaluate preds/ data/eval/labels/ --model phantom-unet3d --csv dice.csv
    """
    from medseg.io.atomic import write_text_atomic
    from medseg.train.evaluate import evaluate as run_evaluation
    from medseg.train.evaluate import to_csv, to_json

    names = None
    if model:
        from medseg.models.registry import open_model

        names = {k: v for k, v in open_model(model).label_names().items() if k != 0}  # any model's labels
    report = run_evaluation(pred, gt, names)
    click.echo(f"{'label':<12} {'dice':>7} {'iou':>7} {'hd95_mm':>8}")
    for name, m in report["per_label"].items():
        click.echo(f"{name:<12} {m['dice']:7.4f} {m['iou']:7.4f} {m['hd95_mm']:8.2f}")
    click.echo(
        f"mean Dice over {len(report['per_label'])} labels, {report['n_cases']} case(s): {report['mean_dice']:.4f}"
    )
    if csv_path:
        write_text_atomic(csv_path, to_csv(report))
    if json_path:
        write_text_atomic(json_path, to_json(report))


@main.command()
@click.argument("input_dir", required=False, type=click.Path(path_type=Path))
@click.option("-o", "--output", "out_dir", type=click.Path(path_type=Path), help="Output folder (outputs + ledger).")
@click.option("--manifest", type=click.Path(path_type=Path), help="CSV with columns id,path instead of INPUT_DIR.")
@MODEL_OPTION
@DEVICE_OPTION
@STATS_OPTION
@PREVIEW_OPTION
@OVERLAP_OPTION
@FORMAT_OPTION
@SPLIT_MASKS_OPTION
@GPU_MEMORY_OPTION
@HOST_MEMORY_OPTION
@TRUST_BUNDLE_OPTION
@click.option(
    "--workers",
    default="auto",
    show_default=True,
    help="Local inference streams (auto: 2 worker processes on a CPU with 2+ cores, else 1). On a CPU, N > 1 "
    "starts N worker processes, each loading the model once and using cores/N threads; 1 runs in this "
    "process; on a GPU, N streams share one model.",
)
@click.option(
    "--scheduler", default="local", show_default=True, help="local, dask://HOST:PORT or local-cluster:N (Dask)."
)
@click.option("--retry-failed", is_flag=True, help="Retry cases the ledger records as failed.")
@click.option(
    "--num-parts", type=click.IntRange(min=1), default=1, show_default=True, help="Split the cohort in N parts (SLURM)."
)
@click.option("--part-id", type=click.IntRange(min=0), default=0, show_default=True, help="Which part (0-based) runs.")
@click.option("--exclude", multiple=True, help="Skip files matching this glob (repeatable; default *_seg.* *_gt.*).")
@click.option("--status", "status_dir", type=click.Path(path_type=Path), help="Print the ledger summary of a folder.")
@click.option("--quiet", "-q", is_flag=True, help="No progress display; only the summary.")
@FORCE_MODALITY_OPTION
@CROP_TO_BODY_OPTION
@reader_options
@model_options
@handle_errors
def batch(
    input_dir,
    out_dir,
    manifest,
    model,
    device,
    stats,
    preview,
    overlap,
    workers,
    scheduler,
    retry_failed,
    num_parts,
    part_id,
    exclude,
    status_dir,
    quiet,
    force_modality,
    crop_to_body,
    output_format,
    split_masks,
    gpu_memory,
    host_memory,
    trust_bundle,
    read_options,
    model_options,
) -> None:
    """Segment every scan under INPUT_DIR into OUT_DIR, resumably (model loaded once).

    \b
    Rerunning the same command resumes: done cases with unchanged inputs are skipped, changed
    inputs are redone, failed cases are retried with --retry-failed. Exit code 3: some cases failed.
    Example:
      medseg batch cohort/ -o results/ --stats
      medseg batch --status results/
      medseg batch cohort/ -o results/ --scheduler local-cluster:4
      medseg batch cohort/ -o results/ --num-parts 10 --part-id $SLURM_ARRAY_TASK_ID
    """
    if status_dir is not None:
        from medseg.batch.report import status_text

        click.echo(status_text(status_dir))
        return
    if out_dir is None:
        raise click.UsageError("give -o OUT_DIR (or --status OUT_DIR)")
    if (input_dir is None) == (manifest is None):
        raise click.UsageError("give either INPUT_DIR or --manifest cases.csv")
    if part_id >= num_parts:
        raise click.BadParameter(f"must be in 0..{num_parts - 1} for --num-parts {num_parts}", param_hint="--part-id")
    if workers != "auto" and not (workers.isdigit() and int(workers) >= 1):
        raise click.BadParameter(f"expected a number >= 1 or auto, got {workers!r}", param_hint="--workers")
    from medseg.forkserver import surely_cpu, worker_context
    from medseg.inference.host_memory import share_one_heap

    if scheduler.strip() == "local" and workers != "1" and surely_cpu(device) and (os.cpu_count() or 1) >= 2:
        worker_context()  # worker processes will be forked from it: its imports start now, in the background
    from medseg.batch import (
        CaseSettings,
        LocalPipelineExecutor,
        discover_cases,
        make_executor,
        read_manifest,
        run_batch,
        select_part,
    )
    from medseg.batch.cohort import DEFAULT_EXCLUDES
    from medseg.batch.executors import parse_scheduler
    from medseg.batch.report import make_reporter

    parse_scheduler(scheduler)  # a typo fails now, not after discovery
    if workers == "auto":
        n_workers = None
    elif workers.isdigit() and int(workers) >= 1:
        n_workers = int(workers)
    else:
        raise click.BadParameter(f"expected a number >= 1 or auto, got {workers!r}", param_hint="--workers")
    settings = CaseSettings(
        model=model,
        device=device,
        stats=stats,
        preview=preview,
        overlap=overlap,
        read=read_options,
        tune_allocator=True,
        force_modality=force_modality,
        crop_to_body=crop_to_body,
        model_options=model_options,
        output_format=output_format,
        split_masks=split_masks,
        gpu_memory=gpu_memory,
        host_memory=host_memory,
        trust_bundle=trust_bundle,
    )
    reporter = make_reporter(quiet)
    # made before discovery: local worker processes start importing torch while the cohort is scanned
    executor = make_executor(scheduler, settings, workers=n_workers, on_stage=reporter.stage)
    if isinstance(executor, LocalPipelineExecutor):
        # this run infers on a pool thread: one glibc heap for all threads, set before any starts
        share_one_heap()
    if manifest is not None:
        cases = read_manifest(manifest)
    else:
        cases = discover_cases(input_dir, exclude=exclude or DEFAULT_EXCLUDES, skip=[out_dir])
    cases = select_part(cases, num_parts, part_id)
    if not cases:
        raise MedsegError("no scans found (.nii, .nii.gz, .nrrd, .mha, .mhd)", manifest or input_dir)
    summary = run_batch(
        cases,
        out_dir,
        settings,
        executor,
        retry_failed=retry_failed,
        num_parts=num_parts,
        part_id=part_id,
        reporter=reporter,
    )
    for line in summary.lines():
        click.echo(line)
    if summary.exit_code:
        sys.exit(summary.exit_code)


@main.command()
@click.argument("folder", metavar="DIR", type=click.Path(exists=True, path_type=Path))
@click.option("--show-patient", is_flag=True, help="Also print PatientName and PatientID (hidden by default).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document instead of the table.")
@handle_errors
def series(folder, show_patient, as_json) -> None:
    """List the DICOM series under DIR (searched recursively), one stack per line.

    \b
    A series splits into stacks (UID#1, UID#2, ...) where matrix, orientation, image type or echo
    differ. PROBLEM says why a stack cannot be read as a volume. Patient names and IDs are not
    printed unless --show-patient is given.
    Example:
      medseg series study/
      medseg convert study/ scan.nii.gz --series 1.2.840.113619.2.55.3...
    """
    import json

    from medseg.io.dicom import scan_dicom
    from medseg.progress import Progress

    with Progress() as progress:
        progress.stage("read DICOM")
        scan = scan_dicom(folder)
    rows = [s.summary(show_patient=show_patient) for s in scan.stacks]
    if as_json:
        other = [{"path": str(p), "kind": k} for p, k in scan.non_images]
        click.echo(json.dumps({"series": rows, "non_images": other, "skipped_files": len(scan.skipped)}, indent=2))
        return
    if not rows:
        click.echo(f"no DICOM image series under {folder} ({scan.n_files} files, {len(scan.non_images)} non-image)")
        return
    for row in rows:
        dims = "x".join(str(d) for d in row["matrix"]) + (f"x{row['volumes']}vol" if (row["volumes"] or 1) > 1 else "")
        spacing = "x".join(f"{x:g}" for x in row["spacing_mm"]) + " mm" if row["spacing_mm"] else "-"
        click.echo(f"{row['series']}")
        click.echo(
            f"    #{row['series_number']}  {row['modality'] or '?'}  {row['description'] or '(no description)'}  "
            f"images {row['images']}  matrix {dims}  spacing {spacing}  orientation {row['orientation'] or '-'}"
        )
        if show_patient:
            click.echo(f"    patient {row['patient_name']!r} id {row['patient_id']!r}")
        for note in row["notes"]:
            click.echo(f"    note: {note}")
        click.echo(f"    {'problem: ' + row['problem'] if row['problem'] else 'ok'}")
    extra = []
    if scan.non_images:
        extra.append(f"{len(scan.non_images)} non-image object(s)")
    if scan.skipped:
        extra.append(f"{len(scan.skipped)} non-DICOM file(s) skipped")
    click.echo(f"{len(rows)} stack(s) in {scan.n_files} file(s)" + (f"; {', '.join(extra)}" if extra else ""))


@main.command()
@click.argument("input_path", metavar="INPUT", type=click.Path(path_type=Path))
@click.argument("output", metavar="OUT", type=click.Path(path_type=Path))
@reader_options
@handle_errors
def convert(input_path, output, read_options) -> None:
    """Convert INPUT (a DICOM folder or file, or any image medseg reads) to NIfTI OUT.

    \b
    Without --series, a folder with one readable volume is converted; with several, the command
    lists them (see `medseg series`). Gantry tilt is resampled onto an orthogonal grid (with a
    warning); missing slices are an error unless --resample-irregular.
    Example:
      medseg convert study/ scan.nii.gz
      medseg convert study/ t1.nii.gz --series 1.3.12.2.1107.5.2.32.35131...#2
    """
    from medseg.io import read_volume, write_nifti
    from medseg.io.nifti import NIFTI_SUFFIXES

    if not output.name.lower().endswith(NIFTI_SUFFIXES):
        raise MedsegError("output must be a .nii or .nii.gz file", output)
    from medseg.progress import Progress

    with Progress() as progress:
        progress.stage("read")
        volume = read_volume(input_path, read_options)
        progress.stage("write")
        write_nifti(volume, output)
    dims = "x".join(str(s) for s in volume.array.shape)
    spacing = "x".join(f"{s:.4g}" for s in volume.spacing)
    click.echo(f"{input_path} -> {output}: {dims} {''.join(volume.axcodes)} {spacing} mm {volume.array.dtype}")


@main.command()
@click.argument("image", required=False, type=click.Path(exists=True, path_type=Path))
@click.argument("labels", nargs=-1, type=click.Path(exists=True, path_type=Path))
@click.option(
    "--window",
    type=click.Choice(["auto", "soft-tissue", "lung", "bone", "brain", "percentile"]),
    default="auto",
    show_default=True,
    help="Contrast: a CT window preset, or 0.5-99.5 percentiles (auto: soft tissue for CT, percentiles otherwise).",
)
@click.option("--model", default=None, help="Label names/colours from this model when a label file has no sidecar.")
@click.option("--no-widget", is_flag=True, help="Do not dock the segmentation widget.")
@click.option(
    "--screenshot",
    type=click.Path(path_type=Path),
    help="Write a PNG of the window and exit (uses Xvfb when there is no display).",
)
@click.option(
    "--manifest",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Cohort: the cases of a CSV with columns id,path (as `medseg batch --manifest`; optional labels column).",
)
@click.option(
    "-o",
    "--output",
    "out_dir",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="With --manifest: the medseg batch output folder holding the labels (the review ledger goes there too).",
)
@click.option("--unreviewed-only", is_flag=True, help="Cohort: Previous/Next skip cases already reviewed or skipped.")
@click.option("--case", "start_case", default=None, help="Cohort: start at this case id (default: first not reviewed).")
@click.option("--reviewer", default=None, help="Cohort: the name recorded in the review ledger (default: $USER).")
@click.option("--list", "list_only", is_flag=True, help="Cohort: print each case's review status and exit.")
@reader_options
@handle_errors
def view(
    image,
    labels,
    window,
    model,
    no_widget,
    screenshot,
    manifest,
    out_dir,
    unreviewed_only,
    start_case,
    reviewer,
    list_only,
    read_options,
) -> None:
    """Review IMAGE (NIfTI, NRRD, DICOM folder) and LABELS in napari at physical scale, slice by slice.

    \b
    Axial view in the radiological convention (patient's right on the left), labels named and
    coloured from their medseg sidecar (or --model). Paint, then File > Save Selected Layers
    (.nii.gz) or the widget's "Save labels...": saved labels keep IMAGE's exact grid.

    \b
    A cohort, case by case: IMAGE may be a `medseg batch` output folder, a folder of scans
    (NIfTI/NRRD/MHA, with <scan>_seg.nii.gz beside them), or --manifest cases.csv. A folder holding
    only DICOM files is one scan. Corrected labels are saved as <case>_seg_corrected.nii.gz beside
    the model's; medseg_review.jsonl records what was reviewed, and the next run resumes at the
    first case not yet reviewed.
    Example:
      medseg view scan.nii.gz scan_seg.nii.gz
      medseg view dicom/CT_series/ --window lung
      medseg view study/ --series 3 --keep-tilt
      medseg view scan.nii.gz scan_seg.nii.gz --screenshot review.png
      medseg view results/                      # the cohort `medseg batch cohort/ -o results/` made
      medseg view --manifest cases.csv -o results/ --unreviewed-only
    """
    cohort_flags = {
        "-o/--output": out_dir is not None,
        "--unreviewed-only": unreviewed_only,
        "--case": start_case is not None,
        "--reviewer": reviewer is not None,
        "--list": list_only,
    }
    if image is None and manifest is None:
        raise click.UsageError("give IMAGE [LABELS ...], a cohort folder, or --manifest cases.csv")
    if image is not None and manifest is not None:
        raise click.UsageError("give either IMAGE (or a cohort folder) or --manifest, not both")
    is_cohort = manifest is not None
    if image is not None and image.is_dir():
        from medseg.viewer.cohort import is_cohort_folder

        is_cohort = is_cohort_folder(image)
        if is_cohort and labels:
            raise click.UsageError(f"{image} is a cohort folder (its cases carry their labels); it takes no LABELS")
    if is_cohort:
        viewer_args = {"window": window, "model": model, "widget": not no_widget, "read_options": read_options}
        session_args = {"reviewer": reviewer, "unreviewed_only": unreviewed_only, "start": start_case}
        _view_cohort(image, manifest, out_dir, screenshot, list_only, session_args, viewer_args)
        return
    used = [flag for flag, on in cohort_flags.items() if on]
    if used:
        raise click.UsageError(
            f"{used[0]} works on a cohort (a medseg batch output folder, a folder of scans, or --manifest)"
        )
    from medseg.progress import Progress
    from medseg.viewer.launch import require_napari

    with Progress() as progress:  # importing napari and Qt takes seconds
        progress.stage("start napari")
        require_napari()
    if screenshot is not None:
        from medseg.viewer.display import virtual_display
        from medseg.viewer.launch import fit_window, open_viewer, save_screenshot

        with virtual_display():
            viewer = open_viewer(
                image, labels, window=window, model=model, widget=not no_widget, show=True, read_options=read_options
            )
            fit_window(viewer)
            save_screenshot(viewer, screenshot)
            viewer.close()
        click.echo(f"wrote {screenshot}")
        return
    import napari

    from medseg.viewer.launch import open_viewer

    open_viewer(image, labels, window=window, model=model, widget=not no_widget, show=True, read_options=read_options)
    napari.run()


def _view_cohort(folder, manifest, out_dir, screenshot, list_only, session_args: dict, viewer_args: dict) -> None:
    """``medseg view DIR`` / ``--manifest``: step through a cohort (see :mod:`medseg.viewer.cohort`)."""
    from medseg.viewer.cohort import CohortSession, open_cohort

    if viewer_args["read_options"].series is not None:
        raise click.UsageError("--series picks one scan's series; it does not apply to a cohort")
    if out_dir is not None and manifest is None:
        raise click.UsageError("-o/--output goes with --manifest (a batch output folder is itself the cohort)")
    cohort = open_cohort(folder, manifest=manifest, output=out_dir)
    session = CohortSession(cohort, **session_args)
    click.echo(cohort.describe())
    for note in cohort.notes:
        click.echo(f"note: {note}")
    if list_only:
        for case in session.cases:
            opened = case.labels_to_open.name if case.labels_to_open is not None else "-"
            click.echo(f"{case.case_id}\t{session.status(case)}\t{opened}")
        counts = session.counts()
        click.echo(", ".join(f"{n} {k}" for k, n in counts.items()))
        return
    from medseg.viewer._cohort_widget import open_cohort_viewer
    from medseg.viewer.launch import require_napari

    require_napari()
    click.echo(f"{session.current.case_id}: {session.progress_text()}")
    if screenshot is not None:
        from medseg.viewer.display import virtual_display
        from medseg.viewer.launch import fit_window, save_screenshot

        with virtual_display():
            viewer, _ = open_cohort_viewer(session, **viewer_args)
            fit_window(viewer)
            save_screenshot(viewer, screenshot)
            viewer.close()
        click.echo(f"wrote {screenshot}")
        return
    import napari

    open_cohort_viewer(session, **viewer_args)
    napari.run()


@main.command()
@click.argument("image", type=click.Path(exists=True, path_type=Path))
@click.option("--voxel", "voxels", multiple=True, help="I,J,K: a click inside the structure, array indices (repeat).")
@click.option("--point", "points", multiple=True, help="X,Y,Z: a click inside the structure, RAS mm (repeat).")
@click.option("--negative", "negatives", multiple=True, help="I,J,K: a click on what must stay out (repeat).")
@click.option("--negative-point", "negative_points", multiple=True, help="X,Y,Z: a negative click in RAS mm.")
@click.option("--box", default=None, help="I0,J0,K0,I1,J1,K1: inclusive corners; the mask stays inside.")
@click.option("--labels", "labels_path", type=click.Path(exists=True, path_type=Path), help="Add to this label file.")
@click.option("--as", "label_name", default=None, help="Label name (needed with --labels; replaces a same-named one).")
@click.option(
    "--from-labels",
    "from_labels",
    type=click.Path(exists=True, path_type=Path),
    help="A model's label file: take the connected label component under each click instead of growing.",
)
@click.option("-o", "--output", type=click.Path(path_type=Path), help="Output .nii.gz (default with --labels: it).")
@reader_options
@handle_errors
def prompt(
    image, voxels, points, negatives, negative_points, box, labels_path, label_name, from_labels, output, read_options
) -> None:
    """Segment the structure at clicks in IMAGE, weights-free, as a mask on IMAGE's exact grid.

    \b
    Seeded region growing around the clicks (intensities from the clicks' neighbourhood, the
    tolerance halfway to the first leak, negative clicks competing for touching parts, holes filled),
    in physical mm. --voxel takes IMAGE's array indices, --point RAS millimetres.
    Example:
      medseg prompt scan.nii.gz --voxel 120,140,60 -o liver.nii.gz
      medseg prompt scan.nii.gz --point -60,20,-110 --negative 150,140,60 -o liver.nii.gz
      medseg prompt scan.nii.gz --voxel 120,140,60 --labels scan_seg.nii.gz --as liver
    """
    import time

    from medseg.io import read_volume
    from medseg.prompt import Prompts, PromptSegmenter, parse_box, parse_voxel, world_to_voxel
    from medseg.prompt.labelfile import write_prompt_labels
    from medseg.prompt.prompts import parse_numbers

    if labels_path is not None and not label_name:
        raise click.UsageError("--labels needs --as NAME (the label to add or replace)")
    if output is None and labels_path is None:
        raise click.UsageError("give -o MASK.nii.gz (or --labels LABELS.nii.gz --as NAME)")
    if not (voxels or points):
        raise click.UsageError("give at least one --voxel I,J,K or --point X,Y,Z inside the structure")
    from medseg.progress import Progress

    output = output if output is not None else labels_path
    t0 = time.perf_counter()
    with Progress() as progress:
        progress.stage("read")
        volume = read_volume(image, read_options)
        positive = [parse_voxel(v) for v in voxels]
        positive += [world_to_voxel(volume, parse_numbers(p, 3, "point")) for p in points]
        negative = [parse_voxel(v) for v in negatives]
        negative += [world_to_voxel(volume, parse_numbers(p, 3, "point")) for p in negative_points]
        prompts = Prompts.of(positive, negative, parse_box(box) if box else None)
        model_labels = None
        if from_labels is not None:
            model_labels = read_volume(from_labels).array
        progress.stage("segment")
        mask = PromptSegmenter(volume).segment(prompts, model_labels)
        progress.stage("write")
        written, value = write_prompt_labels(mask, volume, output, label_name, labels_path)
    ml = float(mask.sum()) * volume.voxel_volume_ml
    what = f"label {value} {label_name!r}" if label_name else "mask"
    click.echo(f"{image} -> {written}: {what}, {int(mask.sum())} voxels ({ml:.1f} ml), {time.perf_counter() - t0:.1f}s")


@main.command("plan")
@click.argument("input_path", metavar="INPUT", type=click.Path(exists=True, path_type=Path))
@MODEL_OPTION
@click.option(
    "--device",
    type=Device(absent_gpu=True),
    default="auto",
    show_default=True,
    help="auto, cpu, cuda or cuda:N; cuda on a machine without it plans for that GPU (give --gpu-memory).",
)
@GPU_MEMORY_OPTION
@HOST_MEMORY_OPTION
@OVERLAP_OPTION
@click.option("--json", "as_json", is_flag=True, help="Print the plan and predicted peaks as JSON.")
@TRUST_BUNDLE_OPTION
@FORCE_MODALITY_OPTION
@CROP_TO_BODY_OPTION
@reader_options
@model_options
@handle_errors
def plan(
    input_path,
    model,
    device,
    gpu_memory,
    host_memory,
    overlap,
    as_json,
    trust_bundle,
    force_modality,
    crop_to_body,
    read_options,
    model_options,
) -> None:
    """Print the plan `medseg infer` would use for INPUT, with predicted peak memory per component.

    \b
    The same stages as `medseg infer` up to the plan (the model is loaded: the window batch and
    memory layout are timed on this CPU as infer times them), so `--json` equals the `plan` of
    infer's sidecar for the same input, model and budgets. Activations come from a forward pass of
    the network on meta tensors; the planner picks the fastest roi/batch/buffer placement that fits
    the budgets, streaming the aggregation slab by slab when the full classes x voxels buffer would
    not fit. Exit code 1 when nothing fits.
    Example:
      medseg plan scan.nii.gz --gpu-memory 12GB
      medseg plan scan.nii.gz --device cpu --host-memory 6GB --json
    """
    import json

    from medseg.devices import gpu_present
    from medseg.inference.estimate import Workload
    from medseg.inference.pipeline import CaseOptions, Segmenter, read_case, start_case
    from medseg.inference.plan_report import describe
    from medseg.progress import Progress

    absent = device.startswith("cuda") and not gpu_present(device)
    if absent and (gpu_memory is None or str(gpu_memory).strip().lower() == "auto"):
        raise click.BadParameter(
            f"{device}: this machine has no such CUDA GPU; give --gpu-memory (e.g. 12GB) to plan for one",
            param_hint="--device",
        )
    options = CaseOptions(overlap=overlap, read=read_options, force_modality=force_modality, crop_to_body=crop_to_body)
    with Progress() as progress:
        progress.stage("read")
        case = read_case(start_case(input_path, None, options))
        progress.stage("load model")
        seg = Segmenter(
            model,
            "cpu" if absent else device,
            gpu_memory,
            host_memory,
            trust_bundle,
            tune_allocator=True,
            model_options=model_options,
            plan_device=device if absent else None,
        )
        seg.check(case)
        volume = seg.work_volume(case)
        progress.stage("plan")
        result = seg.plan_case(volume, overlap, strict=False, progress=progress)
    name = seg.model.name
    if as_json:
        doc = {"input": str(input_path), "model": name, "fits": result.fits, **result.plan.to_dict()}
        if absent:
            doc["gpu_present"] = False
        if seg.model.has_network:
            doc["model_grid"] = list(Workload.of(volume, seg.model).model_shape)
        if case.region is not None:
            doc["crop_to_body"] = case.region.to_dict(case.volume.shape)
        click.echo(json.dumps(doc, indent=2))
    else:
        click.echo(f"{input_path} with {name}")
        if case.region is not None:
            click.echo(
                f"crop to body: {'x'.join(map(str, case.region.shape))} of {'x'.join(map(str, case.volume.shape))}"
            )
        click.echo(describe(result, Workload.of(volume, seg.model) if seg.model.has_network else None))
    if not result.fits:
        sys.exit(1)


if __name__ == "__main__":  # pragma: no cover
    main()
