"""``medseg train``: Dice + cross-entropy on random patches, with validation, checkpoints and exact resume.

Spatial augmentations (MONAI ``RandAffined``) are applied to image and label together, with
bilinear and nearest interpolation respectively; intensity augmentations touch the image only.
No left-right flips by default: anatomy is not mirror-symmetric (the liver is on the right).
"""

from __future__ import annotations

import json
import math
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from medseg.errors import InputError
from medseg.io.atomic import atomic_path
from medseg.models.checkpoints import sha256_of
from medseg.models.networks import build_network
from medseg.models.registry import SPEC_FILE
from medseg.models.spec import ModelSpec, WeightsSpec, write_spec
from medseg.train.dataset import CachedCase, PatchSampler, find_pairs, load_case
from medseg.train.finetune import ParentModel, head_dims, initial_state
from medseg.train.validation import mean_dice, split_cases, validate


@dataclass
class TrainConfig:
    steps: int = 2000
    batch_size: int = 2
    patch: tuple[int, ...] | None = None  # defaults to the spec's roi_size
    lr: float = 2e-3
    weight_decay: float = 1e-5
    seed: int = 0
    checkpoint_every: int = 100
    augment: bool = True
    fg_fraction: float = 0.67
    #: learning-rate factor of the output-channel layers when fine-tuning (``init``): a split label's
    #: two copies of the parent channel separate in far fewer steps (measured: README, "Fine-tuning")
    head_lr_factor: float = 10.0
    #: share of the cases held out for validation (at least one of two or more; 0: none)
    val_fraction: float = 0.2
    threads: int | None = None
    extra: dict = field(default_factory=dict)


def _augmenter(spatial_dims: int, seed: int):
    from monai.transforms import (
        Compose,
        RandAffined,
        RandGaussianNoised,
        RandScaleIntensityd,
        RandShiftIntensityd,
    )

    rot = (0.2, 0.2, 0.2) if spatial_dims == 3 else (0.2,)
    aug = Compose(
        [
            RandAffined(
                keys=("image", "label"),
                prob=0.5,
                rotate_range=rot,
                scale_range=(0.12,) * spatial_dims,
                mode=("bilinear", "nearest"),
                padding_mode="zeros",
            ),
            RandScaleIntensityd(keys="image", factors=0.1, prob=0.5),
            RandShiftIntensityd(keys="image", offsets=0.05, prob=0.5),
            RandGaussianNoised(keys="image", std=0.02, prob=0.3),
        ]
    )
    aug.set_random_state(seed=seed)
    return aug


def _batch(sampler: PatchSampler, n: int, augment) -> tuple[torch.Tensor, torch.Tensor]:
    xs, ys = [], []
    for _ in range(n):
        x, y = sampler.sample()
        y = y.unsqueeze(0).float()
        if augment is not None:
            out = augment({"image": x, "label": y})
            x, y = torch.as_tensor(out["image"]), torch.as_tensor(out["label"])
        xs.append(torch.as_tensor(x).float())
        ys.append(torch.as_tensor(y).round().long())
    return torch.stack(xs), torch.stack(ys)


def _lr_at(step: int, cfg: TrainConfig) -> float:
    warm = min(50, cfg.steps // 10)
    if step < warm:
        return cfg.lr * (step + 1) / warm
    progress = (step - warm) / max(cfg.steps - warm, 1)
    return cfg.lr * (0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * progress)))


def _np_state_to_safe(state: tuple) -> tuple:
    """numpy's legacy RNG state with its array as a tensor, so ``weights_only=True`` can load it."""
    name, keys, pos, has_gauss, gauss = state
    return (name, torch.from_numpy(np.asarray(keys, dtype=np.int64)), int(pos), int(has_gauss), float(gauss))


def _np_state_from_safe(state: tuple) -> tuple:
    name, keys, pos, has_gauss, gauss = state
    return (name, keys.numpy().astype(np.uint32), pos, has_gauss, gauss)


def _rng_state() -> dict:
    return {
        "torch": torch.get_rng_state(),
        "numpy": _np_state_to_safe(np.random.get_state()),
        "python": random.getstate(),
    }


