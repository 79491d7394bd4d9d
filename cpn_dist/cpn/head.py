"""The CPN refinement head: Pixel Correlation Module (PCM) and Pixel-Region Correlation Module (PRCM).

Both modules refine a detached, normalised CAM ``Y`` (N×C×h×w, C the dataset's classes with
background: 21 for VOC, 81 for COCO) with the feature stack ``X``
(N×195×h×w: the input image resized to the CAM grid, and 1×1 reductions of two backbone stages to 64
and 128 channels). The refined CAM is ``Y_pcm + Y_prcm`` (paper Fig. 4). Everything here runs in
float32 whatever the autocast state of the caller.

The variants, selected by ``model.head``:

``official`` reproduces the released ``network/resnet38_CPN.py`` forward exactly:

* head input (``official_head_input``): relu; ``relu(c - 1e-5) / (spatial max + 1e-5)`` per channel;
  channel 0 := 1 - max over foreground channels; then every foreground value below the per-pixel
  foreground maximum is set to 0 (ties are kept);
* PCM: ``g = f9(X)`` without ReLU, L2-normalised per position (norm + 1e-5); affinity
  ``relu(gᵀg)`` divided by its column sums (+ 1e-5); ``Y_pcm = Y · aff``;
* PRCM: object-region context ``Z = softmax_positions(Y) Xᵀ`` (the OCR "SpatialGather", scale 1),
  laid out N×195×C×1; ``key = relu(f10(Z))`` (N×192×C×1) is then *reinterpreted* as N×C×192 (the
  released ``.view``, not a transpose); relation ``key · relu(f9(X))`` scaled by ``C**-0.5`` (the
  released code, written for VOC, has the constant ``21**-0.5``: the same for C = 21, and for another
  dataset the scale its own class count gives); softmax over the h·w positions; ``Y_prcm = Y ∘ softmax``.

``paper`` follows eqs. 9-12 where the released code departs from them:

1. head input: the per-channel max-normalised CAM (``relu(c) / (max + 1e-5)``) with the background
   channel ``1 - max_c Y^c`` (eq. 16 with α = 1); no suppression of the non-maximal foreground
   classes (that step is in the released code only);
2. PCM (eqs. 9-10): as released — the cosine affinity of ``g(X)``, ReLU, normalised per output position.
   Eq. 9 writes the normaliser as the sum over all (i, j); read literally it divides ``Y_pcm`` by
   ~h·w and makes PCM vanish next to PRCM, so we keep the per-column sum of the self-attention [33]
   and of PCM in SEAM [35], which the paper builds on;
3. PRCM (eq. 11): ``P_R = φ(Z) g(X)`` with ``φ = f10`` applied to each region's feature vector
   (a true transpose to C×C2, not the memory reinterpretation) and ``g = f9`` *shared with PCM*
   and without ReLU (eqs. 10 and 11 use the same g); no ``C**-0.5`` scaling;
4. PRCM (eq. 12): ``SoftMax(P_R)`` over the class axis, i.e. for each pixel a distribution over the
   C regions — the pixel-region relation of OCR [40] that the paper follows — where the released code
   normalises over positions.

``pcm`` is the ``paper`` head without PRCM: the refined CAM is ``Y_pcm`` alone (no ``f10``), the
"+ PCM" rows of the paper's Table 2 (baseline + L_tcp + PCM, + L_cpcr, + OHEM) before PRCM is added.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

EPS = 1e-5


def official_head_input(cam: torch.Tensor) -> torch.Tensor:
    """The released head input: max-normalised CAM, background 1 - max fg, non-max fg zeroed."""
    cam = F.relu(cam)
    peak = cam.flatten(2).max(dim=-1)[0][..., None, None] + EPS
    norm = F.relu(cam - EPS) / peak
    fg = norm[:, 1:]
    fg_max = fg.max(dim=1, keepdim=True)[0]
    background = 1 - fg_max
    fg = torch.where(fg < fg_max, torch.zeros_like(fg), fg)
    return torch.cat([background, fg], dim=1)


def paper_head_input(cam: torch.Tensor) -> torch.Tensor:
    """The paper's head input: per-channel max-normalised CAM with background 1 - max fg (eq. 16, α = 1)."""
    cam = F.relu(cam)
    fg = cam[:, 1:] / (cam[:, 1:].flatten(2).max(dim=-1)[0][..., None, None] + EPS)
    return torch.cat([1 - fg.max(dim=1, keepdim=True)[0], fg], dim=1)


def pixel_correlation(cam: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """PCM (eqs. 9-10): ``Y_pcm = Y · J`` with J the ReLU'd cosine affinity of the embedding g, normalised
    per output position. ``cam`` N×C×h×w, ``g`` N×C2×h×w (f9(X), no ReLU)."""
    n, c, h, w = cam.shape
    g = g.flatten(2)
    g = g / (torch.linalg.vector_norm(g, dim=1, keepdim=True) + EPS)
    affinity = torch.bmm(g.transpose(1, 2), g)  # (h·w)² per image: 552 MB for a 1000×750 input at stride 8
    if torch.is_grad_enabled() and (affinity.requires_grad or cam.requires_grad):
        affinity = F.relu(affinity)
        affinity = affinity / (affinity.sum(dim=1, keepdim=True) + EPS)
    else:  # inference: in place, so that one affinity is alive, not two
        affinity.relu_()
        affinity.div_(affinity.sum(dim=1, keepdim=True).add_(EPS))
    return torch.bmm(cam.flatten(2), affinity).reshape(n, c, h, w)


def region_context(features: torch.Tensor, cam: torch.Tensor) -> torch.Tensor:
    """The object-region representation ``Z = SoftMax(Y) Xᵀ`` (paper Sec. 3.3): N×C×C1, the softmax
    taken over positions (scale 1)."""
    probs = F.softmax(cam.flatten(2), dim=2)
    return torch.bmm(probs, features.flatten(2).transpose(1, 2))


def official_pixel_region(cam: torch.Tensor, features: torch.Tensor, g: torch.Tensor, f10: nn.Conv2d) -> torch.Tensor:
    """The released PRCM: ``Y ∘ softmax_positions(C^-1/2 · view(relu(f10(Z))) · relu(g))`` (C = 21 there)."""
    n, c, h, w = cam.shape
    context = region_context(features, cam).transpose(1, 2).unsqueeze(3)  # N×C1×C×1, as released
    # The released code reinterprets the N×C2×C×1 memory as N×C×C2 (`.view`), not a transpose.
    key = F.relu(f10(context)).reshape(n, c, -1)
    relation = torch.bmm(key, F.relu(g).flatten(2)) * c**-0.5
    return cam * F.softmax(relation, dim=-1).reshape(n, c, h, w)


def paper_pixel_region(cam: torch.Tensor, features: torch.Tensor, g: torch.Tensor, f10: nn.Conv2d) -> torch.Tensor:
    """PRCM (eqs. 11-12): ``P_R = φ(Z) g(X)``, ``Y_prcm = Y ∘ SoftMax_classes(P_R)``."""
    n, c, h, w = cam.shape
    context = region_context(features, cam)  # N×C×C1
    phi = f10(context.transpose(1, 2).unsqueeze(3)).squeeze(3).transpose(1, 2)  # N×C×C2: φ per region
    relation = torch.bmm(phi, g.flatten(2)).reshape(n, c, h, w)
    return cam * F.softmax(relation, dim=1)
