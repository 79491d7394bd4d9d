"""One run per folder: an exclusive lock on ``{folder}/.lock``.

A training run locks its ``output.dir``, a pipeline its ``work_dir``, before writing anything there.
The lock is ``flock(LOCK_EX | LOCK_NB)`` on the file, which holds the holder's pid, host and start
time. The kernel releases it when the holder exits or dies (SIGKILL included), so a crashed run never
leaves a stale lock; a second run into the same folder fails at once, naming the holder.

Forked children (DataLoader workers, CRF and packing pools) close their inherited copy of the lock's
descriptor, so a dead holder's orphaned workers do not keep the folder locked. Under a multi-process
launch only the main process locks (:func:`lock_on_main`); the others learn its outcome.

On a filesystem without ``flock`` support (some network mounts) the run warns and goes on unlocked.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import socket
import time
from pathlib import Path

from cpn_dist.errors import CpnError, MirroredError

log = logging.getLogger(__name__)

LOCK_NAME = ".lock"
_HELD: set[int] = set()  # descriptors of the locks this process holds


def _close_inherited() -> None:
    for fd in _HELD:
        with contextlib.suppress(OSError):
            os.close(fd)  # the child's copy only: the parent keeps the lock
    _HELD.clear()


os.register_at_fork(after_in_child=_close_inherited)


def _alive_here(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class DirLock:
    """The lock of one folder (``what`` names the folder in messages, e.g. ``output.dir``)."""

    def __init__(self, folder: str | Path, what: str = "folder"):
        self.folder, self.what = Path(folder), what
        self.path = self.folder / LOCK_NAME
        self.fd: int | None = None

    def acquire(self, grace: float = 15.0, record: bool = True) -> DirLock:
        """Take the lock or raise a one-line CpnError naming the holder's pid and host. A holder that
        is no longer running on this host (its forked children may still be exiting) is waited for
        up to ``grace`` seconds. ``record=False``: leave the file as it is until :meth:`record`
        (a run that may find it has nothing to do changes no file)."""
        if self.folder.exists() and not self.folder.is_dir():
            raise CpnError(f"{self.folder}: exists and is not a folder ({self.what})")
        self.folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        deadline = time.monotonic() + grace
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                holder = os.pread(fd, 512, 0).decode(errors="replace").strip()
                if self._holder_gone(holder) and time.monotonic() < deadline:
                    time.sleep(0.2)
                    continue
                os.close(fd)
                raise CpnError(f"{self.folder}: in use by another run ({holder or 'holder unknown'}); one run per "
                               f"{self.what}: wait for it to end, or choose another {self.what}") from None
            except OSError as exc:
                if exc.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
                    os.close(fd)
                    raise
                log.warning("%s: this filesystem cannot lock (%s); make sure no other run uses this %s",
                            self.path, exc.strerror, self.what)
                os.close(fd)
                return self
        self.fd = fd
        _HELD.add(fd)
        if record:
            self.record()
        return self

    def record(self) -> None:
        """Write this process's pid, host and start time into the held lock file (what a refused run names)."""
        if self.fd is not None:
            os.ftruncate(self.fd, 0)
            when = time.strftime("%Y-%m-%d %H:%M:%S")
            os.pwrite(self.fd, f"pid {os.getpid()} on {socket.gethostname()}, since {when}\n".encode(), 0)

    @staticmethod
    def _holder_gone(holder: str) -> bool:
        """Whether the recorded holder is a process of this host that no longer exists."""
        parts = holder.split()
        if len(parts) < 4 or parts[0] != "pid" or parts[2] != "on" or not parts[1].isdigit():
            return False
        return parts[3].rstrip(",") == socket.gethostname() and not _alive_here(int(parts[1]))

    def release(self) -> None:
        if self.fd is not None:
            _HELD.discard(self.fd)
            os.close(self.fd)  # closing the last descriptor releases the flock
            self.fd = None

    def __enter__(self) -> DirLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def lock_on_main(folder: str | Path, what: str, main: bool, world: int, record: bool = True) -> DirLock | None:
    """Under ``world`` processes: the main process takes the lock, every process learns whether it got
    it (one collective), and a refusal is a CpnError on every process (shown once, by the main one).
    ``record``: see :meth:`DirLock.acquire`."""
    lock, error = None, None
    if main:
        try:
            lock = DirLock(folder, what).acquire(record=record)
        except CpnError as exc:
            error = str(exc)
    error = share_from_main(error, world)
    if error is not None:
        raise CpnError(error) if main else MirroredError(error)
    return lock


def share_from_main(value, world: int):
    """``value`` of the main process, on every process (a no-op with one process)."""
    if world <= 1:
        return value
    from accelerate.utils import broadcast_object_list

    box = [value]
    broadcast_object_list(box, from_process=0)
    return box[0]
