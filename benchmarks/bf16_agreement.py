"""Why bf16's gradient can disagree with fp32's on an untrained network: max-normalisation's peaks.

Every CPN map is max-normalised per (image, class) (``cpn_dist.cpn.loss.max_norm``): the gradient of its
denominator flows to one pixel, the map's peak (and its minimum). Where two pixels of an untrained CAM
are within bf16's rounding of each other, bf16 can pick a different peak, and that map's whole
normaliser gradient moves elsewhere. This script measures, for the paper recipe on the tiny model, the
cosine between the fp32 and the bf16 gradient (a) as computed and (b) with every map's peak and minimum
held at the pixels fp32 chose (everything else as computed in bf16), and the share of maps whose peak
bf16 moves. If (b) is close to 1, the disagreement is the normaliser's choice of pixel, not arithmetic.

    .venv/bin/python benchmarks/bf16_agreement.py --crops 48 64 96
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from unittest import mock

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from device_check import RECIPES, random_batch  # noqa: E402

import cpn_dist.cpn.loss as losses  # noqa: E402
from cpn_dist.config import load_config  # noqa: E402
from cpn_dist.cpn.model import build_model  # noqa: E402
from cpn_dist.cpn.task import CPNTask  # noqa: E402


class PinnedPeaks:
    """max_norm whose peak and minimum pixels are recorded on one run and reused on the next."""

    def __init__(self):
        self.record: list[tuple[torch.Tensor, torch.Tensor]] = []
        self.replay = False
        self.calls = 0

    def __call__(self, p: torch.Tensor) -> torch.Tensor:
        flat = F.relu(p).flatten(2)
        if self.replay:
            hi_at, lo_at = self.record[self.calls]
            self.calls += 1
        else:
            hi_at, lo_at = flat.argmax(-1, keepdim=True), flat.argmin(-1, keepdim=True)
            self.record.append((hi_at, lo_at))
        hi = flat.gather(-1, hi_at)[..., None]
        lo = flat.gather(-1, lo_at)[..., None]
        return F.relu(F.relu(p) - lo - losses.EPS) / (hi - lo + losses.EPS)


def gradient(cfg, batch, bf16: bool) -> torch.Tensor:
    torch.manual_seed(0)
    model = build_model("tiny", cfg.model.head, dropout=0.0).train()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        terms, _ = CPNTask(cfg).loss(model, batch, torch.device("cpu"), None)
    terms["total"].backward()
    return torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])


def peaks(cfg, batch, bf16: bool) -> torch.Tensor:
    torch.manual_seed(0)
    model = build_model("tiny", cfg.model.head, dropout=0.0).train()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        cams, refined = model(torch.cat([batch["image"], batch["image"] * batch["mask"],
                                         batch["image"] * (1 - batch["mask"])]))  # fmt: skip
    return torch.cat([cams.float(), refined.float()]).flatten(2).argmax(-1)


def measure(crop: int) -> dict:
    cfg = load_config(None, [*RECIPES["paper"], "model.backbone=tiny", "model.dropout=0.0", f"data.crop={crop}",
                             "loss.ohem_scope=image"])  # fmt: skip
    batch = random_batch(4, crop)
    as_computed = F.cosine_similarity(gradient(cfg, batch, False), gradient(cfg, batch, True), dim=0)
    pinned = PinnedPeaks()
    with mock.patch.object(losses, "max_norm", pinned):
        g32 = gradient(cfg, batch, False)
        pinned.replay = True
        g16 = gradient(cfg, batch, True)
    moved = (peaks(cfg, batch, False) != peaks(cfg, batch, True)).float().mean()
    pinned_cosine = F.cosine_similarity(g32, g16, dim=0)
    return {"crop": crop, "cosine": float(as_computed), "cosine_peaks_pinned": float(pinned_cosine),
            "maps_with_moved_peak": float(moved)}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--crops", type=int, nargs="+", default=[48, 64, 96])
    ap.add_argument("--out", default="benchmarks/results")
    args = ap.parse_args()
    rows = [measure(c) for c in args.crops]
    print("| crop | gradient cosine bf16 vs fp32 | same, peaks pinned to fp32's | maps whose peak bf16 moves |")
    print("|---|---|---|---|")
    for r in rows:
        moved = 100 * r["maps_with_moved_peak"]
        print(f"| {r['crop']} | {r['cosine']:.4f} | {r['cosine_peaks_pinned']:.4f} | {moved:.1f} % |")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "bf16_agreement.json").write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
