"""User-facing errors.

Anything a user can cause (a missing folder, a typo in a config key, a corrupt shard) is raised as a
:class:`CpnError` whose message is one line naming the file or key at fault. The CLI prints that
line and exits non-zero; everything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class CpnError(Exception):
    """An error caused by the user's input; its message is shown as one line."""

    exit_code = 1


class ConfigError(CpnError):
    """An invalid run configuration (unknown key, wrong type, value out of range)."""

    exit_code = 2
