"""``medseg train``: Dice + cross-entropy on random patches, with checkpoints and exact resume.

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

from medseg.io.atomic import atomic_path
from medseg.models.checkpoints import sha256_of
from medseg.models.networks import build_network
from medseg.models.spec import ModelSpec
from medseg.train.dataset import CachedCase, PatchSampler, find_pairs, load_case


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
) -> dict:
    """Train ``spec``'s network on ``data_dir``; writes ``out_dir/last.pt`` and ``out_dir/model.pt``.

    With ``resume=True`` it continues from ``last.pt`` (weights, optimiser, step and samplers'
    random state), so an interrupted run ends with the same weights as an uninterrupted one.
    ``stop_at`` ends the run early after that step's checkpoint, as an interruption would.
    Returns a summary dict (also written to ``out_dir/train_summary.json``).
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
    log(f"{len(cases)} cases cached in {time.time() - t0:.1f}s; patch {patch}, batch {cfg.batch_size}")

    net = build_network(spec)
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True, squared_pred=False, smooth_nr=1e-5, smooth_dr=1e-5)
    sampler = PatchSampler(cases, patch, cfg.fg_fraction, seed=cfg.seed)
    augment = _augmenter(spec.network.spatial_dims, cfg.seed) if cfg.augment else None
    start, history = 0, []
    last = out_dir / "last.pt"
    if resume and last.exists():
        ckpt = torch.load(last, map_location="cpu", weights_only=True)
        net.load_state_dict(ckpt["state_dict"])
        opt.load_state_dict(ckpt["optimizer"])
        start, history = int(ckpt["step"]), list(ckpt.get("history", []))
        torch.set_rng_state(ckpt["rng"]["torch"])
        np.random.set_state(_np_state_from_safe(ckpt["rng"]["numpy"]))
        random.setstate(ckpt["rng"]["python"])
        log(f"resumed from {last} at step {start}")

    def save_checkpoint(step: int) -> None:
        state = {
            "state_dict": net.state_dict(),
            "optimizer": opt.state_dict(),
            "step": step,
            "history": history,
            "rng": _rng_state(),
            "config": asdict(cfg),
            "spec": spec.name,
        }
        with atomic_path(last) as tmp:
            torch.save(state, tmp)

    net.train()
    t_train, running = time.time(), []
    for step in range(start, cfg.steps):
        for group in opt.param_groups:
            group["lr"] = _lr_at(step, cfg)
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
            save_checkpoint(step + 1)
        if stop_at is not None and step + 1 >= stop_at:
            log(f"stopped at step {step + 1} (checkpoint {last})")
            return {"spec": spec.name, "steps": step + 1, "stopped": True}

    final = out_dir / "model.pt"
    with atomic_path(final) as tmp:
        torch.save({k: v.detach().clone() for k, v in net.state_dict().items()}, tmp)
    summary = {
        "spec": spec.name,
        "steps": cfg.steps,
        "config": asdict(cfg),
        "cases": [c.name for c in cases],
        "weights": str(final),
        "sha256": sha256_of(final),
        "final_loss": history[-1]["loss"] if history else None,
        "train_seconds": round(time.time() - t0, 1),
    }
    with atomic_path(out_dir / "train_summary.json") as tmp:
        tmp.write_text(json.dumps(summary, indent=2))
    log(f"wrote {final} (sha256 {summary['sha256']})")
    return summary
