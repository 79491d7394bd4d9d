"""`model.head: pcm`: the paper head without PRCM (Table 2's "+ PCM" rows)."""

import torch
import torch.nn.functional as F

from cpn_dist.config import load_config
from cpn_dist.cpn import head as cpn_head
from cpn_dist.cpn.model import build_model


def _pair():
    torch.manual_seed(3)
    paper = build_model("tiny", "paper", dropout=0.0).eval()
    torch.manual_seed(3)
    pcm = build_model("tiny", "pcm", dropout=0.0).eval()
    return paper, pcm


def test_pcm_is_the_paper_head_without_prcm():
    paper, pcm = _pair()
    assert not hasattr(pcm, "f10")
    sd_paper, sd_pcm = paper.state_dict(), pcm.state_dict()
    assert set(sd_paper) - set(sd_pcm) == {"f10.weight"}
    assert all(torch.equal(sd_pcm[k], sd_paper[k]) for k in sd_pcm)  # same seed: the same init of every shared layer

    x = torch.randn(2, 3, 48, 48)
    with torch.no_grad():
        cam, refined = pcm(x)
        cam_p, refined_p = paper(x)
        assert torch.equal(cam, cam_p)
        features = pcm.backbone(x)
        raw = pcm.fc8(features.conv6)
        y = cpn_head.paper_head_input(raw)
        image = F.interpolate(x, y.shape[-2:], mode="bilinear", align_corners=True)
        stack = torch.cat([image, F.relu(pcm.f8_3(features.conv4)), F.relu(pcm.f8_4(features.conv5))], dim=1)
        expected = cpn_head.pixel_correlation(y, pcm.f9(stack))
        expected = F.interpolate(expected, (48, 48), mode="bilinear", align_corners=True)
    assert torch.allclose(refined, expected, atol=1e-5)
    assert not torch.allclose(refined, refined_p, atol=1e-3)  # the paper head adds Y_prcm


def test_pcm_gradient_reaches_only_its_head_and_config_accepts_it():
    _, pcm = _pair()
    pcm.train()
    _, refined = pcm(torch.randn(2, 3, 32, 32))
    refined.sum().backward()
    trained = {n for n, p in pcm.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    assert trained and trained <= {"f8_3.weight", "f8_4.weight", "f9.weight"}
    assert load_config(None, ["model.head=pcm"]).model.head == "pcm"
    assert len(pcm.parameter_groups()[2]) == 4  # new weights: fc8, f8_3, f8_4, f9
