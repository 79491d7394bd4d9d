"""Label tools every stage uses: CAM files (:mod:`~cpn_dist.labels.cams`), the dense CRF
(:mod:`~cpn_dist.labels.crf`, its settings a :class:`~cpn_dist.config.CrfConfig`), pseudo labels
(:mod:`~cpn_dist.labels.pseudo`) and their evaluation against ground truth
(:mod:`~cpn_dist.labels.evaluate`)."""
