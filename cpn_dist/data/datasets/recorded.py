"""Which dataset — which C classes — a run, a weights file or a folder is of. The description itself is
:class:`cpn_dist.data.datasets.info.DatasetInfo` (the one contract); this module finds it:

- a training run: from its shards' ``meta.json`` (:func:`run_dataset`; a pack that records none is VOC);
- a weights file: from the dataset the weights record (``model_final.pth``'s ``"cpn_dist"`` metadata,
  a checkpoint folder's ``trainer_state.json``), or, for weights that record nothing (released ones),
  from the width of the model's classifier: 21 is VOC, 81 COCO (:func:`weights_dataset`);
- CAM and label folders: their ``dataset.json``, or the shards' ``meta.json`` of a ground truth given as
  shards (:func:`folders_dataset`), else VOC.

A ``--dataset voc|coco`` flag chooses where nothing records one and must agree with what is recorded.
Nothing here imports torch.
"""

from __future__ import annotations

from pathlib import Path

from cpn_dist.data.datasets.info import BUILT_IN, DatasetInfo, by_name, read_folder_dataset, resolve_dataset
from cpn_dist.data.shards.reader import shards_dataset
from cpn_dist.errors import CpnError

# The classifier of each stage's model, whose output channels are C (AffinityNet has none).
CLASSIFIER_KEYS = {"cpn": ("fc8.weight",), "segmentation": ("seg_head.fc8.weight", "seg_head.branches.0.weight")}


def run_dataset(data, missing_ok: bool = False) -> DatasetInfo:
    """The dataset of a run config's ``data`` section (its ``data.shards``, ``data.meta``). ``missing_ok``:
    VOC when the shards cannot be read yet (a model built before its loader, whose error then says what
    packs them), else that error."""
    try:
        return shards_dataset(data)
    except CpnError:
        if not missing_ok:
            raise
        from cpn_dist.data.datasets.info import voc

        return voc()


def by_class_count(count: int) -> DatasetInfo:
    """The built-in dataset with ``count`` classes (background included), else ``count`` unnamed classes."""
    for make in BUILT_IN.values():
        dataset = make()
        if dataset.num_classes == count:
            return dataset
    if count < 2:
        raise CpnError(f"a classifier of {count} classes has no object class")
    return DatasetInfo(f"{count} classes", ("background", *(f"class {i}" for i in range(1, count))))


def recorded_dataset(path: str | Path, meta: dict | None) -> DatasetInfo | None:
    """The dataset weights ``path`` record in their metadata ``meta`` (None: none recorded)."""
    data = (meta or {}).get("dataset")
    return None if data is None else DatasetInfo.from_json(data, f"{path}: its recorded dataset")


def classifier_classes(state: dict, stage: str) -> int | None:
    """C of a state dict of a ``stage`` model: its classifier's output channels (None: no classifier)."""
    key = next((k for k in CLASSIFIER_KEYS.get(stage, ()) if k in state), None)
    return None if key is None else int(state[key].shape[0])


def weights_dataset(path: str | Path, meta: dict | None, state: dict, stage: str,
                    name: str | None = None) -> DatasetInfo | None:  # fmt: skip
    """The dataset a ``stage`` model of weights ``path`` is built for: what the weights record, else the width
    of their classifier; ``name`` (``--dataset``) where they say neither (None then: an AffinityNet that
    records nothing, whose classes come from its CAMs). A ``name`` of another class count is one line."""
    found = recorded_dataset(path, meta)
    if found is None:
        count = classifier_classes(state, stage)
        found = None if count is None else by_class_count(count)
    if name is None:
        return found
    chosen = by_name(name)
    if found is not None and found.num_classes != chosen.num_classes:
        how = "record" if recorded_dataset(path, meta) is not None else "have a classifier of"
        raise CpnError(f"--dataset {name} ({chosen.num_classes} classes) contradicts {path}, whose weights {how} "
                       f"{found.num_classes} classes ({found.name}); leave --dataset out: the weights say which "
                       "classes they score")  # fmt: skip
    return chosen


def same_classes(model: DatasetInfo, other: DatasetInfo, what: str, source: str) -> None:
    """Refuse, in one line, ``other`` (the dataset of ``source``: shards, a CAM folder …) when its class count
    differs from ``model``'s, the dataset a model was built for."""
    if other.num_classes != model.num_classes:
        raise CpnError(f"{source}: {what} of {other.name} ({other.num_classes} classes), but the model scores "
                       f"{model.name} ({model.num_classes} classes)")  # fmt: skip


def folders_dataset(name: str | None, *folders: str | Path | None) -> DatasetInfo:
    """The dataset of a command over ``folders`` (CAMs, labels, ground truth):
    :func:`cpn_dist.data.datasets.info.resolve_dataset` (``--dataset`` ``name`` wins, else the first folder whose
    ``dataset.json`` records one, else VOC), where a folder of packed shards (the ground truth of ``cpn eval
    --gt shards/…``) records its dataset in its ``meta.json``."""
    from cpn_dist.data.inputs import is_shard_source

    given = [f for f in folders if f]
    plain = [f for f in given if not is_shard_source(f)]
    packed = [f for f in given if is_shard_source(f) and Path(f).is_dir()]
    dataset = resolve_dataset(name, *plain)
    if name is None and packed and all(read_folder_dataset(f) is None for f in plain if Path(f).is_dir()):
        return shards_dataset(packed[0])
    return dataset


def record_dataset(folder: str | Path, dataset: DatasetInfo) -> None:
    """Record ``dataset`` in ``folder``'s ``dataset.json`` (CAM files, label maps) for the commands that read
    it next, as :func:`cpn_dist.data.datasets.info.write_folder_dataset` does, under a temporary name of its own:
    the processes of a distributed run may all record it at once. Written on every call, as the outputs
    of the work that calls it are (a rerun step's files are all new)."""
    import os
    import tempfile

    from cpn_dist.atomic import write_json
    from cpn_dist.data.datasets.info import FOLDER_FILE

    folder = Path(folder)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{FOLDER_FILE}.", suffix=".tmp")
    os.close(fd)
    try:
        write_json(folder / FOLDER_FILE, dataset.to_json(), tmp=Path(tmp))
    finally:
        Path(tmp).unlink(missing_ok=True)
