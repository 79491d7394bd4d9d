"""Loading: the training loaders of every stage over packed shards (:mod:`~cpn_dist.data.loading.loader`,
the labelled loader of stages 2 and 3 :mod:`~cpn_dist.data.loading.labelled`), one training sample
(:mod:`~cpn_dist.data.loading.train_sample`), augmentation, the CP pair and seeding. Nothing here reads a
dataset's own folder: only shards (and, for stages 2 and 3, a folder of label PNGs)."""
