"""Crash-safe writes: a file or a whole directory is replaced in one step, so readers see the old or the new one.

New content is written beside its destination under a temporary name, flushed to disk, then renamed into place;
temporaries left by a killed process carry its PID and are removed by the next writer of the same destination.
"""
from __future__ import annotations

import ctypes
import errno
import logging
import os
import re
import shutil
from pathlib import Path

log = logging.getLogger(__name__)

_RENAME_EXCHANGE = 2   # renameat2 flag (Linux >= 3.15): swap two paths atomically
_AT_FDCWD = -100


def fsync_file(path: str | Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def fsync_dir(path: str | Path) -> None:
    """Make a directory's entries (creations, renames) durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(path: str | Path) -> None:
    """fsync every file and directory under `path` (itself included)."""
    for root, dirs, files in os.walk(path):
        for name in files:
            fsync_file(Path(root) / name)
        fsync_dir(root)


def temp_path(dest: str | Path, kind: str = "tmp") -> Path:
    """`.<name>.<kind>-<pid>` beside `dest`: hidden, and recognisable as this process's by `remove_stale`."""
    dest = Path(dest)
    return dest.with_name(f".{dest.name}.{kind}-{os.getpid()}")


def write_bytes(path: str | Path, data: bytes) -> Path:
    """Replace `path` with `data`: a temporary file, fsync, rename, fsync of the directory."""
    path = Path(path)
    tmp = temp_path(path)
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)
    return path


def write_text(path: str | Path, text: str) -> Path:
    return write_bytes(path, text.encode())


def _exchange(a: Path, b: Path) -> bool:
    """Swap two existing paths in one rename; False where the kernel or file system cannot."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
        return False
    raise OSError(err, os.strerror(err), str(b))


def replace_dir(src: str | Path, dest: str | Path) -> Path:
    """Put the complete directory `src` at `dest`, replacing what was there, and delete the old content.

    At every instant `dest` is the old complete directory or the new one: where the kernel can, the two are
    swapped in one rename; elsewhere the old one is first renamed aside, and `remove_stale` puts it back if
    the process dies before the new one is in place.
    """
    src, dest = Path(src), Path(dest)
    fsync_tree(src)
    if not dest.exists():
        os.replace(src, dest)
    elif _exchange(src, dest):
        shutil.rmtree(src)               # now holds the old content
    else:
        old = temp_path(dest, "old")
        os.replace(dest, old)
        os.replace(src, dest)
        shutil.rmtree(old)
    fsync_dir(dest.parent)
    return dest


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return False                      # ours from an earlier process with the same PID: nothing writes it now
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale(dest: str | Path) -> list[Path]:
    """Remove the temporaries of `dest` left by processes that no longer run; returns what was removed.

    An old directory set aside by an interrupted `replace_dir` is restored to `dest` when `dest` is missing.
    """
    dest = Path(dest)
    return _remove_stale(dest.parent, re.escape(dest.name))


def remove_stale_in(directory: str | Path) -> list[Path]:
    """`remove_stale` for every destination in `directory` (e.g. a run's checkpoints)."""
    return _remove_stale(Path(directory), r".+")


def _remove_stale(parent: Path, name: str) -> list[Path]:
    if not parent.is_dir():
        return []
    pattern = re.compile(rf"^\.({name})\.(tmp|old)-(\d+)$")
    removed = []
    for entry in sorted(parent.iterdir()):
        match = pattern.match(entry.name)
        if not match or _alive(int(match.group(3))):
            continue
        dest = parent / match.group(1)
        if match.group(2) == "old" and not dest.exists():
            os.replace(entry, dest)
            log.warning("restored %s from %s (a replacement was interrupted)", dest, entry.name)
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)
        removed.append(entry)
    if removed:
        log.info("removed %d leftover temporary file(s) in %s: %s", len(removed), parent,
                 ", ".join(p.name for p in removed))
    return removed
