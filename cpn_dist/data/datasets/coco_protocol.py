"""The published WSSS protocols of COCO's labels and masks, as choices (the table of
:mod:`cpn_dist.data.datasets.coco`). Kept apart from the annotation reader so that the command line can offer
them without importing numpy."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from cpn_dist.errors import CpnError

CROWD_MASKS = ("background", "ignore", "class")
OVERLAPS = ("last", "smallest")
EMPTY_IMAGES = ("keep", "drop")


@dataclass(frozen=True)
class CocoProtocol:
    """How image labels and ground-truth masks are made from the annotations (the table of
    :mod:`cpn_dist.data.datasets.coco`)."""

    crowd_labels: bool = True  # crowd annotations count in the image-level labels
    crowd_mask: str = "background"  # crowd pixels: background (not drawn) | ignore (255) | class
    overlap: str = "last"  # where instances overlap: the one written last wins | the smallest on top
    empty: str = "keep"  # images without any annotation: keep (all-background mask) | drop

    def __post_init__(self) -> None:
        for name, value, choices in (("crowd_mask", self.crowd_mask, CROWD_MASKS),
                                     ("overlap", self.overlap, OVERLAPS), ("empty", self.empty, EMPTY_IMAGES)):
            if value not in choices:
                raise CpnError(f"COCO protocol {name}: '{value}' is not one of {', '.join(choices)}")

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


# The protocols of the papers one compares against (docs/coco.md): the flags of `cpn pack --coco-root`.
PROTOCOLS = {
    "recam": CocoProtocol(),
    "sipe": CocoProtocol(empty="drop"),
    "toco": CocoProtocol(crowd_mask="class", overlap="smallest", empty="drop"),
}
