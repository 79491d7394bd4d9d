"""Reading PyTorch files without running code: weights files, and the pickle-based files of a checkpoint
folder (Accelerate's ``save_state``, a DeepSpeed engine checkpoint).

``torch.load(weights_only=False)`` unpickles with ``pickle``, which calls any function the file names
(``os.system`` …). Every PyTorch file cpn-dist reads goes through here:

- :func:`load_torch_file` loads with ``weights_only=True`` (torch's unpickler that builds tensors and
  plain containers only). A file that needs more is refused in one line naming the globals it references
  — listed by ``torch.serialization.get_unsafe_globals_in_checkpoint``, which disassembles the pickle
  without running it — unless the caller opts in (``allow_pickle``: the ``--allow-pickle`` flag, the
  ``model.allow_pickle`` key), which loads it in full and runs what it holds. A file torch cannot read
  at all (random bytes, a truncated file, another format) is "not a PyTorch checkpoint".
- :func:`check_checkpoint_folder` runs before a training run resumes a checkpoint folder (DeepSpeed
  loads its ``*.pt`` files with ``weights_only=False``) and when one is read as weights: every
  pickle-based file in it may reference only torch's weights-only globals and :data:`CHECKPOINT_GLOBALS`;
  otherwise the folder is refused naming the file.

``weights_only=True`` is safe from torch 2.6 on (CVE-2025-32434), the lowest torch cpn-dist installs with.
"""

from __future__ import annotations

import logging
import pickle
import re
from pathlib import Path

from cpn_dist.errors import CpnError

log = logging.getLogger(__name__)

ALLOW_PICKLE_HINT = "Load it only if you trust its source: --allow-pickle (model.allow_pickle=true in a run config)"

# What our checkpoints need beyond torch's weights-only allowlist, found by scanning real ones (Accelerate
# under DDP, DeepSpeed ZeRO-2: tests/test_no_code_runs.py).
CHECKPOINT_GLOBALS = frozenset({
    # numpy arrays and dtypes: the numpy RNG state in Accelerate's random_states_N.pkl (Accelerate's own
    # TORCH_SAFE_GLOBALS)
    "numpy.core.multiarray._reconstruct", "numpy._core.multiarray._reconstruct", "numpy.ndarray", "numpy.dtype",
    "numpy.dtypes.UInt32DType", "_codecs.encode", "codecs.encode",
    # DeepSpeed's ZeRO optimizer state: its loss scaler (static in fp32/bf16, dynamic in fp16), the ZeRO
    # stage, and the parameter slice addresses
    "deepspeed.runtime.fp16.loss_scaler.LossScaler", "deepspeed.runtime.fp16.loss_scaler.DynamicLossScaler",
    "deepspeed.runtime.zero.config.ZeroStageEnum", "deepspeed.utils.tensor_fragment.fragment_address",
})  # fmt: skip

# The files of a checkpoint folder that Accelerate and DeepSpeed read with torch.load.
PICKLED_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".ckpt")

# The global a weights-only load stopped at, as torch's message names it ("… GLOBAL posix.system …").
_GLOBAL_IN_MESSAGE = re.compile(r"\bGLOBAL ([A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*)")


# What torch's weights-only unpickler found wrong, inside its long message ("… WeightsUnpickler error: …").
_UNPICKLER_DETAIL = re.compile(r"WeightsUnpickler error:\s*([^\n]+)")


def _reason(exc: BaseException) -> str:
    """Why torch could not read a file, in one line (without torch's advice to load it in full)."""
    detail = _UNPICKLER_DETAIL.search(str(exc))
    if detail:
        return f"unreadable pickle: {detail[1].strip()}"
    return f"{type(exc).__name__}: {(str(exc).strip().splitlines() or [''])[0]}"


def not_a_checkpoint(path: str | Path, exc: BaseException) -> CpnError:
    """The one-line error of a file torch cannot read."""
    return CpnError(f"{path}: not a PyTorch checkpoint ({_reason(exc)})")


def needs_pickle(path: str | Path, names: list[str]) -> CpnError:
    """The one-line refusal of a file whose pickle references ``names`` (globals weights-only refuses)."""
    shown = ", ".join(names[:4]) + (f" and {len(names) - 4} more" if len(names) > 4 else "")
    return CpnError(f"{path}: needs full unpickling, which would run code stored in the file (it references "
                    f"{shown}); refused. {ALLOW_PICKLE_HINT}")  # fmt: skip


def unsafe_globals(path: str | Path, exc: BaseException) -> list[str]:
    """The globals that made a weights-only load of ``path`` fail with ``exc``; [] when it failed for
    another reason (the file is no pickle torch can read)."""
    import torch

    if not isinstance(exc, pickle.UnpicklingError):
        return []
    try:
        return sorted(torch.serialization.get_unsafe_globals_in_checkpoint(path))
    except Exception:  # not a zip file (torch's legacy format), or a pickle the scan cannot read
        return _GLOBAL_IN_MESSAGE.findall(str(exc))[:1]


def load_torch_file(path: str | Path, allow_pickle: bool = False):
    """The object a ``torch.save`` file holds, loaded on the CPU with ``weights_only=True``. A file that
    needs full unpickling is refused (:func:`needs_pickle`) unless ``allow_pickle``, which loads it in
    full — running any code stored in it; one that torch cannot read is :func:`not_a_checkpoint`."""
    import torch

    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a truncated or foreign file may fail in any way
        names = unsafe_globals(path, exc)
        if not names:
            raise not_a_checkpoint(path, exc) from None
    if not allow_pickle:
        raise needs_pickle(path, names)
    log.warning("%s: loading with full unpickling (allow_pickle): code stored in the file runs", path)
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:
        raise not_a_checkpoint(path, exc) from None


def _pickled_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.suffix in PICKLED_SUFFIXES and p.is_file())


def check_checkpoint_folder(folder: str | Path, allow_pickle: bool = False) -> None:
    """Refuse ``folder`` in one line naming the file unless every pickle-based file in it references only
    torch's weights-only globals and :data:`CHECKPOINT_GLOBALS` (scanned, nothing is unpickled). With
    ``allow_pickle`` nothing is checked: the loaders that follow run any code stored there."""
    import torch

    if allow_pickle:
        log.warning("%s: not checked for code stored in its files (allow_pickle)", folder)
        return
    for path in _pickled_files(Path(folder)):
        try:
            found = torch.serialization.get_unsafe_globals_in_checkpoint(path)
        except Exception as exc:  # not a zip file as torch.save writes, or a pickle the scan cannot read
            raise not_a_checkpoint(path, exc) from None
        extra = sorted(set(found) - CHECKPOINT_GLOBALS)
        if extra:
            raise needs_pickle(path, extra)
