"""The background-score (β) sweep a user asks for: ``START:STOP:STEP`` or a list, checked in one line, and
the default sweep of each dataset (the released one on VOC, a wide one elsewhere)."""

from __future__ import annotations

import math

from cpn_dist.data.datasets.info import DatasetInfo
from cpn_dist.errors import CpnError

SWEEP_FORMS = "START:STOP:STEP (e.g. 0.20:0.60:0.01) or a list 0.2,0.3"
MAX_BETAS = 10_000  # a sweep longer than this is a typo in STEP (the released sweep has 40 values)
VOC_BETAS = "0.20:0.60:0.01"  # the released sweep, around VOC's best β
# Elsewhere (COCO) the best β is not known in advance: every β at which a released-format map (peak just
# under 0.5) can still be foreground.
WIDE_BETAS = "0.01:0.50:0.01"


def default_betas(dataset: DatasetInfo | None = None) -> str:
    """The β sweep of ``cpn eval`` when none is given: the released one on VOC, :data:`WIDE_BETAS` on others."""
    return VOC_BETAS if dataset is None or dataset.name == "voc" else WIDE_BETAS


def parse_betas(spec: str) -> list[float]:
    """β values from ``START:STOP:STEP`` (STOP excluded, like ``range``) or a comma list.

    Values are rounded to 10 decimals so ``0.20:0.60:0.01`` gives exactly the floats ``i / 100``
    that the released sweep uses. A sweep that is empty, runs backwards, has a STEP <= 0 or holds
    more than :data:`MAX_BETAS` values is a one-line :class:`CpnError` showing a corrected sweep."""
    spec = spec.strip()
    return _range_sweep(spec) if ":" in spec else _list_sweep(spec)


def _number(text: str, spec: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise CpnError(f"--betas '{spec}': expected {SWEEP_FORMS}") from None
    if not math.isfinite(value):
        raise CpnError(f"--betas '{spec}': every value must be a finite number; expected {SWEEP_FORMS}")
    return value


def _range_sweep(spec: str) -> list[float]:
    """The values of ``START:STOP:STEP``; a backward, empty or non-advancing sweep names a corrected one."""
    parts = spec.split(":")
    if len(parts) != 3:
        raise CpnError(f"--betas '{spec}': expected {SWEEP_FORMS}")
    start, stop, step = (_number(x, spec) for x in parts)
    if step <= 0:
        low, high = sorted((start, stop))
        fixed = f"{low:g}:{high:g}:{abs(step) or 0.01:g}"
        raise CpnError(f"--betas '{spec}': STEP must be above 0 (values rise from START to STOP), e.g. {fixed}")
    if stop <= start:
        fixed = f"{stop:g}:{start:g}:{step:g}" if stop < start else f"{start:g}:{start + step:g}:{step:g}"
        raise CpnError(f"--betas '{spec}': START {start:g} must be below STOP {stop:g} (values rise from START to "
                       f"STOP, STOP excluded), e.g. {fixed}")  # fmt: skip
    n = math.ceil(round((stop - start) / step, 9))
    if n > MAX_BETAS:  # before the list is made: 0:1:1e-12 would not fit in memory
        raise CpnError(f"--betas '{spec}': {n} values, more than {MAX_BETAS}; take a larger STEP "
                       "(e.g. 0.20:0.60:0.01)")  # fmt: skip
    return [round(start + i * step, 10) for i in range(n)]


def _list_sweep(spec: str) -> list[float]:
    betas = [_number(x, spec) for x in spec.split(",") if x.strip()]
    if not betas:
        raise CpnError(f"--betas '{spec}': no β value; expected {SWEEP_FORMS}")
    return betas
