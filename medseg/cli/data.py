"""Data in and out: ``medseg series`` and ``convert`` (DICOM), ``medseg models``, ``medseg phantom``."""

from __future__ import annotations

from pathlib import Path

import click

from medseg.cli.app import handle_errors, main
from medseg.cli.options import (
    _positive_spacing,
    reader_options,
)
from medseg.errors import MedsegError


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
