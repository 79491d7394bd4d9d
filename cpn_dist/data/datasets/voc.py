"""PASCAL VOC 2012: class names, the label palette, and readers for its files.

Class index convention (as in the VOC masks): 0 is background, 1..20 the object classes in
:data:`CLASSES` order, 255 is "void" (object borders and difficult regions, ignored in scoring).
Image-level labels are 20-vectors indexed by ``class index - 1``.
"""

from __future__ import annotations

import logging
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from cpn_dist.errors import CpnError

if TYPE_CHECKING:
    from cpn_dist.data.datasets.info import DatasetInfo

CLASSES: tuple[str, ...] = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train",
    "tvmonitor",
)  # fmt: skip
NUM_FOREGROUND = len(CLASSES)  # the 20 object classes: image-level label vectors
NUM_CLASSES = NUM_FOREGROUND + 1  # with background: masks and score maps use 0..20
IGNORE = 255
CLASS_INDEX = {name: i for i, name in enumerate(CLASSES)}
# The sub-folders of a VOC 2012 folder that cpn-dist reads.
VOC_PARTS = ("JPEGImages", "Annotations", "SegmentationClass", "ImageSets/Segmentation")
# The split lists `cpn check-voc` checks by default (train_aug is SBD's list: the stock devkit has none).
DEFAULT_SPLITS = ("train", "val", "train_aug")

log = logging.getLogger(__name__)


def voc_palette() -> np.ndarray:
    """The 256×3 uint8 VOC colour map: colour bits of the label index spread over R, G, B."""
    palette = np.zeros((256, 3), dtype=np.uint8)
    for label in range(256):
        c, r, g, b = label, 0, 0, 0
        for shift in range(7, -1, -1):
            r |= ((c >> 0) & 1) << shift
            g |= ((c >> 1) & 1) << shift
            b |= ((c >> 2) & 1) << shift
            c >>= 3
        palette[label] = (r, g, b)
    return palette


PALETTE = voc_palette()


def save_label_png(label: np.ndarray, path: str | Path) -> None:
    """Write an H×W uint8 class map as a palette PNG with the VOC colours."""
    image = Image.fromarray(np.asarray(label, dtype=np.uint8), mode="P")
    image.putpalette(PALETTE.reshape(-1).tolist())
    image.save(path, optimize=False)


def read_label_png(path: str | Path) -> np.ndarray:
    """Read a VOC class map (palette PNG, or plain 8-bit) as H×W uint8 class indices."""
    try:
        with Image.open(path) as im:
            if im.mode not in ("P", "L"):
                raise CpnError(f"{path}: expected a palette or 8-bit label PNG, got mode {im.mode}")
            return np.array(im, dtype=np.uint8)
    except FileNotFoundError:
        raise CpnError(f"{path}: label PNG not found") from None
    except OSError as exc:
        raise CpnError(f"{path}: unreadable label PNG ({exc})") from None


def read_xml_objects(path: str | Path) -> list[str]:
    """Object class names listed in a VOC annotation XML, in file order."""
    try:
        if Path(path).stat().st_size == 0:
            raise CpnError(f"{path}: empty annotation file")
        root = ET.parse(path).getroot()
    except FileNotFoundError:
        raise CpnError(f"{path}: annotation not found") from None
    except ET.ParseError as exc:
        raise CpnError(f"{path}: malformed annotation XML ({exc})") from None
    names = []
    for obj in root.iter("object"):
        name = (obj.findtext("name") or "").strip()
        if name not in CLASS_INDEX:
            raise CpnError(f"{path}: unknown VOC class '{name}'")
        names.append(name)
    return names


def labels_from_names(names: list[str], dataset: DatasetInfo | None = None) -> np.ndarray:
    """The (C-1)-dim {0,1} float32 image-level label vector of a list of class names of ``dataset``
    (None: VOC, C-1 = 20)."""
    index = CLASS_INDEX if dataset is None else {name: i for i, name in enumerate(dataset.foreground)}
    y = np.zeros(len(index), dtype=np.float32)
    for name in names:
        y[index[name]] = 1.0
    return y


