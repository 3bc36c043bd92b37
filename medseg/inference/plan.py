"""The Plan the engine runs: device, tiling, precision, where buffers live, and the predicted peaks.

The memory planner (:mod:`medseg.inference.planner`) makes it; ``medseg plan`` prints it, the
engine runs it, and a run's sidecar records it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import asdict, dataclass, field


@dataclass(frozen=True)
class Plan:
    device: str = "cpu"
    roi_size: tuple[int, ...] = (64, 64, 64)
    sw_batch_size: int = 1
    overlap: float = 0.25
    blend: str = "gaussian"
    #: how a volume smaller than a window is padded (MONAI's ``padding_mode``: constant 0, replicate)
    padding_mode: str = "constant"
    precision: str = "fp32"
    #: where windows are stitched: "device" or "cpu" (MONAI's ``device`` argument)
    aggregation_device: str = "cpu"
    #: where the preprocessed image lives while windows are cut from it
    image_device: str = "cpu"
    #: planes of the aggregation buffer along the last axis (3D) or slices per chunk (2D);
    #: 0 keeps the whole volume (MONAI's full buffer). Smaller values stream slab by slab.
    slab_depth: int = 0
    #: glibc allocator mode on the host while the windows run: "strict" (RSS follows live tensors, as
    #: predicted) or "fast" (freed blocks are reused; chosen only with ample headroom), see
    #: host_memory.use_host_allocator; "default" leaves the process's allocator alone (library use,
    #: the viewer: only a run that asks for tuning gets it)
    host_allocator: str = "default"
    #: run the network on channels_last_3d tensors (CPU, when timed faster: inference/speed.py)
    channels_last: bool = False
    #: predicted peak bytes per component, filled in by the memory planner
    predicted_bytes: dict[str, int] = field(default_factory=dict)
    #: budgets the plan was made for (``gpu``/``host`` bytes), empty when unplanned
    budget_bytes: dict[str, int] = field(default_factory=dict)
    #: why the planner chose what it chose, and what would fit when nothing does
    notes: tuple[str, ...] = ()

    @property
    def streaming(self) -> bool:
        return self.slab_depth > 0

    def to_dict(self) -> dict:
        d = asdict(self)
        d["roi_size"] = list(self.roi_size)
        d["notes"] = list(self.notes)
        return d

    def replace(self, **changes) -> Plan:
        return dataclasses.replace(self, **changes)
