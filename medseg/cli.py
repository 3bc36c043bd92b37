"""The ``medseg`` command line: a thin click layer over the library.

Heavy modules (torch, monai) are imported inside the commands so that ``medseg --help`` is instant.
Errors a user can act on print as one line and exit 1; ``--debug`` shows the traceback.
"""

from __future__ import annotations

import functools
import sys
from pathlib import Path

import click

from medseg import __version__
from medseg.errors import MedsegError


def _fail(message: str) -> None:
    click.echo(f"medseg: error: {message}", err=True)
    sys.exit(1)


def handle_errors(fn):
    """Turn MedsegError (and other failures) into one line and exit code 1 unless --debug."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        ctx = click.get_current_context()
        debug = bool(ctx.find_root().params.get("debug"))
        try:
            return fn(*args, **kwargs)
        except MedsegError as err:
            if debug:
                raise
            _fail(str(err))
        except MemoryError:
            if debug:
                raise
            _fail("out of memory; try a smaller --roi or a machine with more RAM")
        except KeyboardInterrupt:
            _fail("interrupted")
        except (click.exceptions.Exit, click.ClickException, SystemExit):
            raise
        except Exception as err:  # noqa: BLE001 - last resort: never a bare traceback for users
            if debug:
                raise
            first = str(err).strip().splitlines()[0] if str(err).strip() else ""
            _fail(f"unexpected {type(err).__name__}: {first[:200]} (rerun with --debug for the traceback)")

    return wrapper


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="medseg")
@click.option("--debug", is_flag=True, help="Show full tracebacks on errors.")
def main(debug: bool) -> None:
    """medseg: segment CT/MR volumes into label maps that keep the scan's exact geometry.

    \b
    Quick start:
      medseg infer sample_data/phantom_ct.nii.gz --stats --preview
      medseg models
    """


@main.command()
@click.argument("input_path", metavar="INPUT", type=click.Path(path_type=Path))
@click.option(
    "-o", "--output", type=click.Path(path_type=Path), help="Label file (default: <stem>_seg.nii.gz beside INPUT)."
)
@click.option("--model", "model", default=None, help="Model name (see `medseg models`) or ModelSpec .yaml path.")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")
@click.option("--stats", is_flag=True, help="Also write per-label statistics (<stem>_seg_stats.csv/.json).")
@click.option("--preview", is_flag=True, help="Also write a PNG montage (<stem>_seg_preview.png).")
@click.option("--overlap", type=float, default=None, help="Sliding-window overlap (default: the model's).")
@click.option("--quiet", "-q", is_flag=True, help="No progress display; only the summary line.")
@handle_errors
def infer(input_path, output, model, device, stats, preview, overlap, quiet) -> None:
    """Segment INPUT (.nii/.nii.gz, .nrrd, .mha) and write a label NIfTI on its exact grid.

    \b
    Example:
      medseg infer scan.nii.gz --stats --preview
      medseg infer scan.nii.gz -o labels.nii.gz --model phantom-unet2d --device cpu
    """
    from medseg.inference.pipeline import infer_file
    from medseg.progress import Progress

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
        )
    click.echo(result.summary_line())


@main.command()
def models() -> None:
    """List the models medseg ships (configs/models/*.yaml)."""
    from medseg.models.registry import available_models
    from medseg.models.spec import load_spec

    known = available_models()
    if not known:
        click.echo("no models found")
        return
    for name, path in known.items():
        try:
            spec = load_spec(path)
            weights = spec.weights_path()
            state = "weights ok" if weights and weights.is_file() else "weights missing"
            labels = ", ".join(v.name for v in spec.foreground.values())
            click.echo(f"{name:18s} {spec.network.spatial_dims}D {spec.network.cls:10s} [{state}] {labels}")
            if spec.description:
                click.echo(f"{'':18s} {spec.description}")
        except MedsegError as err:
            click.echo(f"{name:18s} invalid: {err}")


@main.command()
@click.argument("out_dir", type=click.Path(path_type=Path))
@click.option("-n", "--count", default=1, show_default=True, help="Number of phantoms.")
@click.option("--seed", default=0, show_default=True, help="Seed of the first phantom; the next ones count up.")
@click.option("--orientation", default=None, help="Voxel axis codes, e.g. RAS or LPS (default: random).")
@click.option("--spacing", nargs=3, type=float, default=None, help="Voxel size in mm (default: random).")
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
@click.argument("spec_path", metavar="SPEC", type=click.Path(path_type=Path))
@click.option(
    "--data", "data_dir", required=True, type=click.Path(path_type=Path), help="Folder with images/ and labels/."
)
@click.option("--out", "out_dir", required=True, type=click.Path(path_type=Path), help="Checkpoint folder.")
@click.option("--steps", default=2000, show_default=True)
@click.option("--batch-size", default=2, show_default=True)
@click.option("--lr", default=2e-3, show_default=True)
@click.option("--seed", default=0, show_default=True)
@click.option("--checkpoint-every", default=100, show_default=True)
@click.option("--threads", default=None, type=int, help="torch CPU threads.")
@click.option("--no-augment", is_flag=True)
@click.option("--resume", is_flag=True, help="Continue from OUT/last.pt.")
@handle_errors
def train(
    spec_path, data_dir, out_dir, steps, batch_size, lr, seed, checkpoint_every, threads, no_augment, resume
) -> None:
    """Train SPEC's network (Dice + cross-entropy) on image/label pairs; resumable.

    \b
    Example:
      medseg phantom data/train -n 40 --seed 1000
      medseg train configs/models/phantom-unet3d.yaml --data data/train --out runs/unet3d --steps 2000
    """
    from medseg.models.registry import resolve_spec
    from medseg.train.loop import TrainConfig
    from medseg.train.loop import train as run_training

    spec = resolve_spec(spec_path)
    cfg = TrainConfig(
        steps=steps,
        batch_size=batch_size,
        lr=lr,
        seed=seed,
        checkpoint_every=checkpoint_every,
        augment=not no_augment,
        threads=threads,
    )
    run_training(spec, data_dir, out_dir, cfg, resume=resume, log=lambda m: click.echo(m))


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
        from medseg.models.registry import resolve_spec

        names = {k: v for k, v in resolve_spec(model).label_names().items() if k != 0}
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


if __name__ == "__main__":  # pragma: no cover
    main()
