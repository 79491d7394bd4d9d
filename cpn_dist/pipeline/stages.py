"""The steps of ``cpn pipeline`` as a table (:data:`TABLE`: name, function, stage, main process only), run
by :class:`cpn_dist.pipeline.runner.StepRunner`. Each step is a function of the :class:`cpn_dist.pipeline.Pipeline`
(its config, paths, processes, and ``overwrite``, set by the runner before each step) returning its
scores. Nothing here imports torch or pydantic at module level: ``cpn --help`` lists :data:`STEPS`."""

from __future__ import annotations

import logging

from cpn_dist.atomic import write_json
from cpn_dist.errors import CpnError
from cpn_dist.pipeline.runner import Step
from cpn_dist.pipeline.steps import stage_score

log = logging.getLogger(__name__)


# ---- data and stage 1 ------------------------------------------------------------------------
def coco_view(p):
    """With ``coco_root``: the VOC-layout view of the COCO splits the run reads
    (:mod:`cpn_dist.data.datasets.coco_view`) in ``work_dir/coco_view``, on which every later step runs as on a
    VOC folder."""
    from cpn_dist.data.datasets.coco_view import plan_view, write_view

    plan = plan_view(p.cfg.coco_root, p.split_names(), p.voc, p.protocol, p.overwrite)
    with p.progress("coco_view masks", plan.todo) as bar:
        listed = write_view(plan, p.cfg.coco_root, workers=p.cfg.workers, progress=bar.advance)
    log.info("coco_view: %s (%s)", p.voc, ", ".join(f"{split}: {n} images" for split, n in listed.items()))


def pack(p):
    """``cpn pack`` of the training split into shards: of the VOC folder, or of the COCO folder by
    ``coco_protocol`` (:func:`~cpn_dist.data.shards.pack.pack_source`)."""
    from cpn_dist.data.datasets.voc import voc_folder
    from cpn_dist.data.shards.pack import pack_source
    from cpn_dist.data.shards.pack_source import find_coco_source, find_source

    if p.cfg.coco_root is not None:
        source = find_coco_source(p.cfg.coco_root, p.cfg.splits.train, p.protocol)
    else:
        voc_folder(p.voc)  # every part the later steps read, before anything is packed
        source = find_source(p.voc, p.cfg.splits.train)
    patch = p.run_config("cpn").data.patch  # CPN's superpixels must be among those packed
    segments = set(p.cfg.pack.segments) | ({patch.segments} if patch.kind == "superpixel" else set())
    with p.progress("pack", len(source.ids)) as bar:
        pack_source(source, p.shards, segments=tuple(sorted(segments)), shard_size=p.cfg.pack.shard_size,
                    workers=p.cfg.workers, overwrite=p.overwrite, resume=not p.overwrite,
                    progress=bar.advance)  # fmt: skip


def train_cpn(p):
    """Stage 1: :func:`cpn_dist.train.train` of the CPN run config."""
    p.train_stage("cpn")


def cams(p):
    """Multi-scale + flip CAMs (:func:`cpn_dist.cpn.infer.infer_samples`) of the training and evaluation images,
    in the released format or the compact store (``cams.format``), over the classes the weights score."""
    import torch

    from cpn_dist.cpn.infer import InferSettings, infer_samples
    from cpn_dist.cpn.model import model_for_weights
    from cpn_dist.data.datasets.recorded import record_dataset
    from cpn_dist.labels.cams import cam_file

    cfg = p.run_config("cpn")
    names = list(dict.fromkeys(p.names(p.cfg.splits.train) + p.names(p.cfg.splits.eval)))
    out = p.work / "cams"
    source = p.todo(names, lambda n: cam_file(out, n).is_file())
    model, _, dataset = model_for_weights(p.weights("cpn"), cfg.model.backbone, cfg.model.head,
                                          allow_pickle=cfg.model.allow_pickle)  # fmt: skip
    c = p.cfg.cams
    settings = InferSettings(scales=tuple(c.scales), mean=tuple(cfg.data.mean), std=tuple(cfg.data.std),
                             use="cam" if cfg.model.head == "none" else "refined", fmt=c.format,
                             compact_stride=c.compact_stride, compact_dtype=c.compact_dtype)  # fmt: skip
    out.mkdir(parents=True, exist_ok=True)
    record_dataset(out, dataset)
    with torch.inference_mode(), p.progress("cams", p.share(source)) as bar:
        infer_samples(model.to(p.dist.device), source.samples(p.dist.rank, p.dist.world), out, settings,
                      device=p.dist.device, on_image=bar.on_item)  # fmt: skip


