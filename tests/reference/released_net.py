"""A literal, functional re-statement of the released ResNet38d + CPN forward (network/resnet38d.py,
network/resnet38_CPN.py, network/da_atten.py), computed from a plain state dict, image by image with
plain matrix code. Written independently of cpn_dist.models to check it."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

# The released layer table: (name, kind, in, mid, out, stride, first_dilation, dilation)
BLOCKS = [
    ("b2", "res", 64, 128, 128, 2, 1, 1), ("b2_1", "res", 128, 128, 128, 1, 1, 1),
    ("b2_2", "res", 128, 128, 128, 1, 1, 1),
    ("b3", "res", 128, 256, 256, 2, 1, 1), ("b3_1", "res", 256, 256, 256, 1, 1, 1),
    ("b3_2", "res", 256, 256, 256, 1, 1, 1),
    ("b4", "res", 256, 512, 512, 2, 1, 1), ("b4_1", "res", 512, 512, 512, 1, 1, 1),
    ("b4_2", "res", 512, 512, 512, 1, 1, 1), ("b4_3", "res", 512, 512, 512, 1, 1, 1),
    ("b4_4", "res", 512, 512, 512, 1, 1, 1), ("b4_5", "res", 512, 512, 512, 1, 1, 1),
    ("b5", "res", 512, 512, 1024, 1, 1, 2), ("b5_1", "res", 1024, 512, 1024, 1, 2, 2),
    ("b5_2", "res", 1024, 512, 1024, 1, 2, 2),
    ("b6", "bot", 1024, None, 2048, 1, 4, 4), ("b7", "bot", 2048, None, 4096, 1, 4, 4),
]


def released_shapes() -> dict[str, tuple[int, ...]]:
    """Every parameter/buffer name of the released Net with its shape (BN buffers included)."""
    shapes: dict[str, tuple[int, ...]] = {"conv1a.weight": (64, 3, 3, 3)}

    def bn(prefix, c):
        for field in ("weight", "bias", "running_mean", "running_var"):
            shapes[f"{prefix}.{field}"] = (c,)

    for name, kind, cin, mid, cout, stride, _, _ in BLOCKS:
        if kind == "res":
            bn(f"{name}.bn_branch2a", cin)
            shapes[f"{name}.conv_branch2a.weight"] = (mid, cin, 3, 3)
            bn(f"{name}.bn_branch2b1", mid)
            shapes[f"{name}.conv_branch2b1.weight"] = (cout, mid, 3, 3)
            if cin != cout or stride != 1:
                shapes[f"{name}.conv_branch1.weight"] = (cout, cin, 1, 1)
        else:
            bn(f"{name}.bn_branch2a", cin)
            shapes[f"{name}.conv_branch2a.weight"] = (cout // 4, cin, 1, 1)
            bn(f"{name}.bn_branch2b1", cout // 4)
            shapes[f"{name}.conv_branch2b1.weight"] = (cout // 2, cout // 4, 3, 3)
            bn(f"{name}.bn_branch2b2", cout // 2)
            shapes[f"{name}.conv_branch2b2.weight"] = (cout, cout // 2, 1, 1)
            shapes[f"{name}.conv_branch1.weight"] = (cout, cin, 1, 1)
    bn("bn7", 4096)
    shapes["fc8.weight"] = (21, 4096, 1, 1)
    shapes["f8_3.weight"] = (64, 512, 1, 1)
    shapes["f8_4.weight"] = (128, 1024, 1, 1)
    shapes["f9.weight"] = (192, 195, 1, 1)
    shapes["f10.weight"] = (192, 195, 1, 1)
    return shapes


def random_state_dict(seed: int = 0) -> dict[str, torch.Tensor]:
    """Random weights (fan-in scaled) and perturbed BN statistics for the released structure."""
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for name, shape in released_shapes().items():
        if name.endswith("running_mean"):
            t = 0.1 * torch.randn(shape, generator=g)
        elif name.endswith("running_var"):
            t = 0.5 + torch.rand(shape, generator=g)
        elif len(shape) == 1 and name.endswith("weight"):
            t = 1 + 0.1 * torch.randn(shape, generator=g)
        elif name.endswith("bias"):
            t = 0.1 * torch.randn(shape, generator=g)
        else:
            fan_in = math.prod(shape[1:])
            t = torch.randn(shape, generator=g) / math.sqrt(fan_in)
        sd[name] = t
    return sd


def _bn(sd, prefix, x):
    return F.batch_norm(x, sd[prefix + ".running_mean"], sd[prefix + ".running_var"],
                        sd[prefix + ".weight"], sd[prefix + ".bias"], False, 0.0, 1e-5)


def _backbone(sd, x):
    x = F.conv2d(x, sd["conv1a.weight"], padding=1)
    taps = {}
    for name, kind, cin, _mid, cout, stride, first_dil, dil in BLOCKS:
        pre = F.relu(_bn(sd, f"{name}.bn_branch2a", x))
        taps[name] = pre
        if kind == "res":
            same = cin == cout and stride == 1
            short = x if same else F.conv2d(pre, sd[f"{name}.conv_branch1.weight"], stride=stride)
            b = F.conv2d(pre, sd[f"{name}.conv_branch2a.weight"], stride=stride, padding=first_dil, dilation=first_dil)
            b = F.relu(_bn(sd, f"{name}.bn_branch2b1", b))
            b = F.conv2d(b, sd[f"{name}.conv_branch2b1.weight"], padding=dil, dilation=dil)
        else:
            short = F.conv2d(pre, sd[f"{name}.conv_branch1.weight"])
            b = F.conv2d(pre, sd[f"{name}.conv_branch2a.weight"])
            b = F.relu(_bn(sd, f"{name}.bn_branch2b1", b))
            b = F.conv2d(b, sd[f"{name}.conv_branch2b1.weight"], padding=dil, dilation=dil)
            b = F.relu(_bn(sd, f"{name}.bn_branch2b2", b))
            b = F.conv2d(b, sd[f"{name}.conv_branch2b2.weight"])
        x = short + b
    conv6 = F.relu(_bn(sd, "bn7", x))
    return taps["b5"], taps["b6"], conv6


def _softmax_rows(m):
    e = torch.exp(m - m.max(dim=1, keepdim=True)[0])
    return e / e.sum(dim=1, keepdim=True)


def released_forward(sd: dict[str, torch.Tensor], x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(cam, cam_rv) of the released Net in eval mode, in float64, image by image."""
    sd = {k: v.double() for k, v in sd.items()}
    x = x.double()
    N, _, H, W = x.shape
    conv4, conv5, conv6 = _backbone(sd, x)
    cam = F.conv2d(conv6, sd["fc8.weight"])
    n, c, h, w = cam.shape
    hw = h * w
    cams_out, refined_out = [], []
    w83, w84 = sd["f8_3.weight"][:, :, 0, 0], sd["f8_4.weight"][:, :, 0, 0]
    w9, w10 = sd["f9.weight"][:, :, 0, 0], sd["f10.weight"][:, :, 0, 0]
    x_small = F.interpolate(x, (h, w), mode="bilinear", align_corners=True)
    for i in range(N):
        y = torch.relu(cam[i].reshape(c, hw))
        norm = torch.empty_like(y)
        for ch in range(c):
            norm[ch] = torch.relu(y[ch] - 1e-5) / (y[ch].max() + 1e-5)
        for p in range(hw):
            top = norm[1:, p].max()
            norm[0, p] = 1 - top
            for ch in range(1, c):
                if norm[ch, p] < top:
                    norm[ch, p] = 0.0
        f = torch.cat([x_small[i].reshape(3, hw), torch.relu(w83 @ conv4[i].reshape(-1, hw)),
                       torch.relu(w84 @ conv5[i].reshape(-1, hw))], dim=0)  # 195 × hw
        # PCM (the released code first resizes the CAM to the feature grid: same size here)
        norm_map = F.interpolate(norm.reshape(1, c, h, w), (h, w), mode="bilinear", align_corners=True)
        norm = norm_map.reshape(c, hw)
        g = w9 @ f
        g = g / (torch.sqrt((g * g).sum(dim=0, keepdim=True)) + 1e-5)
        aff = torch.relu(g.T @ g)
        aff = aff / (aff.sum(dim=0, keepdim=True) + 1e-5)
        pcm = norm @ aff
        # SpatialGather: probabilities over positions, context laid out (195, 21)
        probs = _softmax_rows(norm)
        context = (probs @ f.T).T  # 195 × 21
        key_conv = torch.relu(w10 @ context)  # 192 × 21, the (N,192,21,1) conv output of image i
        flat = [key_conv[p, q] for p in range(key_conv.shape[0]) for q in range(key_conv.shape[1])]
        key = torch.stack(flat).reshape(c, -1)  # the released .view(n, 21, -1)
        relation = (key @ torch.relu(w9 @ f)) * (21 ** -0.5)
        prcm = _softmax_rows(relation) * norm
        cams_out.append(cam[i])
        refined_out.append((pcm + prcm).reshape(c, h, w))
    cam_up = F.interpolate(torch.stack(cams_out), (H, W), mode="bilinear", align_corners=True)
    ref_up = F.interpolate(torch.stack(refined_out), (H, W), mode="bilinear", align_corners=True)
    return cam_up, ref_up
