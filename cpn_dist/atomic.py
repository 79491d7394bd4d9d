"""Atomic file writes: the file is written under a temporary name beside its target and renamed onto
it with ``os.replace``, so a reader — or a run resumed after a crash — sees the old file or the new
one, never a part of one."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any


def write_atomic(path: Path, write: Callable[[Path], object], tmp: Path | None = None) -> None:
    """``write(tmp)``, then ``os.replace(tmp, path)``. ``tmp`` defaults to ``.{name}.tmp`` beside ``path``;
    give one where the writer picks the format from the suffix (PIL) or a clean-up looks for the name."""
    tmp = path.with_name(f".{path.name}.tmp") if tmp is None else tmp
    write(tmp)
    os.replace(tmp, path)


def write_json(path: Path, data: Any, indent: int = 1, tmp: Path | None = None) -> None:
    """``data`` as indented JSON with a final newline, written atomically (its folder made if missing)."""
    text = json.dumps(data, indent=indent) + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, lambda t: t.write_text(text), tmp)
