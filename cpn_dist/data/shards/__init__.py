"""Shards: ``cpn pack`` (:mod:`~cpn_dist.data.shards.pack`, its sources, samples, parts and checks), the one
raw-sample decoder (:mod:`~cpn_dist.data.shards.members`), reading packed shards and their ``meta.json``
(:mod:`~cpn_dist.data.shards.reader`, :mod:`~cpn_dist.data.shards.tar_index`) and ``cpn shards verify``
(:mod:`~cpn_dist.data.shards.verify`)."""
