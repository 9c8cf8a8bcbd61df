"""A real size-limited filesystem (a tmpfs mounted for one test) to fill up and free again."""

from __future__ import annotations

import errno
import os
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

# Filler is written in shrinking blocks so that the very last free byte is taken too.
BLOCK_SIZES = (1024 * 1024, 64 * 1024, 4096, 512, 1)


class SmallFilesystem:
    """A mounted tmpfs; `fill()` takes every free byte with filler files, `release()` frees
    them. Anything else on it (a database, its -wal and -shm) is left alone."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._fillers: list[Path] = []

    def free_bytes(self) -> int:
        stats = os.statvfs(self.root)
        return stats.f_bavail * stats.f_frsize

    def fill(self) -> int:
        """Write filler until the kernel answers ENOSPC; returns the bytes it took."""
        path = self.root / f"filler-{len(self._fillers)}"
        self._fillers.append(path)
        written = 0
        with open(path, "wb", buffering=0) as handle:
            for size in BLOCK_SIZES:
                block = bytes(size)
                while True:
                    try:
                        written += handle.write(block) or 0
                    except OSError as exc:
                        if exc.errno != errno.ENOSPC:
                            raise
                        break
        return written

    def release(self) -> None:
        """Space returns: delete every filler file."""
        for path in self._fillers:
            path.unlink(missing_ok=True)
        self._fillers.clear()


@contextmanager
def small_filesystem(root: Path, size_bytes: int) -> Iterator[SmallFilesystem]:
    """Mount a tmpfs of `size_bytes` at `root` (needs root: CAP_SYS_ADMIN), unmount after.

    Stop every process holding files on it before leaving the block.
    """
    root.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size_bytes},mode=0700", "tmpfs", str(root)],
        capture_output=True, text=True, timeout=30, check=False)
    if mounted.returncode != 0 or not os.path.ismount(root):
        pytest.fail(f"cannot mount a {size_bytes}-byte tmpfs at {root} (run the suite as "
                    f"root, with CAP_SYS_ADMIN): {mounted.stderr.strip()}")
    try:
        yield SmallFilesystem(root)
    finally:
        _unmount(root)


def _unmount(root: Path) -> None:
    deadline = time.monotonic() + 10
    while True:
        result = subprocess.run(["umount", str(root)], capture_output=True, text=True,
                                timeout=30, check=False)
        if result.returncode == 0:
            return
        if time.monotonic() > deadline:  # a process still holds a file there
            raise AssertionError(f"cannot unmount {root}: {result.stderr.strip()}")
        time.sleep(0.1)