def eval_cams(p):
    """The β sweep (:func:`cpn_dist.labels.evaluate.sweep`) on the evaluation split → the best β."""
    from cpn_dist.labels.betas import parse_betas
    from cpn_dist.labels.evaluate import sweep

    names = p.names(p.cfg.splits.eval)
    with p.progress("eval_cams", len(names)) as bar:
        result = sweep(p.work / "cams", p.gt, names, parse_betas(p.cfg.cams.betas), workers=p.cfg.workers,
                       on_images=bar.advance, dataset=p.dataset(), mean=p.cfg.mean_iou)  # fmt: skip
    write_json(p.work / "scores" / "cams.json", result.to_json())
    best = result.summary()
    edge = ""
    if len(result.betas) > 1 and best["beta"] in (min(result.betas), max(result.betas)):
        edge = " (on the edge of the sweep)"
        log.warning("eval_cams: the best β %g lies on the edge of the sweep (cams.betas %s): a better one may lie "
                    "outside; widen cams.betas", best["beta"], p.cfg.cams.betas)  # fmt: skip
    return [stage_score("CAM", p.cfg.splits.eval, len(names), best, f"best β {best['beta']:.2f}{edge}")]


def pseudo(p):
    """CAM pseudo labels of the training images at the best β (optionally CRF-refined)."""
    from cpn_dist.config.run import CrfConfig
    from cpn_dist.labels.pseudo import Job, pending, run_folder

    beta = p.best_beta()
    out = p.work / "pseudo"
    crf = CrfConfig() if p.cfg.pseudo.crf else None
    job = Job(str(p.work / "cams"), str(out), (beta,), crf, str(p.voc), output="png", dataset=p.dataset())
    todo = pending(p.names(p.cfg.splits.train), out, ".png", p.overwrite)
    with p.progress("pseudo", len(todo)) as bar:
        run_folder(job, todo, workers=p.cfg.workers, on_images=bar.advance)
    if not p.cfg.pseudo.crf:
        return []  # the CAM row at this β already scores these labels
    return [p.score_labels("CAM pseudo labels + CRF", out, p.cfg.splits.eval, f"β = {beta:.2f}")]


# ---- stage 2 ---------------------------------------------------------------------------------
def affinity_labels(p):
    """Confident foreground / background / ignore labels (:mod:`cpn_dist.affinity.labels`)."""
    from cpn_dist.affinity.labels import AffinityLabelParams, done_names, write_affinity_labels
    from cpn_dist.data.inputs import VocSource

    cfg = p.run_config("affinity")
    names = p.names(p.cfg.splits.train)
    out = p.work / "affinity_labels"
    with p.progress("affinity_labels", len(names) - len(done_names(names, out, p.overwrite))) as bar:
        write_affinity_labels(VocSource(p.voc, names), p.work / "cams", out,
                              AffinityLabelParams.from_config(cfg.affinity), names, workers=p.cfg.workers,
                              overwrite=p.overwrite, on_image=bar.on_item, dataset=p.dataset())  # fmt: skip


def train_affinity(p):
    """AffinityNet: :func:`cpn_dist.train.train` of the affinity run config."""
    p.train_stage("affinity")


def rw(p):
    """The random walk of the CAMs (:func:`cpn_dist.affinity.random_walk.walk_samples`)."""
    from cpn_dist.affinity.random_walk import WalkParams, load_affinity_model, walk_samples

    cfg = p.run_config("affinity")
    out = p.work / "rw"
    source = p.todo(p.names(p.cfg.splits.train), lambda n: (out / f"{n}.png").is_file())
    model, _ = load_affinity_model(p.weights("affinity"), cfg.model.backbone, p.dist.device, cfg.model.allow_pickle)
    with p.progress("rw", p.share(source)) as bar:
        walk_samples(model, source.samples(p.dist.rank, p.dist.world, labels=False), p.work / "cams", out,
                     WalkParams.from_config(cfg.affinity), device=p.dist.device, mean=tuple(cfg.data.mean),
                     std=tuple(cfg.data.std), on_image=bar.on_item, dataset=p.dataset())  # fmt: skip


