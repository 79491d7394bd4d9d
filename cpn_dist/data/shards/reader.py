"""The shard format written by ``cpn pack`` and its readers.

A packed folder holds webdataset shards ``{split}-NNNNNN.tar`` and one ``meta.json``. One sample per
image, key = the image id (VOC) or the file name's stem (COCO), members (in this order inside the tar):

- ``{key}.jpg``         the original JPEG bytes, untouched
- ``{key}.cls.json``    the C-1 image-level labels, a JSON list of 0/1 in the order of ``meta["classes"]``
                        (20 for VOC, 80 for COCO)
- ``{key}.slic{N}.png`` the SLIC superpixel map of the original image for segment count N,
                        uint16 PNG, ids 0..K-1 (one member per packed N, ascending)
- ``{key}.seg.png``     the ground-truth class mask (0..C-1, 255 = void or ignored) when the split has one

``meta.json`` records the dataset (``"dataset"``: its name, ``"classes"``: its object classes; a folder
packed before datasets were recorded has no name and is PASCAL VOC, :func:`~cpn_dist.data.datasets.info.from_meta`)
and describes every split packed into the folder (``meta["splits"][split]``): sample count, the shards
with their sample counts, members, SLIC settings, mean RGB, per-class image counts, the source (and,
for COCO, the protocol of its labels and masks), and the skipped files with reasons.

Shards are plain tar files (readable by ``tar`` and by any webdataset pipeline) and can be read
from local paths, globs, brace patterns, ``pipe:`` commands and ``http(s)://`` URLs.
"""

from __future__ import annotations

import glob
import json
import re
import urllib.request
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import braceexpand
import numpy as np

from cpn_dist.data.datasets.info import DatasetInfo, from_meta, voc
from cpn_dist.data.shards.members import SLIC_MEMBER, decode_members
from cpn_dist.errors import CpnError, without_addresses

META_NAME = "meta.json"
FORMAT = "cpn-shards"
FORMAT_VERSION = 1
SHARD_PATTERN = re.compile(r"^(?P<split>.+)-(?P<index>\d{6})\.tar$")


def shard_name(split: str, index: int) -> str:
    return f"{split}-{index:06d}.tar"


# --------------------------------------------------------------------------------------------
# meta.json


def read_meta(folder: str | Path) -> dict[str, Any]:
    """The ``meta.json`` of a packed folder; a missing or malformed file is a :class:`CpnError`."""
    path = Path(folder) / META_NAME
    if not Path(folder).is_dir():
        raise CpnError(f"{folder}: shard folder not found")
    if not path.is_file():
        raise CpnError(f"{path}: not found (is {folder} a folder written by `cpn pack`?)")
    return parse_meta(path.read_bytes(), str(path))


