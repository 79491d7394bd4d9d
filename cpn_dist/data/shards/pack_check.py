"""What ``cpn pack --resume`` may keep: the settings a pack was made with, and which shards are intact.

``meta.json`` records, per split, the settings that decide the shards' bytes (``"settings"``) and each
shard's size and SHA-256; an interrupted pack's work folder holds the same in ``settings.json`` and the
per-shard statistics. A resume with other settings is refused in one line naming them; a shard that
is missing, or whose size or checksum differs from the record, is rebuilt. A split packed by an older
version records neither: its settings are read back from its entry (SLIC counts, compactness, shard
size, label and mask source, scikit-image version) and its shards checked by decoding every sample
(:func:`cpn_dist.data.shards.verify.verify_split`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cpn_dist.data.datasets.info import DatasetInfo
from cpn_dist.data.shards.reader import SHARD_PATTERN
from cpn_dist.data.shards.verify import shard_problem, verify_split

# Each setting of cpn_dist.data.shards.pack._settings as the user knows it.
SETTING_NAMES = {
    "split": "--split",
    "list_sha256": "the split list",
    "segments": "--slic-segments",
    "compactness": "--compactness",
    "shard_size": "--shard-size",
    "labels": "--labels",
    "masks": "the mask folder",
    "crowd_labels": "--crowd-labels",
    "crowd_mask": "--crowd-mask",
    "overlap": "--overlap",
    "empty": "--empty",
    "skimage": "scikit-image",
}


def settings_changes(old: dict[str, Any] | None, new: dict[str, Any]) -> list[str]:
    """``name: old → new`` for each setting of ``old`` (all when None: unknown) that ``new`` changes."""
    if old is None:
        return [f"{SETTING_NAMES[k]}: unknown" for k in new]
    changed = [k for k in new if k in old and old[k] != new[k]]
    return [f"{SETTING_NAMES[k]}: other ids" if k == "list_sha256" else f"{SETTING_NAMES[k]}: {old[k]} → {new[k]}"
            for k in changed]  # fmt: skip


def recorded_settings(entry: dict[str, Any]) -> dict[str, Any]:
    """The settings a split's meta.json entry was packed with (read back from the entry when an older
    version did not record them)."""
    if "settings" in entry:
        return entry["settings"]
    library = entry["slic"].get("library", "").split()
    derived = {"segments": entry["slic"]["segments"], "compactness": entry["slic"]["compactness"],
               "shard_size": entry["shard_size"], "labels": entry["source"]["labels"],
               "masks": entry["source"]["masks"]}  # fmt: skip
    if len(library) >= 2 and library[0] == "scikit-image":
        derived["skimage"] = library[1]
    return derived


def damaged_shards(folder: Path, split: str, entry: dict[str, Any],
                   dataset: DatasetInfo | None = None) -> dict[int, str]:  # fmt: skip
    """Shard index → what is wrong, for each shard of a complete split that is missing or damaged
    (``dataset``: the folder's, for a split without checksums, whose samples are decoded; VOC when None)."""
    records = {int(SHARD_PATTERN.match(s["name"])["index"]): s for s in entry["shards"]}
    if all("sha256" in s for s in records.values()):
        found = {i: shard_problem(folder / s["name"], s) for i, s in records.items()}
        return {i: problem for i, problem in found.items() if problem}
    by_name = {s["name"]: i for i, s in records.items()}
    damaged: dict[int, str] = {}
    for where, what in verify_split(folder, split, entry, dataset=dataset).problems:
        index = by_name.get(where.split(":")[0])
        if index is not None:
            damaged.setdefault(index, what)
    return damaged