def train(
    spec: ModelSpec,
    data_dir: str | Path,
    out_dir: str | Path,
    cfg: TrainConfig,
    resume: bool = False,
    log=print,
    cases: list[CachedCase] | None = None,
    stop_at: int | None = None,
    val_cases: list[CachedCase] | None = None,
    val_dir: str | Path | None = None,
    init: ParentModel | None = None,
) -> dict:
    """Train ``spec``'s network on ``data_dir``; writes ``out_dir/{last,model,best}.pt`` and ``model.yaml``.

    With ``resume=True`` it continues from ``last.pt`` (weights, optimiser, step, best validation
    and random state), so an interrupted run ends with the same weights as an uninterrupted one.
    ``stop_at`` ends the run early after that step's checkpoint, as an interruption would.
    Validation cases are ``val_cases``, or those in ``val_dir``, or ``cfg.val_fraction`` of the
    cases; each checkpoint reports their Dice per label and keeps the best weights (mean Dice) in
    ``best.pt``. ``init`` starts from a parent model's weights (:mod:`medseg.train.finetune`).
    ``model.yaml`` is the result as a ModelSpec (``best.pt`` with validation, else ``model.pt``),
    which ``medseg infer --model OUT_DIR`` runs. Returns a summary dict (also written to
    ``out_dir/train_summary.json``).
    """
    from monai.losses import DiceCELoss

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed)
    random.seed(cfg.seed)
    patch = tuple(cfg.patch or spec.inference.roi_size)
    t0 = time.time()
    if cases is None:
        pairs = find_pairs(data_dir)
        log(f"caching {len(pairs)} cases on the model grid ...")
        cases = [load_case(i, lbl, spec) for i, lbl in pairs]
    if val_cases is None and val_dir is not None:
        val_cases = [load_case(i, lbl, spec) for i, lbl in find_pairs(val_dir)]
    if val_cases is None:
        cases, val_cases = split_cases(cases, cfg.val_fraction, cfg.seed)
    _check_label_values(cases + val_cases, spec)
    log(
        f"{len(cases)} training and {len(val_cases)} validation cases cached in {time.time() - t0:.1f}s; "
        f"patch {patch}, batch {cfg.batch_size}"
    )

    net = build_network(spec)
    opt = torch.optim.AdamW(_param_groups(net, spec, cfg, init), lr=cfg.lr, weight_decay=cfg.weight_decay)
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True, squared_pred=False, smooth_nr=1e-5, smooth_dr=1e-5)
    augment = _augmenter(spec.network.spatial_dims, cfg.seed) if cfg.augment else None
    start, history, val_history = 0, [], []
    best: dict = {}
    channels: dict[str, str] = {}
    last, best_path = out_dir / "last.pt", out_dir / "best.pt"
    if resume and last.exists():
        ckpt = torch.load(last, map_location="cpu", weights_only=True)
        net.load_state_dict(ckpt["state_dict"])
        opt.load_state_dict(ckpt["optimizer"])
        start, history = int(ckpt["step"]), list(ckpt.get("history", []))
        val_history, best = list(ckpt.get("val_history", [])), dict(ckpt.get("best", {}))
        channels = dict(ckpt.get("channels", {}))
        torch.set_rng_state(ckpt["rng"]["torch"])
        np.random.set_state(_np_state_from_safe(ckpt["rng"]["numpy"]))
        random.setstate(ckpt["rng"]["python"])
        log(f"resumed from {last} at step {start}")
    elif init is not None:
        state, channels = initial_state(init, spec, cases, log=log)
        net.load_state_dict(state, strict=True)
        torch.manual_seed(cfg.seed)  # the same draws with or without a parent
        log(f"starting from '{init.name}' ({init.family}, sha256 {init.sha256[:12]})")

    sampler = PatchSampler(cases, patch, cfg.fg_fraction, seed=cfg.seed, class_weights=_new_label_odds(spec, channels))

    def save_checkpoint(step: int) -> None:
        state = {
            "state_dict": net.state_dict(),
            "optimizer": opt.state_dict(),
            "step": step,
            "history": history,
            "val_history": val_history,
            "best": best,
            "channels": channels,
            "rng": _rng_state(),
            "config": asdict(cfg),
            "spec": spec.name,
        }
        with atomic_path(last) as tmp:
            torch.save(state, tmp)

    def run_validation(step: int) -> None:
        t = time.time()
        dice = validate(net, val_cases, spec)
        mean = mean_dice(dice)
        val_history.append({"step": step, "mean_dice": mean, "dice": dice})
        log(
            f"step {step} validation Dice (mean {mean:.4f}, {time.time() - t:.1f}s): "
            + ", ".join(f"{k} {v:.3f}" for k, v in dice.items())
        )
        if not math.isnan(mean) and mean > best.get("mean_dice", -1.0):
            best.update({"step": step, "mean_dice": mean, "dice": dice})
            with atomic_path(best_path) as tmp:
                torch.save({k: v.detach().clone() for k, v in net.state_dict().items()}, tmp)

    net.train()
    t_train, running = time.time(), []
    for step in range(start, cfg.steps):
        for group in opt.param_groups:
            group["lr"] = _lr_at(step, cfg) * group.get("lr_factor", 1.0)
        # patch choice and augmentation are seeded per step, so a resumed run draws what an
        # uninterrupted one would have drawn
        sampler.rng = np.random.default_rng([cfg.seed, step])
        if augment is not None:
            augment.set_random_state(seed=(cfg.seed * 1_000_003 + step) % (2**32))
        x, y = _batch(sampler, cfg.batch_size, augment)
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(net(x), y)
        loss.backward()
        opt.step()
        running.append(loss.item())
        if (step + 1) % 25 == 0 or step + 1 == cfg.steps:
            mean = float(np.mean(running))
            history.append({"step": step + 1, "loss": mean})
            rate = (step + 1 - start) / (time.time() - t_train)
            log(f"step {step + 1}/{cfg.steps} loss {mean:.4f} lr {_lr_at(step, cfg):.2e} ({rate:.2f} steps/s)")
            running = []
        if (step + 1) % cfg.checkpoint_every == 0 or step + 1 == cfg.steps or step + 1 == stop_at:
            if val_cases:
                run_validation(step + 1)
            save_checkpoint(step + 1)
        if stop_at is not None and step + 1 >= stop_at:
            log(f"stopped at step {step + 1} (checkpoint {last})")
            return {"spec": spec.name, "steps": step + 1, "stopped": True}

    final = out_dir / "model.pt"
    with atomic_path(final) as tmp:
        torch.save({k: v.detach().clone() for k, v in net.state_dict().items()}, tmp)
    result = best_path if best else final
    provenance = {
        "trained_by": "medseg train",
        "parent": {"name": init.name, "family": init.family, "sha256": init.sha256, "source": init.source}
        if init is not None
        else None,
        "channels": channels or None,
        "data": str(Path(data_dir).resolve()),
        "steps": cfg.steps,
        "train_cases": [c.name for c in cases],
        "val_cases": [c.name for c in val_cases],
        "best_step": best.get("step"),
        "val_dice": best.get("dice"),
        "val_mean_dice": best.get("mean_dice"),
    }
    provenance = {k: v for k, v in provenance.items() if v is not None}
    result_spec = spec.model_copy(
        update={
            "weights": WeightsSpec(path=result.name, sha256=sha256_of(result)),
            "provenance": provenance,
            "base_dir": str(out_dir.resolve()),
        }
    )
    write_spec(result_spec, out_dir / SPEC_FILE)
    summary = {
        "spec": spec.name,
        "steps": cfg.steps,
        "config": asdict(cfg),
        "cases": [c.name for c in cases],
        "val_cases": [c.name for c in val_cases],
        "weights": str(final),
        "sha256": sha256_of(final),
        "model": str(out_dir / SPEC_FILE),
        "model_weights": str(result),
        "best": best or None,
        "val_history": val_history,
        "final_loss": history[-1]["loss"] if history else None,
        "train_seconds": round(time.time() - t0, 1),
    }
    with atomic_path(out_dir / "train_summary.json") as tmp:
        tmp.write_text(json.dumps(summary, indent=2, default=float))
    log(f"wrote {final} (sha256 {summary['sha256']})")
    if best:
        log(f"best validation mean Dice {best['mean_dice']:.4f} at step {best['step']} ({best_path})")
    log(f"model: {out_dir / SPEC_FILE} (medseg infer SCAN --model {out_dir})")
    return summary


