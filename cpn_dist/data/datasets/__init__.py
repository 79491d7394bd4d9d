"""Datasets: what a dataset is to every stage (:mod:`~cpn_dist.data.datasets.info`: its name and classes), the
readers of each dataset's files — PASCAL VOC (:mod:`~cpn_dist.data.datasets.voc`) and COCO 2014
(:mod:`~cpn_dist.data.datasets.coco`, its label protocols, folder check and ground-truth masks) — and which
dataset a run, weights or folder is of (:mod:`~cpn_dist.data.datasets.recorded`). A new dataset's reader goes
here, beside VOC's."""
