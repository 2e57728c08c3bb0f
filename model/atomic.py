"""Replacing a directory or a file atomically: write it beside the target, fsync, swap.

The one way the weights writer and the trainer's run state write a folder, and the one way a
single file is rewritten (a weights' metrics, a downloaded split, a trimmed training log):
readers see the old version or the new one, never a half-written mix, and a failure leaves at
most a hidden temporary beside the target.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path


def fsync_file(path: Path) -> None:
    """Flush a written file to disk so a rename after it cannot expose an empty file."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: Path) -> None:
    """Persist a directory's entries (the renames in it); best effort where unsupported."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _swap(src: Path, dst: Path) -> None:
    """Move the complete directory src to dst, replacing an existing dst."""
    if not dst.exists():
        os.replace(src, dst)
        return
    # rename() cannot replace a non-empty directory, so the old one steps aside first; dst
    # is then briefly absent but never half-written, and the old copy is restored on failure
    old = Path(tempfile.mkdtemp(prefix=f".{dst.name}.old-", dir=dst.parent))
    old.rmdir()
    os.replace(dst, old)
    try:
        os.replace(src, dst)
    except BaseException:
        os.replace(old, dst)
        raise
    shutil.rmtree(old, ignore_errors=True)


def replace_dir(target: Path, write: Callable[[Path], None]) -> None:
    """Call write(tmp) on a fresh folder beside target, fsync its files, then swap it in."""
    target = Path(target)
    parent = target.parent
    parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=parent))
    try:
        # mkdtemp makes a 0700 directory; the service may read it as another user
        tmp.chmod(0o755)
        write(tmp)
        for f in tmp.iterdir():
            if f.is_file():
                fsync_file(f)
        _swap(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    fsync_dir(parent)


def replace_file(path: Path, data: bytes) -> None:
    """Write data to a temporary file beside path, fsync it, and rename it over path (0644)."""
    path = Path(path)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.tmp-", dir=path.parent)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        # mkstemp makes the file private; these files are read by others (the service, users)
        tmp.chmod(0o644)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
