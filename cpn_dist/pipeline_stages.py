"""The steps of stages 2 and 3 of :class:`cpn_dist.pipeline.Pipeline` (a mixin, to keep each module
small): affinity labels, AffinityNet, random walk and its score; DeepLab, its inference with CRF and
its scores."""

from __future__ import annotations

from cpn_dist.errors import CpnError


class LaterSteps:
    """Stage 2 and 3 steps; the pipeline supplies ``cfg``, ``work``, ``voc``, ``dist``, ``overwrite``,
    ``run_config``, ``names``, ``weights``, ``segmentation_labels``, ``_slice``, ``_train`` and
    ``_score_labels``."""

    def step_affinity_labels(self):
        if not self.dist.main:
            return
        from cpn_dist.affinity.labels import AffinityLabelParams, write_affinity_labels
        from cpn_dist.data.inputs import VocSource

        cfg = self.run_config("affinity")
        names = self.names(self.cfg.splits.train)
        write_affinity_labels(VocSource(self.voc, names), self.work / "cams", self.work / "affinity_labels",
                              AffinityLabelParams.from_config(cfg.affinity), names, workers=self.cfg.workers,
                              overwrite=self.overwrite)  # fmt: skip

    def step_train_affinity(self):
        self._train("affinity")

    def step_rw(self):
        from cpn_dist.affinity.random_walk import WalkParams, load_affinity_model, walk_samples

        cfg = self.run_config("affinity")
        out = self.work / "rw"
        names = self.names(self.cfg.splits.train)
        source = self._slice(names, lambda n: (out / f"{n}.png").is_file())
        model, _ = load_affinity_model(self.weights("affinity"), cfg.model.backbone, self.dist.device)
        walk_samples(model, source.samples(self.dist.rank, self.dist.world, labels=False), self.work / "cams", out,
                     WalkParams.from_config(cfg.affinity), device=self.dist.device, mean=tuple(cfg.data.mean),
                     std=tuple(cfg.data.std))  # fmt: skip

    def step_eval_rw(self):
        if not self.dist.main:
            return []
        return [self._score_labels("RW", self.work / "rw", self.cfg.splits.eval)]

    def step_train_segmentation(self):
        labels = self.segmentation_labels()
        if not labels.is_dir():
            raise CpnError(f"{labels}: no pseudo labels to train the segmentation model on")
        self._train("segmentation")

    def segment_splits(self) -> list[tuple[str, bool]]:
        """(split, has ground truth) of the segment step: val, the evaluation split, and test."""
        splits = [(self.cfg.splits.val, True)]
        if self.cfg.splits.eval != self.cfg.splits.val:
            splits.append((self.cfg.splits.eval, True))
        if self.cfg.splits.test:
            splits.append((self.cfg.splits.test, False))
        return splits

    def step_segment(self):
        from cpn_dist.models import load_weights
        from cpn_dist.segmentation.infer import Outputs, segment_samples, segment_settings
        from cpn_dist.segmentation.model import model_from_config

        cfg = self.run_config("segmentation")
        settings = segment_settings(cfg)
        model = model_from_config(cfg, dropout=False)
        load_weights(model, self.weights("segmentation"))
        model.to(self.dist.device)
        crf = settings.crf is not None
        for split, scored in self.segment_splits():
            base = self.work / "segmentation_out"
            if scored:
                outputs = Outputs(base / split, base / f"{split}_crf" if crf else None)
            else:
                outputs = Outputs(None, None, self.work / "test_server")
            source = self._slice(self.names(split), outputs.done)
            segment_samples(model, source.samples(self.dist.rank, self.dist.world, labels=False), outputs, settings,
                            device=self.dist.device, crf_workers=self.cfg.workers if crf else 0)  # fmt: skip

    def step_eval_segmentation(self):
        if not self.dist.main:
            return []
        crf = self.run_config("segmentation").segmentation.crf.enabled
        base = self.work / "segmentation_out"
        scores = []
        for split, scored in self.segment_splits():
            if not scored:
                continue
            scores.append(self._score_labels("segmentation", base / split, split))
            if crf:
                scores.append(self._score_labels("segmentation + CRF", base / f"{split}_crf", split))
        return scores
