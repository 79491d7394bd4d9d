"""CPN training losses: classification, Triplet CP (TCP), CP Cross Regularisation (CPCR) with OHEM.

:func:`cpn_loss` takes the raw model outputs of the three branches b ∈ {o, h, hbar} — CAMs
``A_b`` and refined CAMs ``R_b``, N×C×H×W at the input size (C the dataset's classes with background:
21 for VOC) — with labels ``y`` (N×(C−1)) and λ (N;
λ̄ = 1 − λ), and returns ``{"total", "cls", "tcp", "cpcr"}``. Everything is computed in float32.
``y⁺ = [1, y]``; ``maxnorm(p)`` per (image, channel): ``q = relu(p)``,
``relu(q − min q − 1e-5) / (max q − min q + 1e-5)``.

``recipe="paper"`` — eqs. 13-17:

* L_cls (eq. 13) = mean over branches of MultiLabelSoftMargin(GAP(A_b)[:, 1:], y);
* Y_b = maxnorm(A_b)·y⁺ on the foreground channels, background ``(1 − max_c Y_b^c)^α`` (eq. 16);
  Ỹ_b likewise from R_b;
* L_tcp (eq. 14) = mean|λY_h + λ̄Y_hbar − Y_o| (Y_h, Y_hbar detached) + mean|λỸ_h + λ̄Ỹ_hbar − Ỹ_o|,
  means over all C channels (``tcp_background=False``: over the C−1 foreground channels, as the
  released code averages);
* L_cpcr (eq. 15): elements e1 = |(Y_o − λY_h) − λ̄Ỹ_hbar|, e2 = |(Y_o − λ̄Y_hbar) − λỸ_h|. By default
  (``cpcr_stop_gradient=True``) the raw-CAM side Y_o, Y_h, Y_hbar is detached, so L_cpcr trains only the
  refinement head: the paper stops the gradient of the CP pair's CAMs (Sec. 3.1, under eq. 6), builds
  CPCR "similarly with [35]" (SEAM, whose equivariant cross regularisation detaches the CAM side), and
  the released code detaches Â in its CPCR. ``cpcr_stop_gradient=False`` is eq. 15 read literally
  (nothing detached): two more λ-weighted pulls on Y_o, which OHEM then concentrates. OHEM keeps the
  top ``ohem_ratio`` of *each* term separately (k of e1 and k of e2, like the released
  ``ohem(e1) + ohem(e2)``) and L_cpcr = mean(top e1) + mean(top e2);
* L = w1·L_cls + w2·L_tcp + w3·L_cpcr (eq. 17).

``recipe="official"`` — the released ``train_cpn.py`` loss block:

* L_cls as above plus the "adaptive min-pooling" term: per branch, on (R_b·y⁺)[:, 1:], the per-pixel
  max over classes, the k = H·W//4 smallest per image, relu, sum / (k·N); the three branch terms are
  averaged and added to L_cls;
* Â_o = maxnorm(A_o)·y⁺, Â_h = λ·maxnorm(A_h)·y⁺, Â_hbar = λ̄·maxnorm(A_hbar)·y⁺ (all C channels
  scaled); R̂ likewise from R;
* L_tcp = mean over foreground channels of |(Â_hbar + Â_h).detach() − Â_o| + |R̂_o − R̂_h − R̂_hbar|;
* then channel 0 of each of the six maps := 1 − max over foreground channels (not scaled by λ);
* e1 = |onehotmax(Â_o − Â_h) − R̂_hbar|, e2 = |onehotmax(Â_o − Â_hbar) − R̂_h| over all C channels,
  the Â detached; onehotmax keeps the per-pixel channel maxima (ties kept, may be negative) and zeroes
  the rest; L_cpcr = ohem(e1) + ohem(e2).

``recipe="cam"`` — the baseline: L_cls of the original image only; ``cams`` may be the o-branch
tensor or a tuple whose first entry it is; ``refined`` is ignored; tcp and cpcr are 0.

With ``refined=None`` (``head: none``) every term that needs a refined CAM is absent: the second
TCP term, the min-pooling term, and L_cpcr (0).

OHEM scope: ``"image"`` keeps ``int(C·H·W·ratio)`` elements of each image (the released rule, C = 21) and
averages the N·k kept values; ``"batch"`` keeps ``int(ratio × elements of the batch)`` over the whole
batch. For the *global* batch across ranks and accumulation micro-steps, pass a selection from
:func:`global_ohem_selection` as ``ohem=``; the returned ``cpcr`` (and ``total``) is then this
micro-batch's chunk estimate — see :mod:`cpn_dist.cpn.ohem` for the exact normalisation. All selections
use the deterministic threshold rule of :mod:`cpn_dist.cpn.ohem` (its value equals ``topk``'s).

Every returned term is a mean over this micro-batch (or, with ``ohem=``, a chunk estimate), so for
equal-sized chunks the mean over chunks of each term is its full-batch value.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from cpn_dist.cpn.ohem import (
    OhemCandidates,
    OhemSelection,
    TermSelection,
    global_ohem_selection,
    ohem_candidates_from_elements,
    ohem_k,
    selection_weights,
    topk_sum_rows,
)

__all__ = [
    "RECIPES",
    "OhemCandidates",
    "OhemSelection",
    "TermSelection",
    "cpcr_elements",
    "cpcr_loss",
    "cpn_loss",
    "cpn_loss_from_config",
    "global_ohem_selection",
    "max_norm",
    "ohem_candidates",
    "ohem_k",
]

RECIPES = ("paper", "official", "cam")
SCOPES = ("batch", "image")
EPS = 1e-5

Triplet = Sequence[torch.Tensor]


def max_norm(p: torch.Tensor) -> torch.Tensor:
    """Per (image, channel): ``relu(q − min q − 1e-5) / (max q − min q + 1e-5)`` with ``q = relu(p)``."""
    q = F.relu(p)
    flat = q.flatten(2)
    hi = flat.max(dim=-1)[0][..., None, None]
    lo = flat.min(dim=-1)[0][..., None, None]
    return F.relu(q - lo - EPS) / (hi - lo + EPS)


def _fg_max(m: torch.Tensor) -> torch.Tensor:
    # torch.max (not amax) routes the gradient to one channel, as the released code does
    return m[:, 1:].max(dim=1, keepdim=True)[0]


def _with_background(m: torch.Tensor, bg_power: float = 1.0) -> torch.Tensor:
    """Channel 0 := (1 − max over foreground channels)^α (eq. 16)."""
    background = 1 - _fg_max(m)
    if bg_power != 1.0:
        background = background.clamp_min(0).pow(bg_power)
    return torch.cat([background, m[:, 1:]], dim=1)


def onehot_max(x: torch.Tensor) -> torch.Tensor:
    """Keep, per pixel, the value(s) equal to the maximum over channels; zero the others."""
    return torch.where(x == x.max(dim=1, keepdim=True)[0], x, torch.zeros_like(x))


def classification_loss(cam: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """MultiLabelSoftMargin of the GAP of the foreground CAM channels (one term of eq. 13)."""
    return F.multilabel_soft_margin_loss(cam[:, 1:].mean(dim=(2, 3)), labels)


def min_pooling_loss(refined: torch.Tensor, labels_bg: torch.Tensor) -> torch.Tensor:
    """The released "adaptive min-pooling" term: k = H·W//4 smallest per-pixel class maxima, relu, sum/(k·N)."""
    x = (refined * labels_bg)[:, 1:].max(dim=1)[0].flatten(1)
    k = x.shape[1] // 4
    smallest = torch.topk(x, k=k, dim=1, largest=False)[0]
    return F.relu(smallest).sum() / (k * x.shape[0])


