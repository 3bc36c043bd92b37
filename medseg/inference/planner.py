"""The memory planner: the fastest plan whose predicted peaks fit the budgets.

It enumerates device placements (image and aggregation on the GPU or the host), window batch
sizes, full buffer or slab streaming, and -- only if nothing else fits -- smaller rois that the
network can take; keeps the candidates whose predicted peaks (:mod:`medseg.inference.estimate`) fit
and picks the one with the lowest predicted time (:func:`relative_cost`). When nothing fits it says
what would. The model's own window grid (:class:`~medseg.models.base.WindowGrid`) is the start.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from medseg.inference.budget import MiB, auto_gpu_budget, auto_host_budget
from medseg.inference.estimate import Estimate, Workload, estimate, full_buffer_bytes, plan_windows
from medseg.inference.plan import Plan
from medseg.inference.tracing import NetworkMemory
from medseg.inference.windows import vox
from medseg.models.base import WindowGrid


def smaller_rois(roi: tuple[int, ...], divisor: int) -> list[tuple[int, ...]]:
    """Smaller rois the network can take, largest first: the slab axis shrinks first (it sets the
    streaming buffer's depth), then every axis."""

    def down(v: float) -> int:
        return max(divisor, int(v) // divisor * divisor)

    out: list[tuple[int, ...]] = []
    for f in (0.75, 0.5, 0.375, 0.25):
        out.append((*roi[:-1], down(roi[-1] * f)))
    for f in (0.75, 0.5):
        out.append(tuple(down(r * f) for r in roi[:-1]) + (down(roi[-1] * 0.25),))
    seen, uniq = {tuple(roi)}, []
    for r in out:
        if r not in seen:
            seen.add(r)
            uniq.append(r)
    return uniq


def relative_cost(work: Workload, plan: Plan) -> float:
    """Predicted relative run time: network voxels computed, per-batch overhead, transfers, slides.

    Heuristic weights (documented, not measured per model): a window batch costs its voxels plus a
    fixed overhead of 5% of one window; logits copied device -> host cost 10% of their compute;
    streaming slides copy about half the buffer per slab (5% of a full buffer pass).
    """
    n = plan_windows(work, plan)
    roi_vox = vox(plan.roi_size)
    batches = math.ceil(n / plan.sw_batch_size)
    cost = n * roi_vox + batches * 0.05 * roi_vox
    if plan.device.startswith("cuda") and plan.aggregation_device == "cpu":
        cost += 0.10 * n * roi_vox
    if plan.device.startswith("cuda") and plan.image_device == "cpu":
        cost += 0.02 * n * roi_vox
    if plan.streaming:
        cost += 0.05 * vox(work.model_shape)
    return float(cost)


@dataclass
class PlanResult:
    plan: Plan
    estimate: Estimate
    fits: bool
    cost: float
    message: str = ""


def plan_memory(
    work: Workload,
    windows: WindowGrid,
    net: NetworkMemory,
    device: str = "cpu",
    gpu_budget: int | None = None,
    host_budget: int | None = None,
    overlap: float | None = None,
    framework_host: int = 0,
    tune_allocator: bool = False,
) -> PlanResult:
    """The fastest plan whose predicted peaks fit ``gpu_budget`` and ``host_budget`` (bytes).

    ``None`` budgets mean what is free now (:mod:`medseg.inference.budget`).
    ``framework_host``: the process's own host memory (a term of its own). ``tune_allocator``: the
    run may set glibc's allocator for its windows (``Plan.host_allocator`` ``fast`` or ``strict``);
    otherwise the process's allocator is left alone (``default``). When nothing fits, the
    smallest plan is returned with ``fits=False`` and a message that says which budget would suffice.
    """
    on_gpu = device.startswith("cuda")
    if on_gpu and gpu_budget is None:
        gpu_budget = auto_gpu_budget(device)
    if host_budget is None:
        host_budget = auto_host_budget()
    base = Plan(
        device=device,
        roi_size=tuple(windows.roi_size),
        sw_batch_size=windows.sw_batch_size,
        overlap=windows.overlap if overlap is None else overlap,
        blend=windows.blend,
        padding_mode=windows.padding_mode,
        precision=windows.precision if on_gpu else "fp32",
        aggregation_device=device,
        image_device=device,
    )
    budgets = {"host": int(host_budget)}
    if on_gpu:
        budgets["gpu"] = int(gpu_budget)
    rois = [base.roi_size] + smaller_rois(base.roi_size, windows.roi_divisor)
    batch_options = sorted({1, 2, 4, 8, 16, windows.sw_batch_size} if on_gpu else {1, windows.sw_batch_size})
    placements = [(device, device)] if not on_gpu else [(device, device), ("cpu", device), ("cpu", "cpu")]
    smallest: PlanResult | None = None

    def size(r: PlanResult) -> tuple[int, int]:
        return (r.estimate.gpu_peak if on_gpu else 0, r.estimate.host_peak)

    for roi in rois:
        results = []
        for batch in batch_options:
            for agg, img in placements:
                for slab in (0, 1):
                    cand = base.replace(
                        roi_size=tuple(roi), sw_batch_size=batch, aggregation_device=agg, image_device=img
                    )
                    if slab:
                        cand = cand.replace(slab_depth=_min_slab(work, cand))
                    est = estimate(work, cand, net, framework_host)
                    fits = est.host_peak <= budgets["host"] and (not on_gpu or est.gpu_peak <= budgets["gpu"])
                    res = PlanResult(cand, est, fits, relative_cost(work, cand))
                    results.append(res)
                    if smallest is None or size(res) < size(smallest):
                        smallest = res
        fitting = [r for r in results if r.fits]
        if fitting:
            best = min(fitting, key=lambda r: (r.cost, r.estimate.host_peak, r.estimate.gpu_peak))
            notes = []
            if tuple(roi) != tuple(base.roi_size):
                notes.append(
                    f"roi reduced from {list(base.roi_size)} to {list(roi)}: the model's roi does not fit the budget"
                )
            if best.plan.streaming:
                notes.append(
                    f"slab streaming: the full buffer would need {fmt_bytes(full_buffer_bytes(work))} for "
                    f"{work.out_channels} classes x {'x'.join(map(str, work.model_shape))} voxels"
                )
            best.plan = _finish(best.plan, best.estimate, budgets, notes, tune_allocator)
            return best
    assert smallest is not None
    need = [f"host {fmt_bytes(smallest.estimate.host_peak)}"]
    if on_gpu:
        need.insert(0, f"GPU {fmt_bytes(smallest.estimate.gpu_peak)}")
    msg = (
        f"nothing fits the budget ({', '.join(f'{k} {fmt_bytes(v)}' for k, v in budgets.items())}); the smallest plan "
        f"(roi {list(smallest.plan.roi_size)}, batch 1, slab streaming"
        f"{', buffers on the host' if on_gpu else ''}) needs {' and '.join(need)}"
        + ("; on the CPU it needs less GPU memory (--device cpu)" if on_gpu else "")
    )
    smallest.plan = _finish(smallest.plan, smallest.estimate, budgets, [msg], tune_allocator)
    smallest.message = msg
    return smallest


def plan_without_network(host_bytes: int, framework_host: int = 0, host_budget: int | None = None) -> PlanResult:
    """The plan of a model without a network (its own algorithm on the host): no windows, one
    host term for the algorithm's predicted peak, checked against the budget."""
    budget = int(host_budget if host_budget is not None else auto_host_budget())
    est = Estimate(host={"framework": int(framework_host), "algorithm": int(host_bytes)})
    fits = est.host_peak <= budget
    msg = (
        ""
        if fits
        else f"nothing fits the budget (host {fmt_bytes(budget)}); the model needs {fmt_bytes(est.host_peak)}"
    )
    plan = Plan(
        device="cpu",
        roi_size=(),
        sw_batch_size=0,
        overlap=0.0,
        blend="none",
        aggregation_device="cpu",
        image_device="cpu",
        predicted_bytes=est.flat(),
        budget_bytes={"host": budget},
        notes=("no network: the model runs its own algorithm on the host",) + ((msg,) if msg else ()),
    )
    return PlanResult(plan, est, fits, 0.0, msg)


def _min_slab(work: Workload, plan: Plan) -> int:
    if work.spatial_dims == 2:
        return max(1, min(work.model_shape[2], 8))
    return max(1, int(plan.roi_size[2]))


#: the fast host allocator (freed blocks kept for reuse, host_memory.use_host_allocator) only when
#: ``predicted host peak x HEADROOM + EXTRA`` fits the host budget: with it the process measured up
#: to 1.31x the strict-mode peak (benchmarks/README.md), a retention this model does not predict
FAST_ALLOCATOR_HEADROOM = 1.5
FAST_ALLOCATOR_EXTRA = 512 * MiB


def host_allocator_for(est: Estimate, budgets: dict[str, int]) -> str:
    fast = est.host_peak * FAST_ALLOCATOR_HEADROOM + FAST_ALLOCATOR_EXTRA <= budgets["host"]
    return "fast" if fast else "strict"


def _finish(plan: Plan, est: Estimate, budgets: dict[str, int], notes: list[str], tune_allocator: bool) -> Plan:
    return plan.replace(
        predicted_bytes=est.flat(),
        budget_bytes=dict(budgets),
        notes=tuple(notes),
        host_allocator=host_allocator_for(est, budgets) if tune_allocator else "default",
    )


def fmt_bytes(n: int | float) -> str:
    """``1.50 GiB`` or ``600 MiB``."""
    n = float(n)
    if n >= 1 << 30:
        return f"{n / (1 << 30):.2f} GiB"
    return f"{n / MiB:.0f} MiB"
