"""The dense CRF's settings (:mod:`cpn_dist.labels.crf` runs it); apart so that the ``--crf-*`` flags of the
CLI are declared without importing numpy."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from cpn_dist.errors import CpnError


@dataclass(frozen=True)
class CrfParams:
    """Dense CRF settings (defaults: AffinityNet/PSA)."""

    iterations: int = 10
    gaussian_sxy: float = 3.0
    gaussian_compat: float = 3.0
    bilateral_sxy: float = 80.0
    bilateral_srgb: float = 13.0
    bilateral_compat: float = 10.0

    def __post_init__(self) -> None:
        if self.iterations < 1:
            raise CpnError(f"CRF iterations must be >= 1, got {self.iterations}")
        for name, value in asdict(self).items():
            if name != "iterations" and not value > 0:
                raise CpnError(f"CRF {name.replace('_', ' ')} must be > 0, got {value}")