# ------------------------------------------------------------------------------------------------
def _prepare(cams, refined, labels, lam):
    cams = tuple(c.float() for c in cams)
    refined = None if refined is None else tuple(r.float() for r in refined)
    labels = labels.float()
    labels_bg = torch.cat([torch.ones_like(labels[:, :1]), labels], dim=1)[..., None, None]
    lam = lam.float().reshape(-1, 1, 1, 1)
    return cams, refined, labels, labels_bg, lam


def _paper_maps(cams, refined, labels_bg, bg_power):
    ys = tuple(_with_background(max_norm(a) * labels_bg, bg_power) for a in cams)
    rs = None if refined is None else tuple(_with_background(max_norm(r) * labels_bg, bg_power) for r in refined)
    return ys, rs


def _official_maps(cams, refined, labels_bg, lam):
    scale = (1.0, lam, 1 - lam)
    a_hat = tuple(s * max_norm(a) * labels_bg for s, a in zip(scale, cams))
    r_hat = None if refined is None else tuple(s * max_norm(r) * labels_bg for s, r in zip(scale, refined))
    return a_hat, r_hat


def _paper_cpcr(ys, rs, lam, stop_gradient: bool = True):
    (_, r_h, r_hb) = rs
    y_o, y_h, y_hb = (y.detach() for y in ys) if stop_gradient else ys
    return (torch.abs((y_o - lam * y_h) - (1 - lam) * r_hb),
            torch.abs((y_o - (1 - lam) * y_hb) - lam * r_h))  # fmt: skip


