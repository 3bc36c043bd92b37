"""Running models: ``medseg infer``, ``medseg batch`` and ``medseg plan`` (the plan infer follows)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click

from medseg.cli.app import handle_errors, main
from medseg.cli.options import (
    CROP_TO_BODY_OPTION,
    DEVICE_OPTION,
    FORCE_MODALITY_OPTION,
    FORMAT_OPTION,
    GPU_MEMORY_OPTION,
    HOST_MEMORY_OPTION,
    MODEL_OPTION,
    OVERLAP_OPTION,
    PREVIEW_OPTION,
    SPLIT_MASKS_OPTION,
    STATS_OPTION,
    TRUST_BUNDLE_OPTION,
    Device,
    model_options,
    reader_options,
)
from medseg.errors import MedsegError


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
