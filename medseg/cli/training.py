"""``medseg train`` (and fine-tuning) and ``medseg evaluate``."""

from __future__ import annotations

from pathlib import Path

import click

from medseg.cli.app import handle_errors, main
from medseg.cli.options import (
    TRUST_BUNDLE_OPTION,
    FiniteRange,
)


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