def eval_rw(p):
    """The score of the random-walk labels on the evaluation split."""
    return [p.score_labels("RW", p.work / "rw", p.cfg.splits.eval)]


# ---- stage 3 ---------------------------------------------------------------------------------
def train_segmentation(p):
    """DeepLab on the RW labels (the CAM pseudo labels without stage 2)."""
    labels = p.segmentation_labels()
    if not labels.is_dir():
        raise CpnError(f"{labels}: no pseudo labels to train the segmentation model on")
    p.train_stage("segmentation")


def segment(p):
    """Multi-scale + flip inference and the dense CRF (one pass: the CRF needs the mean probabilities, too
    large to keep on disk) on the val and evaluation splits; the test split, if any, in the VOC
    test-server layout."""
    from cpn_dist.data.datasets.info import voc
    from cpn_dist.data.datasets.recorded import weights_dataset
    from cpn_dist.models.weights import load_state, read_weights
    from cpn_dist.segmentation.infer import Outputs, segment_samples, segment_settings
    from cpn_dist.segmentation.model import model_from_config

    cfg = p.run_config("segmentation")
    settings = segment_settings(cfg)
    path = p.weights("segmentation")
    state, meta = read_weights(path, cfg.model.allow_pickle)
    dataset = weights_dataset(path, meta, state, "segmentation") or voc()
    model = model_from_config(cfg, dropout=False, num_classes=dataset.num_classes)
    load_state(model, state, path)
    model.to(p.dist.device)
    crf = settings.crf is not None
    for split, scored in p.segment_splits():
        base = p.work / "segmentation_out"
        if scored:
            outputs = Outputs(base / split, base / f"{split}_crf" if crf else None)
        else:
            outputs = Outputs(None, None, p.work / "test_server")
        source = p.todo(p.names(split), outputs.done)
        with p.progress(f"segment {split}", p.share(source)) as bar:
            segment_samples(model, source.samples(p.dist.rank, p.dist.world, labels=False), outputs, settings,
                            device=p.dist.device, crf_workers=p.cfg.workers if crf else 0,
                            on_image=bar.on_item, dataset=dataset)  # fmt: skip


def eval_segmentation(p):
    """The segmentation model's scores with and without CRF."""
    crf = p.run_config("segmentation").segmentation.crf.enabled
    base = p.work / "segmentation_out"
    scores = []
    for split, scored in p.segment_splits():
        if not scored:
            continue
        scores.append(p.score_labels("segmentation", base / split, split))
        if crf:
            scores.append(p.score_labels("segmentation + CRF", base / f"{split}_crf", split))
    return scores


# ---- the table -------------------------------------------------------------------------------
TABLE = (
    Step("pack", pack, "data", main_only=True),
    Step("train_cpn", train_cpn, "1"),
    Step("cams", cams, "1"),
    Step("eval_cams", eval_cams, "1", main_only=True),
    Step("pseudo", pseudo, "1", main_only=True),
    Step("affinity_labels", affinity_labels, "2", main_only=True),
    Step("train_affinity", train_affinity, "2"),
    Step("rw", rw, "2"),
    Step("eval_rw", eval_rw, "2", main_only=True),
    Step("train_segmentation", train_segmentation, "3"),
    Step("segment", segment, "3"),
    Step("eval_segmentation", eval_segmentation, "3", main_only=True),
)
STEPS = tuple(step.name for step in TABLE)
STAGE2 = tuple(step.name for step in TABLE if step.stage == "2")  # run only when configs.affinity is set
# With coco_root the table starts with the view of the COCO folder (a VOC run's table, and its stamps, stay
# as they were).
COCO_TABLE = (Step("coco_view", coco_view, "data", main_only=True), *TABLE)
ALL_STEPS = tuple(step.name for step in COCO_TABLE)

