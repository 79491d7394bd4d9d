"""Run-config keys that were renamed, old → new (no pydantic: the pipeline's step stamps use it too).

A config a user writes with an old key fails with a message naming the new key
(:func:`cpn_dist.config.describe_error`). A config a program recorded — in a weights file, a checkpoint,
a pipeline step's stamp — is read with its old keys moved to the new ones, so weights and runs from
before a rename still load, resume and count as done.
"""

from __future__ import annotations

from typing import Any

__all__ = ["RENAMED_KEYS", "renamed_flat", "renamed_tree"]

# α, the background power (1 - max CAM)^α, and the random walk's affinity power (A^p) had names that
# β, the constant background score, and α elsewhere shared.
RENAMED_KEYS = {
    "loss.alpha": "loss.bg_power",
    "affinity.low_alpha": "affinity.low_bg_power",
    "affinity.high_alpha": "affinity.high_bg_power",
    "affinity.rw_alpha": "affinity.rw_bg_power",
    "affinity.rw_beta": "affinity.rw_affinity_power",
}


def renamed_flat(flat: dict[str, Any]) -> dict[str, Any]:
    """A flat ``{dotted key: value}`` mapping with the old keys under their new names."""
    return {RENAMED_KEYS.get(key, key): value for key, value in flat.items()}


def renamed_tree(tree: Any) -> Any:
    """A recorded config (nested mappings) with the old keys moved to their new names; a copy of every
    section that had one, ``tree`` itself when nothing was renamed."""
    if not isinstance(tree, dict):
        return tree
    out = tree
    for old, new in RENAMED_KEYS.items():
        (section, old_key), new_key = old.split("."), new.split(".")[1]
        node = out.get(section)
        if isinstance(node, dict) and old_key in node:
            node = dict(node)
            node.setdefault(new_key, node[old_key])
            del node[old_key]
            out = {**out, section: node}
    return out
