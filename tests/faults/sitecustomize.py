"""A simulated full disk for tests, loaded into a subprocess by PYTHONPATH=tests/faults.

With QLORA_TEST_FULL_DISK_AT=NAME (or NAME:K) set, the disk "fills" at the first (K-th)
os.replace onto a file or folder named NAME: from then on every os.replace fails with ENOSPC,
as the atomic writes of a full disk do, until a deletion frees at least FREES_BYTES (or
QLORA_TEST_FULL_DISK_FREES: the way real space comes back). Without the variable this file does nothing.

Tests in the same process use `FullDisk(...).install(monkeypatch)` instead.

With QLORA_TEST_KILL_AT=NAME (or NAME:K) set, the process sends itself SIGKILL at the first (K-th)
os.replace onto NAME, before it happens: a kill -9 at exactly that point of a run.
"""

from __future__ import annotations

import errno
import os

FREES_BYTES = 64 * 1024  # smaller deletions (a temp file of a failed write) free no real room
ENV = "QLORA_TEST_FULL_DISK_AT"
FREES_ENV = "QLORA_TEST_FULL_DISK_FREES"  # bytes a deletion must free to make room (default FREES_BYTES)


class FullDisk:
    def __init__(self, at: str, frees_bytes: int = FREES_BYTES) -> None:
        name, _, count = at.partition(":")
        self.name, self.count, self.frees_bytes = name, int(count or 1), frees_bytes
        self.seen = 0
        self.full = False
        self.failures = 0
        self._replace, self._unlink = os.replace, os.unlink

    def replace(self, src, dst, *args, **kwargs):
        if not self.full and os.path.basename(os.fspath(dst)) == self.name:
            self.seen += 1
            self.full = self.seen == self.count
        if self.full:
            self.failures += 1
            raise OSError(errno.ENOSPC, "No space left on device", os.fspath(dst))
        return self._replace(src, dst, *args, **kwargs)

    def unlink(self, path, *args, **kwargs):
        try:
            size = os.lstat(path, dir_fd=kwargs.get("dir_fd")).st_size
        except OSError:
            size = 0
        self._unlink(path, *args, **kwargs)
        if self.full and size >= self.frees_bytes:
            self.full = False

    def install(self, monkeypatch=None) -> "FullDisk":
        if monkeypatch is None:
            os.replace, os.unlink = self.replace, self.unlink
            os.remove = self.unlink
        else:
            monkeypatch.setattr(os, "replace", self.replace)
            monkeypatch.setattr(os, "unlink", self.unlink)
            monkeypatch.setattr(os, "remove", self.unlink)
        return self


KILL_ENV = "QLORA_TEST_KILL_AT"


def kill_at(at: str) -> None:
    import signal

    name, _, count = at.partition(":")
    remaining = [int(count or 1)]
    real_replace = os.replace

    def replace(src, dst, *args, **kwargs):
        if os.path.basename(os.fspath(dst)) == name:
            remaining[0] -= 1
            if remaining[0] == 0:
                os.kill(os.getpid(), signal.SIGKILL)
        return real_replace(src, dst, *args, **kwargs)

    os.replace = replace


if os.environ.get(KILL_ENV):
    kill_at(os.environ[KILL_ENV])
if os.environ.get(ENV):
    FullDisk(os.environ[ENV], int(os.environ.get(FREES_ENV) or FREES_BYTES)).install()
