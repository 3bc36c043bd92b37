"""Review and correct: ``medseg view`` (napari, one scan or a cohort) and ``medseg prompt`` (click to segment)."""

from __future__ import annotations

from pathlib import Path

import click

from medseg.cli.app import handle_errors, main
from medseg.cli.options import (
    reader_options,
)


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
