"""Write checkpoints so that a crash during the write never leaves a damaged file."""

from __future__ import annotations

import io
import logging
import os
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.plugins import TorchCheckpointIO

log = logging.getLogger(__name__)


class AtomicCheckpointIO(TorchCheckpointIO):
    """Save each checkpoint to a temporary file next to its target, then rename it into place.

    Lightning 2.6's ``TorchCheckpointIO`` already writes through an fsspec transaction, but for
    local paths fsspec creates the temporary file with ``tempfile.mkstemp()`` in the system
    temporary folder and moves it with ``shutil.move``. When that folder lies on another file
    system than the run directory (a ``tmpfs`` ``/tmp``, a node-local disk on a cluster), the move
    degrades to a copy into the target, which a kill can interrupt half-way. Here the temporary
    file sits in the target's own folder, is flushed to disk with ``fsync``, and replaces the
    target with ``os.replace``. POSIX makes that rename atomic within one file system, so a
    reader finds either the old complete file or the new complete file.

    Remote paths (``s3://``, ``gs://``, ...) go to Lightning's implementation unchanged.
    """

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: str | Path, storage_options: Any | None = None
    ) -> None:
        if "://" in str(path):
            super().save_checkpoint(checkpoint, path, storage_options)
            return
        if storage_options is not None:
            raise TypeError(
                f"storage_options={storage_options!r} is not supported by {type(self).__name__}"
            )

        buffer = io.BytesIO()
        torch.save(checkpoint, buffer)
        write_atomically(Path(path), buffer.getvalue())


def write_atomically(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` in one step; the partial file is removed if the write fails."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(temporary, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    _fsync_directory(path.parent)
    log.debug("Saved checkpoint %s (%d bytes)", path, len(data))


def _fsync_directory(directory: Path) -> None:
    # The rename itself is durable only once the directory entry reaches the disk.
    try:
        descriptor = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(descriptor)
    except OSError:
        pass
    finally:
        os.close(descriptor)
