"""Dense CRF refinement (Krähenbühl & Koltun's fully connected CRF, through pydensecrf) of
CAM-derived class probabilities.

The probabilities of an image come from its CAM dict and a background score: the scores
``[bg, CAM_c for each labelled class c]`` (floored at a small positive value, since released CAMs
reach −0.5) divided by their per-pixel sum, where bg is a constant β or AffinityNet's
``(1 − max_c CAM_c)^α`` (see :func:`cpn_dist.labels.cams.background_score`). PSA hands the unnormalised
scores to the CRF; dividing by the per-pixel sum adds the same constant to every label's unary at a
pixel, which leaves the CRF's posterior unchanged. Only the image's labelled classes and the background
take part, as in AffinityNet/PSA. The default pairwise terms are the ones AffinityNet (PSA) uses for
its CRF labels: 10 mean-field iterations, a Gaussian kernel (sxy 3, compat 3) and a bilateral kernel
(sxy 80, srgb 13, compat 10).
"""

from __future__ import annotations

import numpy as np

from cpn_dist.config.run import CrfConfig
from cpn_dist.errors import CpnError
from cpn_dist.labels.cams import background_score

__all__ = ["cam_probabilities", "crf_dict", "crf_probabilities", "dense_crf", "to_label_map"]

SCORE_FLOOR = 1e-5


def cam_probabilities(cams: dict[int, np.ndarray], beta: float | None = None,
                      bg_power: float | None = None) -> tuple[np.ndarray, list[int]]:  # fmt: skip
    """Class probabilities (K+1)×H×W float32 from a CAM dict at background score ``beta`` — or, with the
    background power α = ``bg_power``, AffinityNet's ``(1 − max_c CAM_c)^α`` — and the VOC class index
    (0 = background, c + 1 for CAM key c) of each channel."""
    if not cams:
        raise CpnError("a CAM dict with no classes has no foreground to refine")
    keys = sorted(cams)
    fg = np.stack([np.asarray(cams[k], dtype=np.float32) for k in keys])
    background = background_score(cams, fg.shape[1:], beta, bg_power)
    scores = np.concatenate([background[None], fg])
    scores = np.maximum(scores, np.float32(SCORE_FLOOR))
    return scores / scores.sum(axis=0, keepdims=True), [0] + [k + 1 for k in keys]


def dense_crf(image: np.ndarray, probs: np.ndarray, params: CrfConfig | None = None) -> np.ndarray:
    """Mean-field inference of the dense CRF with unary −log(probs) on the RGB ``image`` (H×W×3
    uint8); returns the posterior marginals, C×H×W float32 (each pixel a distribution). ``params``: a
    run config's CRF section (``affinity.crf``, ``segmentation.crf``); None: PSA's, ``CrfConfig()``."""
    params = CrfConfig() if params is None else params
    import pydensecrf.densecrf as dcrf
    from pydensecrf.utils import unary_from_softmax

    image = np.array(image, dtype=np.uint8, order="C")  # pydensecrf needs a writable buffer
    n, h, w = probs.shape
    if image.shape != (h, w, 3):
        raise CpnError(f"image is {image.shape[1]}×{image.shape[0]}, the CAMs are {w}×{h}")
    crf = dcrf.DenseCRF2D(w, h, n)
    unary = unary_from_softmax(np.asarray(probs, dtype=np.float32), clip=SCORE_FLOOR)
    crf.setUnaryEnergy(np.ascontiguousarray(unary))
    crf.addPairwiseGaussian(sxy=params.gaussian_sxy, compat=params.gaussian_compat)
    crf.addPairwiseBilateral(
        sxy=params.bilateral_sxy, srgb=params.bilateral_srgb, rgbim=image, compat=params.bilateral_compat
    )  # fmt: skip
    q = crf.inference(params.iterations)
    return np.asarray(q, dtype=np.float32).reshape(n, h, w)


def crf_probabilities(image: np.ndarray, cams: dict[int, np.ndarray], beta: float | None,
                      params: CrfConfig | None = None, bg_power: float | None = None) -> tuple[np.ndarray, list[int]]:
    """CRF-refined class probabilities of a CAM dict at ``beta`` or ``bg_power`` (see :func:`cam_probabilities`)."""
    probs, classes = cam_probabilities(cams, beta, bg_power)
    return dense_crf(image, probs, params), classes


def to_label_map(probs: np.ndarray, classes: list[int]) -> np.ndarray:
    """H×W uint8 VOC class indices of the most probable channel."""
    return np.asarray(classes, dtype=np.uint8)[np.argmax(probs, axis=0)]


def crf_dict(probs: np.ndarray, classes: list[int]) -> dict[int, np.ndarray]:
    """The AffinityNet (PSA) file layout of CRF output: {0: background, c + 1: class c} float32 maps."""
    return {cls: probs[i].astype(np.float32) for i, cls in enumerate(classes)}