def parse_meta(data: bytes, source: str) -> dict[str, Any]:
    try:
        meta = json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CpnError(f"{source}: malformed meta.json ({exc})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT or not isinstance(meta.get("splits"), dict):
        raise CpnError(f"{source}: not a meta.json written by `cpn pack`")
    if meta.get("format_version", 0) > FORMAT_VERSION:
        raise CpnError(f"{source}: format version {meta['format_version']} is newer than this cpn-dist reads")
    return meta


def split_meta(meta: dict[str, Any], split: str | None, source: str) -> tuple[str, dict[str, Any]]:
    """(split name, its entry) — ``split=None`` picks the only packed split."""
    splits = meta["splits"]
    if split is None:
        if len(splits) != 1:
            raise CpnError(f"{source}: holds splits {sorted(splits)}; name one")
        split = next(iter(splits))
    if split not in splits:
        raise CpnError(f"{source}: split '{split}' not packed here (packed: {', '.join(sorted(splits)) or 'none'})")
    return split, splits[split]


# --------------------------------------------------------------------------------------------
# Where the shards are


@dataclass(frozen=True)
class ShardSet:
    """The shards of one split: URLs (local paths or webdataset URLs) with their sample counts."""

    urls: list[str]
    counts: list[int]
    split: str
    meta: dict[str, Any]  # the split's entry in meta.json
    local: bool  # every URL is a local file path
    dataset: DatasetInfo = field(default_factory=voc)  # what meta.json records (VOC when nothing)

    @property
    def total(self) -> int:
        return sum(self.counts)

    @property
    def segments(self) -> list[int]:
        return list(self.meta.get("slic", {}).get("segments", []))


def is_remote(url: str) -> bool:
    return url.startswith("pipe:") or "://" in url


def _read_remote_meta(url: str) -> bytes | None:
    if url.startswith(("http://", "https://")):
        try:
            with urllib.request.urlopen(url, timeout=30) as resp:  # noqa: S310 (user-given URL)
                return resp.read()
        except OSError:
            return None
    return None


def resolve_shards(spec: str, split: str | None = None, meta_location: str | None = None) -> ShardSet:
    """Resolve ``data.shards`` into a :class:`ShardSet`.

    ``spec`` is a folder written by ``cpn pack`` (its ``meta.json`` names the split's shards), or a
    webdataset source: a local path, glob or brace pattern (``shards/voc/train_aug-{000000..000010}.tar``),
    a ``pipe:`` command or an ``http(s)://`` URL pattern. For a source, the sample counts come from the
    ``meta.json`` beside the shards, or from ``meta_location`` (a path or http(s) URL) when given.
    """
    if not is_remote(spec) and Path(spec).is_dir():
        folder = Path(spec)
        meta_src = meta_location or str(folder / META_NAME)
        meta = _load_meta(meta_src)
        name, entry = split_meta(meta, split, meta_src)
        urls = [str(folder / s["name"]) for s in entry["shards"]]
        for url in urls:
            if not Path(url).is_file():
                raise CpnError(f"{url}: shard listed in {meta_src} not found")
        return ShardSet(urls, [int(s["count"]) for s in entry["shards"]], name, entry, local=True,
                        dataset=from_meta(meta))  # fmt: skip

    urls = _expand(spec)
    local = not any(is_remote(u) for u in urls)
    if meta_location is None:
        if urls[0].startswith("pipe:"):
            raise CpnError(f"{spec}: a pipe: source needs data.meta (the meta.json written by `cpn pack`)")
        meta_location = _beside(urls[0])
    meta = _load_meta(meta_location)
    by_name = {s["name"]: (name, int(s["count"])) for name, e in meta["splits"].items() for s in e["shards"]}
    counts, names = [], set()
    for url in urls:
        hit = [n for n in by_name if url.endswith("/" + n) or url == n or (url.startswith("pipe:") and n in url)]
        if not hit:
            raise CpnError(f"{url}: shard not listed in {meta_location}")
        best = max(hit, key=len)
        names.add(by_name[best][0])
        counts.append(by_name[best][1])
    if len(names) != 1:
        raise CpnError(f"{spec}: shards of several splits ({', '.join(sorted(names))}); use one split")
    name = names.pop()  # an explicit pattern names its shards: data.split only selects within a folder
    return ShardSet(urls, counts, name, meta["splits"][name], local=local, dataset=from_meta(meta))


def _beside(url: str) -> str:
    """The ``meta.json`` beside a shard URL."""
    return url.rsplit("/", 1)[0] + "/" + META_NAME if "/" in url else META_NAME


def shards_dataset(source: Any, meta_location: str | None = None) -> DatasetInfo:
    """The dataset (:class:`~cpn_dist.data.datasets.info.DatasetInfo`: its name and C classes) of packed shards,
    as their ``meta.json`` records it — PASCAL VOC for a pack that records none.

    ``source``: a run config's ``data`` section (its ``shards`` and ``meta``), or what ``data.shards``
    takes (a folder written by ``cpn pack``, a shard pattern or URL), or one ``.tar`` shard (its
    ``meta.json`` beside it, VOC when there is none). ``meta_location`` overrides where meta.json is
    (``data.meta``). Only meta.json is read."""
    if hasattr(source, "shards"):
        source, meta_location = source.shards, meta_location or getattr(source, "meta", None)
    spec = str(source)
    if meta_location is None:
        if not is_remote(spec) and Path(spec).is_dir():
            meta_location = str(Path(spec) / META_NAME)
        elif not is_remote(spec) and Path(spec).is_file():
            beside = Path(spec).with_name(META_NAME)
            return from_meta(_load_meta(str(beside))) if beside.is_file() else voc()
        else:
            urls = _expand(spec)
            if urls[0].startswith("pipe:"):
                raise CpnError(f"{spec}: a pipe: source needs data.meta (the meta.json written by `cpn pack`)")
            meta_location = _beside(urls[0])
    return from_meta(_load_meta(meta_location))


def _load_meta(location: str) -> dict[str, Any]:
    if is_remote(location):
        data = _read_remote_meta(location)
        if data is None:
            raise CpnError(f"{location}: meta.json not readable (set data.meta to its path or URL)")
        return parse_meta(data, location)
    path = Path(location)
    if not path.is_file():
        raise CpnError(f"{location}: meta.json not found (set data.meta to the meta.json written by `cpn pack`)")
    return parse_meta(path.read_bytes(), location)


def _expand(spec: str) -> list[str]:
    urls: list[str] = []
    for part in spec.split("::"):
        for url in braceexpand.braceexpand(part):
            if is_remote(url):
                urls.append(url)
            elif glob.has_magic(url):
                found = sorted(glob.glob(url))
                if not found:
                    raise CpnError(f"{url}: no shard matches")
                urls += found
            elif not Path(url).is_file():
                raise CpnError(f"{url}: shard not found")
            else:
                urls.append(url)
    if not urls:
        raise CpnError(f"{spec}: no shards")
    return urls


# --------------------------------------------------------------------------------------------
# Reading samples


def unreadable_shard(url: str, problem: object, hint: bool = True) -> CpnError:
    """The one-line error of a shard that does not read (truncated, corrupt, unreachable): it names the
    shard and, with ``hint``, how to find the others like it and repair the split."""
    if isinstance(problem, BaseException):
        problem = problem.args[0] if problem.args else problem
    msg = f"{url}: unreadable shard ({without_addresses(str(problem))})"
    if hint and not is_remote(url):
        msg += (f"; `cpn shards verify {Path(url).parent}` checks every shard, and `cpn pack … --overwrite` "
                "re-packs the split")  # fmt: skip
    return CpnError(msg)


def iter_raw_samples(
    urls: Iterable[str], select: Callable[[str], bool] | None = None, hint: bool = True
) -> Iterator[dict[str, Any]]:
    """Raw webdataset samples (``__key__``, ``__url__`` and member bytes by suffix) of the given shards,
    in tar order. ``select`` filters member file names before their bytes are kept; ``hint``: errors
    suggest `cpn shards verify` (see :func:`unreadable_shard`). Local shards are read with ``tarfile``
    (no webdataset, hence no torch: ``cpn shards verify`` and ``cpn eval`` stay light), others through
    webdataset's openers; both group members into samples the same way."""
    for url in urls:
        if not is_remote(url) and not Path(url).is_file():
            raise CpnError(f"{url}: shard not found")
        try:
            if is_remote(url):
                from webdataset.tariterators import group_by_keys, tar_file_expander, url_opener

                yield from group_by_keys(tar_file_expander(url_opener([dict(url=url)]), select_files=select))
            else:
                yield from _local_samples(url, select)
        except Exception as exc:  # tarfile/gopen errors on a corrupt or unreachable shard
            raise unreadable_shard(url, exc, hint) from None


def split_member_name(name: str) -> tuple[str | None, str | None]:
    """(sample key, suffix) of a member name, as webdataset splits it: the key ends at the first dot of
    the base name (``a/2007_000032.slic200.png`` → ``a/2007_000032``, ``slic200.png``)."""
    match = re.match(r"^((?:.*/|)[^.]+)[.]([^/]*)$", name)
    return (match[1], match[2]) if match else (None, None)


def _local_samples(path: str, select: Callable[[str], bool] | None) -> Iterator[dict[str, Any]]:
    """webdataset's ``group_by_keys(tar_file_expander(...))`` of one local tar: regular members in file
    order (``__…__`` meta files skipped), grouped by key, suffixes lower-cased, a repeated member an error."""
    import tarfile

    sample: dict[str, Any] | None = None
    with open(path, "rb") as fh, tarfile.open(fileobj=fh, mode="r|*") as tar:
        for info in tar:
            name = info.name
            if not info.isreg() or re.match(r"__[^/]*__($|/)", name) or (select is not None and not select(name)):
                continue
            key, suffix = split_member_name(name)
            data = tar.extractfile(info).read()
            if key is None:
                continue
            suffix = suffix.lower()
            if sample is None or key != sample["__key__"]:
                if sample is not None:
                    yield sample
                sample = {"__key__": key, "__url__": path}
            if suffix in sample:
                raise ValueError(f"{name}: duplicate file name in tar file")
            sample[suffix] = data
    if sample is not None:
        yield sample


def decode_sample(raw: dict[str, Any], num_foreground: int | None = None) -> dict[str, Any]:
    """Decode every member of a raw sample: ``key``, ``url``, ``image`` (H×W×3 uint8), ``labels``
    (float32 [C-1]; ``num_foreground`` = C-1 of the shards' dataset, None: VOC's), ``slic``
    ({N: H×W uint16}), ``seg`` (H×W uint8 or None)."""
    key, url = raw["__key__"], raw.get("__url__", "?")
    slic_names = [name for name in raw if SLIC_MEMBER.fullmatch(name)]
    got = decode_members(raw, ["jpg", "cls.json", *slic_names, "seg.png"], optional=["seg.png"], where=url,
                         num_foreground=num_foreground)  # fmt: skip
    slic = {int(SLIC_MEMBER.fullmatch(name)[1]): got[name] for name in slic_names}
    return {"key": key, "url": url, "image": np.asarray(got["jpg"]), "labels": got["cls.json"],
            "slic": dict(sorted(slic.items())), "seg": got["seg.png"]}  # fmt: skip


def read_shard_samples(source: str | Path, split: str | None = None) -> Iterator[dict[str, Any]]:
    """Decoded samples of a packed split, in shard order.

    ``source`` is a folder written by ``cpn pack`` (``split`` picks the split; ``None`` = the only
    one), one ``.tar`` shard, or any webdataset source pattern. Each sample is a dict with ``key``
    (image id), ``url`` (its shard), ``image`` (H×W×3 uint8 RGB), ``labels`` (float32 [C-1], 0/1, C
    from the shards' meta.json: :func:`shards_dataset`), ``slic`` ({segment count N: H×W uint16 ids}) and
    ``seg`` (H×W uint8 class indices 0..C-1, 255 = void, or None when the split has no ground truth).
    """
    source = str(source)
    if not is_remote(source) and Path(source).is_file():
        urls, dataset = [source], shards_dataset(source)
    else:
        shards = resolve_shards(source, split)
        urls, dataset = shards.urls, shards.dataset
    for raw in iter_raw_samples(urls):
        yield decode_sample(raw, dataset.num_foreground)


def class_names(labels: np.ndarray, dataset: DatasetInfo | None = None) -> list[str]:
    """The names of the classes a label vector marks present (``dataset``: VOC when None)."""
    names = (dataset or voc()).foreground
    return [names[i] for i in np.flatnonzero(np.asarray(labels) > 0.5)]
