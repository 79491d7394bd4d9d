"""Random access to the samples of local tar shards: index the members once, read by offset.

Used by the deterministic ("elastic") loader, which must fetch any sample of the epoch by its
position in the global order.
"""

from __future__ import annotations

import contextlib
import os
import tarfile
from pathlib import Path
from typing import Any

from cpn_dist.data.shards.reader import split_member_name, unreadable_shard
from cpn_dist.errors import CpnError


def _stat(path: str) -> tuple[int, int]:
    try:
        st = os.stat(path)
    except OSError:
        return (-1, -1)
    return (st.st_mtime_ns, st.st_size)


class TarIndex:
    """Where every sample's members live: ``keys[i]`` and ``members[i] = {suffix: (shard, offset, size)}``,
    samples in shard order then tar order. File handles are opened lazily per process."""

    def __init__(self, paths: list[str], suffixes: tuple[str, ...] | None = None):
        self.paths = [str(p) for p in paths]
        self.keys: list[str] = []
        self.urls: list[int] = []
        self.members: list[dict[str, tuple[int, int]]] = []
        self._fds: dict[int, int] = {}
        for shard, path in enumerate(self.paths):
            self._index_shard(shard, path, suffixes)

    def _index_shard(self, shard: int, path: str, suffixes: tuple[str, ...] | None) -> None:
        if not Path(path).is_file():
            raise CpnError(f"{path}: shard not found")
        try:
            with tarfile.open(path, "r:") as tar:
                for info in tar:
                    if not info.isreg():
                        continue
                    key, suffix = split_member_name(info.name)
                    if key is None:
                        continue
                    suffix = suffix.lower()
                    if not self.keys or self.keys[-1] != key or self.urls[-1] != shard:
                        self.keys.append(key)
                        self.urls.append(shard)
                        self.members.append({})
                    if suffixes is None or suffix in suffixes:
                        self.members[-1][suffix] = (info.offset_data, info.size)
        except (tarfile.TarError, OSError) as exc:
            raise unreadable_shard(path, exc) from None

    def __len__(self) -> int:
        return len(self.keys)

    def raw(self, i: int) -> dict[str, Any]:
        """The raw sample ``i`` in webdataset form: ``__key__``, ``__url__`` and member bytes by suffix."""
        shard = self.urls[i]
        fd = self._fds.get(shard)
        if fd is None:
            fd = self._fds[shard] = os.open(self.paths[shard], os.O_RDONLY)
        sample: dict[str, Any] = {"__key__": self.keys[i], "__url__": self.paths[shard]}
        for suffix, (offset, size) in self.members[i].items():
            data = os.pread(fd, size, offset)
            if len(data) != size:
                raise unreadable_shard(self.paths[shard], f"truncated at sample {self.keys[i]}")
            sample[suffix] = data
        return sample

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_fds"] = {}  # descriptors are per process
        return state

    @classmethod
    def cached(cls, paths: list[str], suffixes: tuple[str, ...] | None = None) -> TarIndex:
        """The index of ``paths``, built once per process while the files stay unchanged (a trainer
        builds a loader every epoch)."""
        stamp = tuple((str(p), *_stat(p)) for p in paths), suffixes
        index = _CACHE.get(stamp)
        if index is None:
            _CACHE.clear()
            index = _CACHE[stamp] = cls(paths, suffixes)
        return index

    def __del__(self) -> None:
        for fd in getattr(self, "_fds", {}).values():
            with contextlib.suppress(OSError):
                os.close(fd)


_CACHE: dict[tuple, TarIndex] = {}
