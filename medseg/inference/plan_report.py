"""The plan as ``medseg plan`` prints it: settings, then predicted peak bytes per component."""

from __future__ import annotations

from medseg.inference.estimate import Workload, aggregation_planes, full_buffer_bytes, plan_windows
from medseg.inference.planner import PlanResult, fmt_bytes


def describe(result: PlanResult, work: Workload) -> str:
    """The plan as a short table for ``medseg plan``."""
    p = result.plan
    est = result.estimate
    if not p.roi_size:  # a model without a network
        lines = [f"device            {p.device}  (no network: the model's own algorithm)", ""]
    else:
        lines = _settings(result, work)
    lines += [f"{'predicted peak':<26}{'GPU':>12}{'host':>12}"]
    names = list(dict.fromkeys(list(est.gpu) + list(est.host)))
    for name in names:
        g = est.gpu.get(name)
        h = est.host.get(name)
        lines.append(f"  {name:<24}{fmt_bytes(g) if g else '-':>12}{fmt_bytes(h) if h else '-':>12}")
    lines.append(
        f"  {'total':<24}{fmt_bytes(est.gpu_peak) if est.gpu else '-':>12}{fmt_bytes(est.host_peak):>12}",
    )
    budget = p.budget_bytes
    lines.append(
        f"  {'budget':<24}{fmt_bytes(budget['gpu']) if 'gpu' in budget else '-':>12}"
        f"{fmt_bytes(budget.get('host', 0)):>12}"
    )
    if p.roi_size:
        lines.append(f"MONAI full buffer would need {fmt_bytes(full_buffer_bytes(work))} for the output alone")
    lines.append("fits the budget" if result.fits else "DOES NOT FIT")
    lines += [f"note: {n}" for n in p.notes]
    return "\n".join(lines)


def _settings(result: PlanResult, work: Workload) -> list[str]:
    p = result.plan
    return [
        f"device            {p.device}  (precision {p.precision})",
        f"model grid        {'x'.join(map(str, work.model_shape))} voxels, {work.out_channels} classes, "
        f"{work.spatial_dims}D network",
        f"roi               {'x'.join(map(str, p.roi_size))}  overlap {p.overlap}  blend {p.blend}",
        f"window batch      {p.sw_batch_size}  ({plan_windows(work, p)} windows)",
        f"image on          {p.image_device}",
        f"host allocator    {p.host_allocator}"
        + ("  (freed blocks reused: faster, peak may exceed the prediction)" if p.host_allocator == "fast" else ""),
        f"aggregation on    {p.aggregation_device}  "
        + (f"slab streaming, {aggregation_planes(work, p)} planes" if p.streaming else "full buffer"),
        "",
    ]
