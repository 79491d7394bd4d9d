"""User-facing errors.

Anything a user can cause (a missing folder, a typo in a config key, a corrupt shard) is raised as a
:class:`CpnError` whose message is one line naming the file or key at fault. The CLI prints that
line and exits non-zero; everything else is a bug and keeps its traceback.

A CpnError raised inside a DataLoader worker reaches the main process re-raised by PyTorch as
``CpnError("Caught CpnError in DataLoader worker process N.\\nOriginal Traceback …")``; the constructor
keeps only the original one-line message, so a corrupt shard read by a worker is reported like one
read in the main process.
"""

from __future__ import annotations

import re

_WORKER_PREFIX = re.compile(r"^Caught \w+ in DataLoader worker process \d+\.\nOriginal Traceback")
# an object's repr inside a library's message: "<_io.BytesIO object at 0x7f…>", "@ <_io.BufferedReader name=…>"
_ADDRESS = re.compile(r"\s*(?:@\s*)?<(?:_io\.[^<>]*|[^<>]*\bat 0x[0-9a-fA-F]+[^<>]*)>")


def _original_message(text: str) -> str:
    """The last line of a worker's formatted traceback, without its ``module.Class: `` prefix."""
    last = text.rstrip().splitlines()[-1]
    return re.sub(r"^[\w.]+(?:Error|Exception)?: ", "", last, count=1)


def without_addresses(text: str) -> str:
    """``text`` without object reprs such as ``<_io.BytesIO object at 0x7fb7…>`` (they differ per run)."""
    return _ADDRESS.sub("", text).strip()


class CpnError(Exception):
    """An error caused by the user's input; its message is shown as one line."""

    exit_code = 1

    def __init__(self, *args):
        if len(args) == 1 and isinstance(args[0], str) and _WORKER_PREFIX.match(args[0]):
            args = (_original_message(args[0]),)
        super().__init__(*args)


class ConfigError(CpnError):
    """An invalid run configuration (unknown key, wrong type, value out of range)."""

    exit_code = 2


class MirroredError(CpnError):
    """A CpnError of the main process, raised on the other processes of a multi-process run so they
    stop too; the main process shows the message, these exit quietly with the same code."""

    shown_by_main = True
