"""The development delivery backend: each message written as an .eml file in a folder."""

from __future__ import annotations

import os
from pathlib import Path


def write_eml(outbox_dir: Path, queue_id: int, message: bytes) -> Path:
    """Write atomically (temporary name, fsync, rename) so a reader never sees half a file."""
    outbox_dir.mkdir(parents=True, exist_ok=True)
    final = outbox_dir / f"{queue_id:010d}.eml"
    temporary = outbox_dir / f".{queue_id:010d}.eml.tmp"
    with open(temporary, "wb") as handle:
        handle.write(message)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, final)
    return final
