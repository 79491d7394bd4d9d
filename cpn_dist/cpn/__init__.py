"""Stage 1: the Complementary Patch Network (Zhang et al., ICCV 2021), CAMs from image-level labels.

- :mod:`~cpn_dist.cpn.model`: the CPN model (backbone → fc8 CAM → refinement head) and ``build_model``;
- :mod:`~cpn_dist.cpn.head`: the refinement heads (released PCM + PRCM, the paper's eqs. 7-12, PCM);
- :mod:`~cpn_dist.cpn.loss`: L_cls, L_tcp and L_cpcr (eqs. 13-17);
- :mod:`~cpn_dist.cpn.ohem`: exact OHEM of the CPCR elements, per image or over the global batch;
- :mod:`~cpn_dist.cpn.task`: the ``stage: cpn`` task of the shared trainer (``cpn train``);
- :mod:`~cpn_dist.cpn.infer`: multi-scale, flipped CAM inference (``cpn infer``).
"""
