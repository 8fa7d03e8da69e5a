"""One writer per output folder, and the temporary files of writers that died.

A job that writes into a folder for a long time (an extraction's rawframes folder, a training run's
``models/<run>/<stream>/``, the report folder of ``python -m utils.run``) holds that folder's lock
file, ``<folder>/.lock``, for as long as it writes: a second job on the same folder is refused with
an error that names the lock file and the process holding it, instead of mixing its output with the
first one's. The lock is ``fcntl.flock`` on an open file: the kernel releases it when the process
ends, however it ends (SIGKILL, an out-of-memory kill, a closed notebook kernel), so a killed run
never leaves it stuck and there is nothing to delete by hand. The file stays (deleting a lock file
that another process may be opening is a race); it records the pid, host, time and command of its
last exclusive holder, for the message. Parallel parts of one job (extraction shards, ``--shard
K/N``) share the lock (``shared=True``); an exclusive holder excludes them and they exclude it.
Linux's NFS client implements ``flock`` with NFS byte-range locks, so the lock holds across nodes.

A folder that cannot be written (read-only) gets no lock file: nobody can write into it, so there is
nothing to protect. Within one process the lock is re-entrant (a notebook kernel that trains the
same folder twice in a row holds it once).

Temporary files are named ``.<name>.tmp-<pid>`` by their writer; :func:`remove_dead_temporaries`
deletes those of processes that no longer run (a killed run's half-written score file, say).
"""
from __future__ import annotations

import contextlib
import errno
import os
import re
import socket
import sys
import time
from pathlib import Path
from typing import Iterator

try:
    import fcntl
except ImportError:          # Windows: msvcrt's byte-range lock (exclusive only)
    fcntl = None
    import msvcrt

LOCK_FILE = ".lock"
_TMP_NAME = re.compile(r"^\..+\.tmp-(\d+)(\.[A-Za-z0-9]+)?$")   # .<name>.tmp-<pid>[.<suffix>]
_held: dict[str, "FolderLock"] = {}     # resolved folder -> this process's lock on it


class FolderBusy(RuntimeError):
    """Another process writes into the folder; the message names the lock file and that process."""


class FolderLock:
    """This process's hold on ``<folder>/.lock`` (see :func:`hold`); ``release()`` gives it back."""

    def __init__(self, folder: Path, fd: int | None, shared: bool):
        self.folder, self.fd, self.shared, self.count = folder, fd, shared, 1

    def release(self) -> None:
        self.count -= 1
        if self.count > 0:
            return
        _held.pop(str(self.folder), None)
        if self.fd is not None:
            os.close(self.fd)          # closing the file releases the lock
            self.fd = None


def hold(folder: str | os.PathLike, what: str, *, shared: bool = False) -> FolderLock:
    """Take the lock of ``folder`` (created if missing) for ``what`` (e.g. "extraction"), or raise.

    :class:`FolderBusy` when another process holds it (exclusively, or at all for an exclusive
    request); the message is ``<folder>/.lock: ...; what to do``. Call ``release()`` when done, or
    use :func:`one_writer`.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    key = str(folder.resolve())
    if key in _held:
        _held[key].count += 1
        return _held[key]
    path = folder / LOCK_FILE
    fd = _open_lock_file(path)
    if fd is None:                 # a read-only folder: no other writer either
        lock = FolderLock(Path(key), None, shared)
        _held[key] = lock
        return lock
    try:
        _lock(fd, shared)
    except BlockingIOError:
        holder = _describe_holder(fd, path)
        os.close(fd)
        raise FolderBusy(f"{path}: {holder} is writing into {folder}, so a {what} here now would mix "
                         f"its files with that one's; wait until it has finished (or stop it), then run "
                         f"this again. A run that was killed releases the lock by itself.") from None
    if not shared:
        record = (f"pid {os.getpid()} on {socket.gethostname()}, since {time.strftime('%Y-%m-%d %H:%M:%S')}: "
                  f"{what}: {' '.join(sys.argv)}\n")
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, record.encode("utf-8", "backslashreplace"), 0)
        except OSError:            # a full disk: the lock holds all the same, the record is empty
            pass
    lock = FolderLock(Path(key), fd, shared)
    _held[key] = lock
    return lock


@contextlib.contextmanager
def one_writer(folder: str | os.PathLike, what: str, *, shared: bool = False) -> Iterator[FolderLock]:
    """``with one_writer(folder, "training run"):`` holds the folder's lock for the block (see :func:`hold`)."""
    lock = hold(folder, what, shared=shared)
    try:
        yield lock
    finally:
        lock.release()


