"""A literal, step-by-step re-statement of the released train_cpn.py loss block (in-place channel
overwrites, in-place one-hot max, per-image topk OHEM), for checking cpn_dist.cpn.loss."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _max_norm(p, e=1e-5):
    N, C, H, W = p.size()
    p = F.relu(p)
    max_v = torch.max(p.view(N, C, -1), dim=-1)[0].view(N, C, 1, 1)
    min_v = torch.min(p.view(N, C, -1), dim=-1)[0].view(N, C, 1, 1)
    return F.relu(p - min_v - e) / (max_v - min_v + e)


def _max_onehot(x):
    x_max = torch.max(x, dim=1, keepdim=True)[0]
    x[x != x_max] = 0
    return x


def _min_pool(x):
    n, c, h, w = x.size()
    k = h * w // 4
    x = torch.max(x, dim=1)[0]
    y = torch.topk(x.view(n, -1), k=k, dim=-1, largest=False)[0]
    return torch.sum(F.relu(y)) / (k * n)


def released_loss(cam, cam_improved, cam1, cam_improved1, cam2, cam_improved2, labels20, lam):
    """(loss, loss_cls, loss_tcp, loss_cpcr) as the released training step computes them.
    cam/cam_improved: branch o; cam1/cam_improved1: branch h (weight λ); cam2/…2: branch hbar (1 − λ)."""
    N = labels20.shape[0]
    label = torch.cat((torch.ones((N, 1)), labels20), dim=1).unsqueeze(2).unsqueeze(3)
    ctri = lam.view(N, 1, 1, 1).repeat(1, 21, 1, 1)
    uctri = (1 - lam).view(N, 1, 1, 1).repeat(1, 21, 1, 1)

    l = F.adaptive_avg_pool2d(cam, (1, 1))  # noqa: E741
    loss_rvmin = _min_pool((cam_improved * label)[:, 1:, :, :])
    cam = _max_norm(cam) * label
    cam_improved = _max_norm(cam_improved) * label

    l1 = F.adaptive_avg_pool2d(cam1, (1, 1))
    loss_rvmin1 = _min_pool((cam_improved1 * label)[:, 1:, :, :])
    cam1 = ctri * _max_norm(cam1) * label
    cam_improved1 = ctri * _max_norm(cam_improved1) * label

    l2 = F.adaptive_avg_pool2d(cam2, (1, 1))
    loss_rvmin2 = _min_pool((cam_improved2 * label)[:, 1:, :, :])
    cam2 = uctri * _max_norm(cam2) * label
    cam_improved2 = uctri * _max_norm(cam_improved2) * label

    loss_cls = F.multilabel_soft_margin_loss(l[:, 1:, :, :], label[:, 1:, :, :])
    loss_cls1 = F.multilabel_soft_margin_loss(l1[:, 1:, :, :], label[:, 1:, :, :])
    loss_cls2 = F.multilabel_soft_margin_loss(l2[:, 1:, :, :], label[:, 1:, :, :])
    loss_cls = (loss_cls + loss_cls1 + loss_cls2) / 3 + (loss_rvmin + loss_rvmin1 + loss_rvmin2) / 3

    loss_tcp = torch.mean(torch.abs((cam2[:, 1:, :, :].detach() + cam1[:, 1:, :, :].detach()) - cam[:, 1:, :, :]))
    loss_tcp_improved = torch.mean(torch.abs(cam_improved[:, 1:, :, :] - cam_improved1[:, 1:, :, :]
                                             - cam_improved2[:, 1:, :, :]))
    loss_tcp_all = loss_tcp + loss_tcp_improved

    ns, cs, hs, ws = cam.size()
    cam[:, 0, :, :] = 1 - torch.max(cam[:, 1:, :, :], dim=1)[0]
    cam1[:, 0, :, :] = 1 - torch.max(cam1[:, 1:, :, :], dim=1)[0]
    cam2[:, 0, :, :] = 1 - torch.max(cam2[:, 1:, :, :], dim=1)[0]
    cam_improved[:, 0, :, :] = 1 - torch.max(cam_improved[:, 1:, :, :], dim=1)[0]
    cam_improved1[:, 0, :, :] = 1 - torch.max(cam_improved1[:, 1:, :, :], dim=1)[0]
    cam_improved2[:, 0, :, :] = 1 - torch.max(cam_improved2[:, 1:, :, :], dim=1)[0]
    loss_cpcr1 = torch.abs(_max_onehot(cam.detach() - cam1.detach()) - cam_improved2)
    loss_cpcr2 = torch.abs(_max_onehot(cam.detach() - cam2.detach()) - cam_improved1)
    k = int(21 * hs * ws * 0.2)
    loss_cpcr1_ohem = torch.mean(torch.topk(loss_cpcr1.view(ns, -1), k=k, dim=-1)[0])
    loss_cpcr2_ohem = torch.mean(torch.topk(loss_cpcr2.view(ns, -1), k=k, dim=-1)[0])
    loss_cpcr = loss_cpcr1_ohem + loss_cpcr2_ohem

    loss = loss_cls + loss_tcp_all + loss_cpcr
    return loss, loss_cls, loss_tcp_all, loss_cpcr
