"""Files that several processes share: atomic replacement and a writer lock per folder.

:func:`atomic_write` writes a file through a temporary file of its own (a unique
name in the same folder), flushes it to disk and renames it over the target, so a
reader opens either the old or the new file, never half of one, and two writers
never write into the same temporary file.

:class:`WriterLock` lets one process at a time write a folder (an embedded store,
an ingest state folder). It is an advisory ``flock(2)`` lock on ``FOLDER/.writer.lock``:
the kernel drops it when the holder exits, however it exits (a SIGKILL leaves no
stale lock). The holder writes its pid into the lock file so that a writer that
gives up can say who holds it. ``fcntl`` is used directly rather than a lock
library because the holder's pid must be readable by the waiter, which the lock
libraries' truncating lock files do not keep.
"""
from __future__ import annotations

import errno
import fcntl
import os
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType

LOCK_NAME = ".writer.lock"
#: Prefix of the temporary files :func:`atomic_write` makes (stale ones are removed by :func:`remove_stale_temporaries`).
TEMP_PREFIX = ".tmp-"


class StoreLockedError(RuntimeError):
    """Another process holds a folder's writer lock and did not release it in time."""

    def __init__(self, folder: Path, holder: int | None, waited: float) -> None:
        who = f"process {holder}" if holder is not None else "another process"
        super().__init__(
            f"{folder} is being written by {who} (lock {folder / LOCK_NAME}); gave up after waiting {waited:g} s. "
            "Wait for that process to finish, or raise the lock timeout."
        )
        self.folder, self.holder, self.waited = folder, holder, waited


def atomic_write(path: Path, write: Callable[[Path], object]) -> None:
    """Write ``path`` atomically: ``write(tmp)`` fills a fresh temporary file, which replaces ``path``.

    The temporary file is fsynced before the rename and the folder after it, so a
    crash leaves the old or the new content, and readers never see a partial file.
    On any error the temporary file is removed and ``path`` is untouched.
    """
    path = Path(path)
    fd, name = tempfile.mkstemp(prefix=f"{TEMP_PREFIX}{path.name}.", dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        write(tmp)
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def atomic_write_text(path: Path, text: str) -> None:
    """:func:`atomic_write` of a UTF-8 text."""
    atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # pragma: no cover - a folder we just wrote into is readable
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover - some file systems refuse fsync on folders
        pass
    finally:
        os.close(fd)


def remove_stale_temporaries(folder: Path) -> int:
    """Delete temporary files of :func:`atomic_write` left in ``folder`` by a killed writer.

    Call only while holding the folder's :class:`WriterLock` (no other writer can be
    filling one). Returns how many were removed.
    """
    removed = 0
    for tmp in Path(folder).glob(f"{TEMP_PREFIX}*"):
        try:
            tmp.unlink()
            removed += 1
        except FileNotFoundError:  # pragma: no cover - removed meanwhile
            pass
    return removed


class WriterLock:
    """An exclusive, re-entrant writer lock on ``folder`` (see the module docstring).

    Args:
        folder: the folder to lock (created when missing).
        timeout: seconds to wait for another holder before :class:`StoreLockedError`;
            0 = fail at once, ``None`` = wait forever.
        poll: seconds between two attempts while waiting.
        on_acquire: called once each time the lock is taken (not on re-entry), e.g.
            to clean up what a killed holder left behind.

    Use as a context manager; the thread that holds it may enter again (re-entrant).
    Other threads of the process wait like other processes do, and two ``WriterLock``
    objects on one folder exclude each other even in one process.
    """

    def __init__(self, folder: str | os.PathLike[str], timeout: float | None = 60.0, poll: float = 0.05,
                 on_acquire: Callable[[], object] | None = None) -> None:
        if timeout is not None and not timeout >= 0:
            raise ValueError(f"lock timeout must be >= 0 seconds or None, got {timeout!r}")
        self.folder = Path(folder)
        self.timeout = timeout
        self.poll = poll
        self.on_acquire = on_acquire
        self._fd: int | None = None
        self._depth = 0
        self._threads = threading.RLock()

    @property
    def path(self) -> Path:
        return self.folder / LOCK_NAME

    @property
    def held(self) -> bool:
        return self._depth > 0

    def acquire(self) -> None:
        start = time.monotonic()
        if not self._threads.acquire(timeout=-1 if self.timeout is None else self.timeout):
            raise StoreLockedError(self.folder, os.getpid(), self.timeout or 0.0)
        if self._depth:
            self._depth += 1
            return
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except BaseException:
            self._threads.release()
            raise
        try:
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except OSError as exc:
                    if exc.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                        raise
                waited = time.monotonic() - start
                if self.timeout is not None and waited >= self.timeout:
                    raise StoreLockedError(self.folder, _read_pid(fd), round(waited, 3))
                time.sleep(self.poll)
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        except BaseException:
            os.close(fd)
            self._threads.release()
            raise
        self._fd = fd
        self._depth = 1
        if self.on_acquire is not None:
            try:
                self.on_acquire()
            except BaseException:
                self.release()
                raise

    def release(self) -> None:
        if not self._depth:
            raise RuntimeError(f"{self.path}: released more often than acquired")
        self._depth -= 1
        try:
            if self._depth:
                return
            fd, self._fd = self._fd, None
            assert fd is not None
            try:
                os.ftruncate(fd, 0)
            finally:
                os.close(fd)  # closing the descriptor releases the flock
        finally:
            self._threads.release()

    def __enter__(self) -> WriterLock:
        self.acquire()
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None, tb: TracebackType | None) -> None:
        self.release()


def _read_pid(fd: int) -> int | None:
    try:
        text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
    except OSError:  # pragma: no cover
        return None
    return int(text) if text.isdigit() else None
