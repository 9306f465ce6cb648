"""Kill a process at its k-th file-system step, as `kill -9` would, for the fault-injection tests.

A step is a call that changes the disk: opening a file for writing, an HDF5 file or dataset creation, a
safetensors save, a rename, a directory swap, fsync, mkdir, unlink, rmdir. `install(kill_at)` wraps them; the
k-th call sends SIGKILL to the process before it runs, so no cleanup handler (finally, except, atexit) runs.
`install(None, count_file)` only counts and writes the total at exit, which sizes the random kill points.
"""
from __future__ import annotations

import atexit
import builtins
import io
import os
import shutil
import signal
from pathlib import Path

_count = 0


def _step(kill_at: int | None) -> None:
    global _count
    _count += 1
    if kill_at is not None and _count >= kill_at:
        os.kill(os.getpid(), signal.SIGKILL)


def _wrap(owner, name: str, kill_at: int | None, when=lambda *a, **k: True) -> None:
    original = getattr(owner, name)

    def wrapped(*args, **kwargs):
        if when(*args, **kwargs):
            _step(kill_at)
        return original(*args, **kwargs)

    setattr(owner, name, wrapped)


def _writing(file=None, mode="r", *args, **kwargs) -> bool:
    return any(c in str(mode) for c in "wax+")


def _h5_writing(self, name=None, mode="r", *args, **kwargs) -> bool:
    return _writing(mode=mode)


def install(kill_at: int | None, count_file: str | Path | None = None) -> None:
    """Kill this process at its `kill_at`-th disk step (None: never); write the step count to `count_file` at exit."""
    import h5py
    import safetensors.torch

    from cosmos_policy_core import atomic

    opener = builtins.open
    _wrap(builtins, "open", kill_at, _writing)
    io.open = builtins.open if io.open is opener else io.open
    for name in ("replace", "rename", "mkdir", "unlink", "rmdir", "fsync"):
        _wrap(os, name, kill_at)
    _wrap(shutil, "rmtree", kill_at)
    _wrap(h5py.File, "__init__", kill_at, _h5_writing)
    _wrap(h5py.Group, "create_dataset", kill_at)
    _wrap(safetensors.torch, "save_file", kill_at)
    _wrap(atomic, "_exchange", kill_at)
    if count_file is not None:
        atexit.register(lambda: Path(count_file).write_text(str(_count)))


def run_forked(target, kill_at: int | None, count_file: str | Path | None = None) -> int:
    """Run `target()` in a forked child with `install(kill_at, count_file)`; its exit status (-9: killed)."""
    pid = os.fork()
    if pid == 0:   # the child: never returns into the test runner
        code = 0
        try:
            install(kill_at)
            target()
        except BaseException:   # noqa: BLE001 (a failure is the test's to judge from the exit status)
            code = 3
        finally:
            if count_file is not None:
                Path(count_file).write_text(str(_count))
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    return -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)
