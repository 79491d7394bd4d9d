"""Stage 2: AffinityNet and the random walk (Ahn & Kwak, CVPR 2018), on CPN's CAMs.

- :mod:`~cpn_dist.affinity.labels`: affinity labels from CAMs (``cpn affinity-labels``);
- :mod:`~cpn_dist.affinity.pairs`: pairs within a radius, their affinities and labels;
- :mod:`~cpn_dist.affinity.model`: AffinityNet on the ResNet38d (or tiny) backbone;
- :mod:`~cpn_dist.affinity.loss`: the three-part affinity loss, split-invariant;
- :mod:`~cpn_dist.affinity.task`: the ``stage: affinity`` task of the shared trainer (``cpn train``);
- :mod:`~cpn_dist.affinity.random_walk`: the random walk into pseudo labels (``cpn rw``).
"""

# The random walk's ways of computing T^(2^logt) (here, not in random_walk.py, so that `cpn rw --help`
# can list them without importing torch).
METHODS = ("auto", "dense", "sparse")