def _param_groups(net: torch.nn.Module, spec: ModelSpec, cfg: TrainConfig, init: ParentModel | None) -> list[dict]:
    if init is None or cfg.head_lr_factor == 1.0:
        return [{"params": list(net.parameters())}]
    head = set(head_dims(spec))
    named = list(net.named_parameters())
    return [
        {"params": [p for k, p in named if k not in head]},
        {"params": [p for k, p in named if k in head], "lr_factor": cfg.head_lr_factor},
    ]


def _new_label_odds(spec: ModelSpec, channels: dict[str, str]) -> dict[int, float] | None:
    """Patch-centre odds that put half of the foreground patches on the labels new to a fine-tune:
    they are what the data has to teach, the kept ones only need keeping."""
    new = [k for k, v in spec.foreground.items() if channels.get(v.name, "kept") != "kept"]
    kept = len(spec.foreground) - len(new)
    if not new or not kept:
        return None
    return {k: kept / len(new) for k in new}


def _check_label_values(cases: list[CachedCase], spec: ModelSpec) -> None:
    """Every label value in the data must be one of the spec's labels."""
    for case in cases:
        unknown = sorted(set(case.class_voxels) - set(spec.labels) - {0})
        if unknown:
            raise InputError(
                f"case '{case.name}' has label value(s) {', '.join(map(str, unknown))} that the label set "
                f"({', '.join(f'{k}={v.name}' for k, v in sorted(spec.labels.items()))}) does not name; name "
                "them in a labels.json, the label files' sidecars or --labels",
                case.name,
            )
