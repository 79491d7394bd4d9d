"""Training: the one loop of every stage (:mod:`~cpn_dist.training.engine`) and everything a run needs — the
Accelerator and the batch layout (:mod:`~cpn_dist.training.launch`), the stage → task table and ``train``
(:mod:`~cpn_dist.training.tasks`), how a run starts (:mod:`~cpn_dist.training.run_start`), checkpoints, the
run lock, signals, monitoring, the optimizer and TensorBoard. ``python -m cpn_dist.train`` is the entry point
(:mod:`cpn_dist.train`)."""