def read_labels_file(path: str | Path, dataset: DatasetInfo | None = None) -> dict[str, np.ndarray]:
    """The image-level labels of a labels file (``--labels``), as {image id: float32 [C-1]}, for the
    object classes of ``dataset`` (None: VOC's 20, :data:`CLASSES`).

    The file is the released ``cls_labels.npy`` — a dict saved with ``np.save``, unpickled without running
    code (:mod:`cpn_dist.safe_npy`: a file whose pickle names any other code is refused) — or, with any
    other suffix, a JSON object. It maps each image id (read as a string) to the image's labels, either

    - C-1 numbers in the dataset's class order (nested lists are flattened; numbers written as strings
      are read as numbers): 1 for a class present, 0 for one absent; other values are kept, as class
      weights for inference, or
    - the names of the classes present (a list of the dataset's class names, or one name), e.g.
      ``{"2007_000032": ["aeroplane", "person"]}``.

    ``cpn pack`` further needs every value to be 0 or 1 (shards store {0, 1} labels)."""
    import json

    from cpn_dist.safe_npy import ForbiddenGlobal, read_npy_object

    p = Path(path)
    if not p.is_file():
        raise CpnError(f"{p}: labels file not found")
    try:
        obj = read_npy_object(p) if p.suffix == ".npy" else json.loads(p.read_text())
    except ForbiddenGlobal as exc:
        raise CpnError(f"{p}: not a labels file ({exc}); refused") from None
    except (OSError, ValueError) as exc:
        raise CpnError(f"{p}: unreadable labels file ({exc})") from None
    if not isinstance(obj, dict):
        raise CpnError(f"{p}: labels file must map image ids to labels")
    return {str(key): _label_vector(value, f"{p}: {key}", dataset) for key, value in obj.items()}


def _label_vector(value, where: str, dataset: DatasetInfo | None) -> np.ndarray:
    """float32 [C-1] of one labels-file entry: C-1 numbers, or class names of ``dataset`` (None: VOC)."""
    classes = CLASSES if dataset is None else dataset.foreground
    try:
        flat = np.asarray(value).reshape(-1)
    except ValueError:  # ragged nesting
        flat = np.asarray([None])
    items = flat.tolist()
    names = bool(items) and all(isinstance(v, str) for v in items)
    if names and set(items) <= set(classes):
        return labels_from_names(items, dataset)
    try:
        numbers = flat.astype(np.float32)
    except (TypeError, ValueError):
        numbers = None
    if numbers is not None and numbers.shape == (len(classes),):
        return numbers
    if names:
        raise CpnError(f"{where}: unknown class names {sorted(set(items) - set(classes))}")
    raise CpnError(f"{where}: expected {len(classes)} values or a list of class names, got {len(items)} values")


def read_split(path: str | Path) -> list[str]:
    """Image ids of a split list: one id per line (extra columns, as in the released lists, ignored)."""
    p = Path(path)
    if not p.is_file():
        raise CpnError(f"{p}: split list not found")
    ids = []
    for line in p.read_text().splitlines():
        line = line.strip()
        if line:
            # released lists hold "/JPEGImages/2007_000032.jpg ..." — keep the bare id
            ids.append(Path(line.split()[0]).stem)
    return ids