def _open_lock_file(path: Path) -> int | None:
    try:
        return os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as error:
        if error.errno not in (errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC, errno.EDQUOT):
            raise
    try:            # cannot create or write it: lock the existing file read-only, if there is one
        return os.open(path, os.O_RDONLY)
    except OSError:
        return None


def _lock(fd: int, shared: bool) -> None:
    if fcntl is not None:
        fcntl.flock(fd, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
        return
    try:
        msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
    except OSError:
        raise BlockingIOError(errno.EWOULDBLOCK, "locked") from None


def _describe_holder(fd: int, path: Path) -> str:
    """Who holds the lock: shards (a shared lock) or the process recorded in the file."""
    if fcntl is not None:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            fcntl.flock(fd, fcntl.LOCK_UN)
            return "another run of parallel parts (e.g. extraction shards, which share the folder)"
        except BlockingIOError:
            pass
    try:
        record = path.read_text(encoding="utf-8", errors="replace").strip()
    except OSError:
        record = ""
    return f"another process ({record})" if record else "another process"


# ----------------------------------------------------------------------------------------
# Can this process write there at all?
# ----------------------------------------------------------------------------------------
class FolderNotWritable(OSError):
    """A path that is not a folder, or a folder that cannot be written; ``errno`` says why (ENOTDIR: a file)."""


def check_writable(folder: str | os.PathLike) -> None:
    """Raise :class:`FolderNotWritable` (``"<folder>: is a file, not a folder"`` or ``"<folder>: cannot be
    written (<reason>)"``) unless ``folder`` is, or can be made, a folder this process writes into:
    it is created if missing, and an empty probe file is written into it and removed."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        error = FolderNotWritable(f"{folder}: is a file, not a folder")
        error.errno = errno.ENOTDIR
        raise error
    probe = folder / f".write-test.tmp-{os.getpid()}"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe.write_bytes(b"")
    except OSError as cause:
        error = FolderNotWritable(f"{folder}: cannot be written ({cause.strerror or cause})")
        error.errno = cause.errno
        raise error from None
    finally:
        try:
            probe.unlink(missing_ok=True)
        except OSError:
            pass


# ----------------------------------------------------------------------------------------
# Temporary files of writers that died
# ----------------------------------------------------------------------------------------
def pid_alive(pid_text: str) -> bool:
    """Whether process ``pid_text`` (another one than this) runs; a zombie (dead, not reaped yet) does not."""
    if not pid_text.isdigit() or int(pid_text) == os.getpid():
        return False
    try:
        os.kill(int(pid_text), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except OSError:            # Windows: no such process
        return False
    try:   # Linux: state is the field after "pid (comm)"; Z/X = exited (kill(pid, 0) still succeeds)
        state = Path(f"/proc/{pid_text}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True
    return state not in ("Z", "X")


def remove_dead_temporaries(folder: str | os.PathLike) -> list[Path]:
    """Delete the files ``.<name>.tmp-<pid>`` in ``folder`` whose writer no longer runs; returns them."""
    removed = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    for entry in entries:
        match = _TMP_NAME.match(entry.name)
        if match and not pid_alive(match[1]):
            try:
                if entry.is_file(follow_symlinks=False):
                    os.unlink(entry.path)
                    removed.append(Path(entry.path))
            except OSError:
                pass
    return removed
