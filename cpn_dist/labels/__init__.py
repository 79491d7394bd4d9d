"""Label tools every stage uses: CAM files (:mod:`~cpn_dist.labels.cams`), the dense CRF
(:mod:`~cpn_dist.labels.crf`, its parameters :mod:`~cpn_dist.labels.crf_params`), pseudo labels
(:mod:`~cpn_dist.labels.pseudo`) and their evaluation against ground truth
(:mod:`~cpn_dist.labels.evaluate`)."""