def voc_folder(root: str | Path, needs: tuple[str, ...] = VOC_PARTS) -> Path:
    """``root``, checked to be a VOC 2012 folder holding the sub-folders ``needs``. A folder that does not
    exist, or lacks one of them, is a one-line :class:`CpnError` that says what a VOC folder holds (and,
    given a VOCdevkit folder, names the VOC2012 folder inside it)."""
    root = Path(root)
    if not root.is_dir():
        raise CpnError(f"{root}: VOC folder not found")
    missing = [sub for sub in needs if not (root / sub).is_dir()]
    if missing:
        inner = next((root / sub for sub in ("VOC2012", "VOCdevkit/VOC2012") if (root / sub).is_dir()), None)
        lacks = f" (no {', '.join(m + '/' for m in missing)})" if len(missing) < len(needs) else ""
        hint = f", but {inner} is one" if inner else ""
        raise CpnError(f"{root}: not a VOC folder{lacks}{hint}; a VOC 2012 folder holds "
                       f"{', '.join(p + '/' for p in VOC_PARTS)} (`cpn synth-voc --out DIR` writes a synthetic one)")
    return root


def split_lists(root: Path, splits: tuple[str, ...] | None) -> list[Path]:
    """The split lists of ``root`` to check: ``splits``, each of which must exist, or (None) those of
    :data:`DEFAULT_SPLITS` that exist — a warning names the absent ones; none at all is a CpnError."""
    folder = root / "ImageSets" / "Segmentation"
    if splits is not None:
        return [folder / f"{split}.txt" for split in splits]
    found = [folder / f"{s}.txt" for s in DEFAULT_SPLITS if (folder / f"{s}.txt").is_file()]
    if not found:
        raise CpnError(f"{folder}: none of the split lists {', '.join(s + '.txt' for s in DEFAULT_SPLITS)}; name "
                       "the lists to check with --splits")  # fmt: skip
    absent = [s for s in DEFAULT_SPLITS if not (folder / f"{s}.txt").is_file()]
    if absent:
        log.warning("%s: no %s (not checked; checking %s)", folder, ", ".join(s + ".txt" for s in absent),
                    ", ".join(p.name for p in found))  # fmt: skip
    return found


def check_voc(root: str | Path, splits: tuple[str, ...] | None = None) -> dict:
    """Check a VOC 2012 folder: every image of the split lists decodes, has an annotation, and (where a
    ``SegmentationClass`` mask exists) a mask of the same size whose classes equal the XML's. ``splits``:
    the lists to check, or None for those of :data:`DEFAULT_SPLITS` that exist (:func:`split_lists`).

    Returns ``{"images": n, "masks": m, "splits": [list names], "problems": [(id, reason), ...]}``;
    raises :class:`CpnError` when a required folder or a named split list is missing.
    """
    root = voc_folder(root, ("JPEGImages", "Annotations", "ImageSets/Segmentation"))
    lists = split_lists(root, splits)
    ids: dict[str, None] = {}
    for path in lists:
        for name in read_split(path):
            ids[name] = None
    problems: list[tuple[str, str]] = []
    masks = 0
    for name in ids:
        try:
            with Image.open(root / "JPEGImages" / f"{name}.jpg") as im:
                im.load()
                size = im.size
            names = read_xml_objects(root / "Annotations" / f"{name}.xml")
        except (OSError, CpnError) as exc:
            problems.append((name, str(exc)))
            continue
        mask_path = root / "SegmentationClass" / f"{name}.png"
        if not mask_path.is_file():
            continue
        masks += 1
        try:
            mask = read_label_png(mask_path)
        except CpnError as exc:
            problems.append((name, str(exc)))
            continue
        if mask.shape != (size[1], size[0]):
            problems.append((name, f"mask is {mask.shape[1]}×{mask.shape[0]}, image is {size[0]}×{size[1]}"))
            continue
        values = set(np.unique(mask).tolist())
        if not values <= set(range(NUM_CLASSES)) | {IGNORE}:
            problems.append((name, f"mask holds values outside 0..20 and 255: {sorted(values)}"))
            continue
        in_mask = {CLASSES[v - 1] for v in values if 1 <= v <= NUM_FOREGROUND}
        if in_mask != set(names):
            problems.append((name, f"XML classes {sorted(set(names))} != mask classes {sorted(in_mask)}"))
    return {"images": len(ids), "masks": masks, "splits": [p.stem for p in lists], "problems": problems}