def _official_cpcr(a_hat, r_hat):
    a_o, a_h, a_hb = (_with_background(a).detach() for a in a_hat)
    _, r_h, r_hb = (_with_background(r) for r in r_hat)
    return torch.abs(onehot_max(a_o - a_h) - r_hb), torch.abs(onehot_max(a_o - a_hb) - r_h)


def cpcr_elements(cams: Triplet, refined: Triplet, labels: torch.Tensor, lam: torch.Tensor,
                  recipe: str = "paper", bg_power: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """The two CPCR element tensors (e1, e2), each N×C×H×W, of ``recipe`` (paper eq. 15 or released),
    with the paper recipe's default stop-gradient (the values do not depend on it)."""
    cams, refined, _, labels_bg, lam = _prepare(cams, refined, labels, lam)
    if recipe == "paper":
        return _paper_cpcr(*_paper_maps(cams, refined, labels_bg, bg_power), lam)
    if recipe == "official":
        return _official_cpcr(*_official_maps(cams, refined, labels_bg, lam))
    raise ValueError(f"recipe {recipe!r} has no CPCR term")


def ohem_candidates(cams: Triplet, refined: Triplet | None, labels: torch.Tensor, lam: torch.Tensor,
                    recipe: str = "paper", bg_power: float = 1.0) -> OhemCandidates:  # fmt: skip
    """One micro-step's CPCR elements as candidates for :func:`global_ohem_selection` (computed without
    grad; call it on the no-grad pass, or on the grad pass's outputs)."""
    with torch.no_grad():
        return ohem_candidates_from_elements(cpcr_elements(cams, refined, labels, lam, recipe, bg_power))


def _ohem_mean(elements: torch.Tensor, ratio: float, scope: str, selection: TermSelection | None,
               chunks: int) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """OHEM's mean of one CPCR term, and whether the selection leaves out a non-zero element (0-d float,
    1 or 0; no host sync): with few labels most elements are exactly 0, and then the top 20 % keeps every
    non-zero element and OHEM only rescales the term."""
    n = elements.shape[0]
    if selection is not None:
        weights = selection_weights(elements, selection.threshold, selection.tie_weight)
        discards = elements.new_tensor(float(selection.nonzero > selection.k))
        return chunks * (elements * weights).sum() / selection.k, discards
    if scope == "image":
        rows = elements.reshape(n, -1)
        k = ohem_k(ratio, rows.shape[1])
        discards = ((rows != 0).sum(dim=1) > k).any().float()
        return topk_sum_rows(rows, k).sum() / (n * k), discards
    flat = elements.reshape(1, -1)
    k = ohem_k(ratio, flat.shape[1])
    return topk_sum_rows(flat, k).sum() / k, ((flat != 0).sum() > k).float()


def cpn_loss(cams: Triplet | torch.Tensor, refined: Triplet | None, labels: torch.Tensor, lam: torch.Tensor | None,
             recipe: str = "paper", ohem_ratio: float = 0.2, ohem_scope: str = "batch",
             weights: Sequence[float] = (1.0, 1.0, 1.0), bg_power: float = 1.0,
             ohem: OhemSelection | None = None, cpcr_stop_gradient: bool = True,
             tcp_background: bool = True, with_cpcr: bool = True) -> dict[str, torch.Tensor]:  # fmt: skip
    """The CPN loss of one (micro-)batch: ``{"total", "cls", "tcp", "cpcr"}`` scalar float32 tensors, and
    with a CPCR term ``"ohem/discards_nonzero"`` (1 when OHEM leaves out a non-zero CPCR element, else 0;
    a diagnostic, not part of the total).

    ``cams``/``refined``: (o, h, hbar) tuples of N×C×H×W raw model outputs at the input size
    (``refined`` None for ``head: none``); ``labels`` N×(C−1) in {0, 1}; ``lam`` N (λ of I_h).
    ``ohem``: a global selection from :func:`global_ohem_selection` (``ohem_scope="batch"`` only); the
    returned ``cpcr`` is then ``selection.chunks × (sum of this micro-batch's selected elements) / k``.
    ``cpcr_stop_gradient`` and ``tcp_background`` apply to the paper recipe (see the module docstring
    for each recipe's terms). ``with_cpcr=False`` leaves L_cpcr out (returned as 0): the trainer adds it
    later with :func:`cpcr_loss` once the global OHEM selection is known.
    """
    if recipe not in RECIPES:
        raise ValueError(f"recipe must be one of {RECIPES}, got {recipe!r}")
    if ohem_scope not in SCOPES:
        raise ValueError(f"ohem_scope must be one of {SCOPES}, got {ohem_scope!r}")
    if ohem is not None and ohem_scope != "batch":
        raise ValueError("a global OHEM selection applies to ohem_scope='batch' only")
    w_cls, w_tcp, w_cpcr = weights
    if recipe == "cam":
        cam = cams if isinstance(cams, torch.Tensor) else cams[0]
        cls = classification_loss(cam.float(), labels.float())
        zero = cls.new_zeros(())
        return {"total": w_cls * cls, "cls": cls, "tcp": zero, "cpcr": zero}

    if len(cams) != 3 or (refined is not None and len(refined) != 3):
        raise ValueError("cams and refined must be (o, h, hbar) triplets")
    cams, refined, labels, labels_bg, lam = _prepare(cams, refined, labels, lam)
    cls = sum(classification_loss(a, labels) for a in cams) / 3
    if recipe == "paper":
        ys, rs = _paper_maps(cams, refined, labels_bg, bg_power)
        first = 0 if tcp_background else 1  # eq. 16's background channel, or the foreground only
        y_o, y_h, y_hb = (y[:, first:] for y in ys)
        tcp = torch.abs(lam * y_h.detach() + (1 - lam) * y_hb.detach() - y_o).mean()
        if rs is not None:
            r_o, r_h, r_hb = (r[:, first:] for r in rs)
            tcp = tcp + torch.abs(lam * r_h + (1 - lam) * r_hb - r_o).mean()
            elements = _paper_cpcr(ys, rs, lam, cpcr_stop_gradient) if with_cpcr else None
    else:
        if refined is not None:
            cls = cls + sum(min_pooling_loss(r, labels_bg) for r in refined) / 3
        a_hat, r_hat = _official_maps(cams, refined, labels_bg, lam)
        a_o, a_h, a_hb = (a[:, 1:] for a in a_hat)
        tcp = torch.abs((a_hb.detach() + a_h.detach()) - a_o).mean()
        if r_hat is not None:
            r_o, r_h, r_hb = (r[:, 1:] for r in r_hat)
            tcp = tcp + torch.abs(r_o - r_h - r_hb).mean()
            elements = _official_cpcr(a_hat, r_hat) if with_cpcr else None

    zero = cls.new_zeros(())
    if refined is None:
        return {"total": w_cls * cls + w_tcp * tcp, "cls": cls, "tcp": tcp, "cpcr": zero}
    cpcr, discards = (zero, zero) if elements is None else _cpcr_ohem(elements, ohem_ratio, ohem_scope, ohem)
    total = w_cls * cls + w_tcp * tcp + w_cpcr * cpcr
    return {"total": total, "cls": cls, "tcp": tcp, "cpcr": cpcr, "ohem/discards_nonzero": discards}


def _cpcr_ohem(elements, ohem_ratio: float, ohem_scope: str, ohem: OhemSelection | None):
    """L_cpcr = the sum of OHEM's means of the CPCR terms, and the discard diagnostic (max over terms)."""
    picks = ohem.terms if ohem is not None else (None,) * len(elements)
    chunks = ohem.chunks if ohem is not None else 1
    means, discards = zip(*(_ohem_mean(e, ohem_ratio, ohem_scope, s, chunks) for e, s in zip(elements, picks)))
    return sum(means), torch.stack(discards).max()


def cpcr_loss(cams: Triplet, refined: Triplet, labels: torch.Tensor, lam: torch.Tensor, cfg,
              ohem: OhemSelection | None = None) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """L_cpcr alone (eq. 15 with OHEM, or the released CPCR), unweighted, with a
    :class:`~cpn_dist.config.LossConfig`'s settings: ``(cpcr, discards)`` as :func:`cpn_loss` computes them."""
    cams, refined, _, labels_bg, lam = _prepare(cams, refined, labels, lam)
    if cfg.recipe == "paper":
        elements = _paper_cpcr(*_paper_maps(cams, refined, labels_bg, cfg.bg_power), lam, cfg.cpcr_stop_gradient)
    else:
        elements = _official_cpcr(*_official_maps(cams, refined, labels_bg, lam))
    return _cpcr_ohem(elements, cfg.ohem_ratio, cfg.ohem_scope, ohem)


def cpn_loss_from_config(cams, refined, labels, lam, cfg, ohem: OhemSelection | None = None,
                         with_cpcr: bool = True) -> dict[str, torch.Tensor]:  # fmt: skip
    """:func:`cpn_loss` with the recipe, OHEM and weights of a :class:`~cpn_dist.config.LossConfig`."""
    return cpn_loss(cams, refined, labels, lam, recipe=cfg.recipe, ohem_ratio=cfg.ohem_ratio,
                    ohem_scope=cfg.ohem_scope, weights=tuple(cfg.weights), bg_power=cfg.bg_power, ohem=ohem,
                    cpcr_stop_gradient=cfg.cpcr_stop_gradient, tcp_background=cfg.tcp_background,
                    with_cpcr=with_cpcr)  # fmt: skip
