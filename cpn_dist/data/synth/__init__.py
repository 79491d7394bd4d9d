"""Synthetic data in a real dataset's layout, for tests, the demo and quick runs: VOC 2012
(:mod:`~cpn_dist.data.synth.voc`, with the parts task of :mod:`~cpn_dist.data.synth.parts`) and COCO 2014
(:mod:`~cpn_dist.data.synth.coco`), drawn with :mod:`~cpn_dist.data.synth.draw`."""
