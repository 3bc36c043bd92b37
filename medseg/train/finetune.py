"""Fine-tuning: start ``medseg train`` from an existing model's weights, with a new label set.

The output channels are matched by label name. A channel whose name persists keeps its weights
(its rows of every layer whose size follows the number of output channels: the final convolution,
and in MONAI's UNet the residual unit after it); a label the parent did not have gets a new channel;
a parent label the new data does not name is dropped. Everything else loads strictly: any other
shape mismatch means the network is not the parent's, and is an error.

A new label's channel starts as a copy of the parent channel the parent model predicts for most of
that label's voxels in the training data (``kidney_left`` and ``kidney_right`` start from
``kidneys``), so the split starts from a network that already finds the structure and only has to
learn where to divide it; the two copies separate because their targets differ. When the parent
predicts background there (a structure it never saw), the channel starts from the mean of the
parent's foreground channels rather than a copy of background, which would tie with background on
the whole scan.

Example:
    >>> parent = open_parent("phantom-unet3d")  # doctest: +SKIP
    >>> labels = {0: ("background", None), 1: ("liver", None)}
    >>> spec = finetune_spec(parent.spec, labels, name="liver-ft")  # doctest: +SKIP
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import torch

from medseg.errors import ModelError
from medseg.models.checkpoints import load_state_strictly
from medseg.models.networks import build_network
from medseg.models.spec import LabelSpec, ModelSpec
from medseg.train.labels import LabelSet

#: colours for new labels that bring none (cycled)
_PALETTE = [(60, 180, 75), (0, 130, 200), (245, 130, 48), (145, 30, 180), (70, 240, 240), (240, 50, 230)]


@dataclass
class ParentModel:
    """The model a fine-tune starts from: its spec and weights (a state dict, not yet remapped)."""

    name: str
    family: str
    spec: ModelSpec
    state: dict[str, torch.Tensor]
    sha256: str
    source: str = ""
    #: the parent's network with its weights (it votes on where new labels' channels start)
    network: torch.nn.Module | None = None


def open_parent(model: str | Path, trust_bundle: bool = False) -> ParentModel:
    """Open ``--init-from MODEL`` (anything ``--model`` takes) as a trainable MONAI network's weights.

    Raises ModelError for models without a trainable MONAI network (nnU-Net folders, TotalSegmentator
    tasks, the weights-free ``ct-anatomy``) and for TorchScript weights.
    """
    from medseg.models.checkpoints import is_torchscript, load_network
    from medseg.models.monai import MonaiModel
    from medseg.models.registry import open_model

    opened = open_model(model, "cpu", trust_bundle)
    if opened.family == "nnunet-v2":
        raise ModelError(
            "an nnU-Net v2 folder cannot be fine-tuned into a ModelSpec: its network "
            "(dynamic_network_architectures) and nnU-Net's preprocessing (crop to non-zero, dataset-wide CT "
            "normalisation, separate-z resampling) have no ModelSpec equivalent; fine-tune it with nnU-Net "
            "itself (nnUNetv2_train DATASET CONFIG FOLD -pretrained_weights fold_0/checkpoint_final.pth)",
            str(model),
        )
    if not isinstance(opened, MonaiModel):
        raise ModelError(f"is a {opened.family} model without a network to fine-tune", opened.name)
    spec = opened.spec
    path = spec.weights_path()
    if path is None or not path.is_file():
        raise ModelError("the model to start from has no weights file", path or opened.name)
    if (spec.weights and spec.weights.format == "torchscript") or is_torchscript(path):
        raise ModelError("TorchScript weights cannot be fine-tuned (no parameter names); give a state dict", path)
    net, digest = load_network(spec)  # sha256 checked, weights_only, strict fit to the parent's own network
    state = {k: v.detach().clone() for k, v in net.state_dict().items()}
    return ParentModel(opened.name, opened.family, spec, state, digest, str(model), network=net)


def _with_out_channels(spec: ModelSpec, n: int) -> ModelSpec:
    return spec.model_copy(update={"network": spec.network.model_copy(update={"out_channels": n}), "labels": {}})


def head_dims(spec: ModelSpec) -> dict[str, list[int]]:
    """The state-dict entries whose size follows ``out_channels``, and which of their dims do.

    Found by building the network (on the meta device, no memory) with two channel counts and
    comparing shapes, so it holds for every network class a spec may name.
    """
    n = spec.network.out_channels
    with torch.device("meta"):
        a = build_network(_with_out_channels(spec, n)).state_dict()
        b = build_network(_with_out_channels(spec, n + 1)).state_dict()
    dims: dict[str, list[int]] = {}
    for key, ta in a.items():
        if ta.shape == b[key].shape:
            continue
        changed = [d for d, (x, y) in enumerate(zip(ta.shape, b[key].shape)) if x != y]
        if any(ta.shape[d] != n or b[key].shape[d] != n + 1 for d in changed):
            raise ModelError(
                f"cannot map output channels of {spec.network.cls}: '{key}' does not grow one per channel", spec.name
            )
        dims[key] = changed
    return dims


def finetune_spec(
    parent: ModelSpec,
    labels: LabelSet,
    name: str,
    base: ModelSpec | None = None,
) -> ModelSpec:
    """The result's spec: ``base``'s (default: the parent's) network, preprocessing and inference,
    with ``labels`` as its output channels (``out_channels`` = highest label value + 1)."""
    base = base or parent
    parent_colors = {v.name: tuple(v.color) for v in parent.labels.values()}
    new_labels, k = {}, 0
    for index, (label_name, color) in sorted(labels.items()):
        if color is None:
            color = parent_colors.get(label_name)
        if color is None:
            color, k = _PALETTE[k % len(_PALETTE)], k + 1
        new_labels[index] = LabelSpec(name=label_name, color=color)
    out = max(max(new_labels) + 1, 2)
    network = base.network.model_copy(update={"out_channels": out})
    description = f"fine-tuned from {parent.name}" + (f" ({parent.description})" if parent.description else "")
    update = {"name": name, "description": description, "network": network, "labels": new_labels}
    return base.model_copy(update={**update, "weights": None, "provenance": {}})


def channel_sources(parent: ModelSpec, child: ModelSpec) -> dict[int, int | None]:
    """For each child channel, the parent channel with the same label name (0 is always 0), else None."""
    by_name = {v.name: k for k, v in parent.labels.items()}
    out: dict[int, int | None] = {}
    for index in range(child.network.out_channels):
        label = child.labels.get(index)
        out[index] = 0 if index == 0 else (by_name.get(label.name) if label else None)
    return out


@torch.no_grad()
def majority_parent_channel(net: torch.nn.Module, cases: list, spec: ModelSpec, label: int, patches: int = 4) -> int:
    """The parent channel predicted for most voxels of ``label`` in a few training patches around it."""
    from medseg.train.dataset import PatchSampler

    holders = [c for c in cases if label in c.class_voxels]
    if not holders:
        return 0
    only = {c: float(c == label) for case in holders for c in case.class_voxels}  # centred on this label
    sampler = PatchSampler(holders, tuple(spec.inference.roi_size), fg_fraction=1.0, seed=label, class_weights=only)
    votes: Counter = Counter()
    net.eval()
    for _ in range(patches):
        x, y = sampler.sample()
        pred = net(x.unsqueeze(0).float()).argmax(1)[0]
        votes.update(pred[y == label].reshape(-1).tolist())
    return votes.most_common(1)[0][0] if votes else 0


def remap_state(
    state: dict[str, torch.Tensor],
    dims: dict[str, list[int]],
    sources: list[int | None],
    n_parent: int,
) -> dict[str, torch.Tensor]:
    """Index every head entry's channel dims by ``sources`` (None: the mean of the parent's foreground
    channels); other entries pass through unchanged."""
    fg = torch.arange(1, n_parent) if n_parent > 1 else torch.arange(n_parent)
    index = torch.tensor([n_parent if s is None else s for s in sources])
    out = dict(state)
    for key, channel_dims in dims.items():
        if key not in state:
            continue  # the strict load names it
        t = state[key]
        for d in channel_dims:
            if t.shape[d] != n_parent:
                raise ModelError(
                    f"'{key}' has {t.shape[d]} output channels in the weights, the parent spec says {n_parent}"
                )
            mean = t.index_select(d, fg).mean(d, keepdim=True) if t.is_floating_point() else t.index_select(d, fg[:1])
            t = torch.cat([t, mean], d).index_select(d, index)
        out[key] = t.clone()
    return out


def initial_state(
    parent: ParentModel, child: ModelSpec, cases: list, log=print
) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The child network's starting weights from the parent's, channels mapped by label name.

    Returns ``(state_dict, how)`` where ``how`` says per child label where its channel came from.
    """
    n_parent = parent.spec.network.out_channels
    dims = head_dims(_with_out_channels(child, n_parent))
    parent_net = parent.network
    sources: list[int | None] = []
    how: dict[str, str] = {}
    by_name = channel_sources(parent.spec, child)
    for index, src in by_name.items():
        label = child.labels.get(index)
        if src is None and label is not None:
            if parent_net is None:
                parent_net = build_network(parent.spec)
                parent_net.load_state_dict(parent.state, strict=True)
            src = majority_parent_channel(parent_net, cases, parent.spec, index) or None
        name = label.name if label else f"channel {index}"
        parent_name = parent.spec.labels[src].name if src is not None and src in parent.spec.labels else None
        if by_name[index] is not None:
            how[name] = "kept"
        elif src is not None:
            how[name] = f"new, from '{parent_name or src}'"
        else:
            how[name] = "new, mean of the parent's foreground channels"
        sources.append(src)
    dropped = sorted({v.name for v in parent.spec.labels.values()} - {v.name for v in child.labels.values()})
    log(
        "output channels: "
        + ", ".join(f"{k} ({v})" for k, v in how.items())
        + (f"; dropped: {', '.join(dropped)}" if dropped else "")
    )
    state = remap_state(parent.state, dims, sources, n_parent)
    net = build_network(child)
    load_state_strictly(
        net,
        state,
        f"the weights of '{parent.name}' do not fit network {child.network.cls} of the spec being trained "
        "(only the output channels may differ)",
        parent.source or parent.name,
    )
    return {k: v.detach().clone() for k, v in net.state_dict().items()}, how


def prepare_finetune(
    init_from: str | Path,
    data_dir: str | Path,
    name: str,
    spec: ModelSpec | None = None,
    labels: str | None = None,
    trust_bundle: bool = False,
) -> tuple[ParentModel, ModelSpec]:
    """The parent model and the spec to train: ``spec``'s (default: the parent's) network,
    preprocessing and inference, with the label set of ``data_dir`` (:mod:`medseg.train.labels`;
    the parent's labels when the data names none)."""
    from medseg.train.dataset import find_pairs
    from medseg.train.labels import find_label_set

    parent = open_parent(init_from, trust_bundle)
    pairs = find_pairs(data_dir)
    label_set = find_label_set(data_dir, [lbl for _, lbl in pairs], labels)
    if label_set is None:
        label_set = {k: (v.name, tuple(v.color)) for k, v in parent.spec.labels.items()}
    return parent, finetune_spec(parent.spec, label_set, name, base=spec)
