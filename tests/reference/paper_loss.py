"""A literal, step-by-step statement of the paper's eqs. 13-17 (with the normalisation of the paper
recipe, as the module docstring of cpn_dist.cpn.loss states it; docs/design.md, "Two recipes") and
mini-batch OHEM by sorting, for checking cpn_dist.cpn.loss."""

from __future__ import annotations

import torch


def _soft_margin(scores, y):
    """Multi-label soft margin: mean over images and classes of -[y log σ(s) + (1-y) log(1-σ(s))]."""
    p = torch.sigmoid(scores)
    return -(y * torch.log(p) + (1 - y) * torch.log(1 - p)).mean()


def normalise(a, labels20, bg_power):
    """Y: per image and channel relu, minus min, over range (eps 1e-5); × y⁺; background (1 - max fg)^α."""
    N, C, H, W = a.shape
    out = []
    for i in range(N):
        chans = []
        for c in range(C):
            q = torch.relu(a[i, c])
            v = torch.relu(q - q.min() - 1e-5) / (q.max() - q.min() + 1e-5)
            keep = 1.0 if c == 0 else labels20[i, c - 1]
            chans.append(v * keep)
        fg = torch.stack(chans[1:])
        background = (1 - fg.max(dim=0)[0]) ** bg_power
        out.append(torch.cat([background[None], fg]))
    return torch.stack(out)


def _ohem_mean(e, ratio):
    flat = e.reshape(-1)
    k = int(flat.numel() * ratio)
    return torch.sort(flat, descending=True)[0][:k].mean()


def paper_loss(cams, refined, labels20, lam, ratio=0.2, bg_power=1.0, stop_gradient=True, tcp_background=True):
    """(L_all, L_cls, L_tcp, L_cpcr) of eqs. 13-17 with OHEM over the mini-batch, w1 = w2 = w3 = 1.
    ``stop_gradient``: the raw CAMs enter eq. 15 detached; ``tcp_background``: eq. 14 over all 21 channels
    (else the 20 foreground channels)."""
    a_o, a_h, a_hb = cams
    r_o, r_h, r_hb = refined
    lam = lam.view(-1, 1, 1, 1)
    lbar = 1 - lam
    # eq. 13: GAP scores of the foreground channels
    l_cls = sum(_soft_margin(a[:, 1:].mean(dim=(2, 3)), labels20) for a in cams) / 3
    # eq. 16: normalised maps with background
    y_o, y_h, y_hb = (normalise(a, labels20, bg_power) for a in cams)
    t_o, t_h, t_hb = (normalise(r, labels20, bg_power) for r in refined)
    # eq. 14 (the CP pair's raw CAMs are targets: detached)
    c = 0 if tcp_background else 1
    l_tcp = torch.abs(lam * y_h[:, c:].detach() + lbar * y_hb[:, c:].detach() - y_o[:, c:]).mean() \
        + torch.abs(lam * t_h[:, c:] + lbar * t_hb[:, c:] - t_o[:, c:]).mean()
    # eq. 15 with OHEM on each term
    if stop_gradient:
        y_o, y_h, y_hb = y_o.detach(), y_h.detach(), y_hb.detach()
    e1 = torch.abs((y_o - lam * y_h) - lbar * t_hb)
    e2 = torch.abs((y_o - lbar * y_hb) - lam * t_h)
    l_cpcr = _ohem_mean(e1, ratio) + _ohem_mean(e2, ratio)
    # eq. 17
    return l_cls + l_tcp + l_cpcr, l_cls, l_tcp, l_cpcr
