"""The built-in demo and its synthetic parts task: the steps of ``cpn demo`` (:mod:`~cpn_dist.demo.run`,
:mod:`~cpn_dist.demo.steps`, :mod:`~cpn_dist.demo.settings`), part scores and CPN's premise on a parts
task (:mod:`~cpn_dist.demo.parts`), and pictures for people (:mod:`~cpn_dist.demo.show`)."""
