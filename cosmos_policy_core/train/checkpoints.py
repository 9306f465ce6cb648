"""A training run on disk: crash-safe checkpoints, the newest complete one for `--resume`, pruning, and a metrics
log that continues from the resumed step.

A checkpoint is `checkpoints/step_<8 digits>/`: the files of a CosmosCheckpoint (config.json, model.safetensors,
vae.safetensors, stats.json, text_embeddings.safetensors), optimizer.safetensors, trainer_state.json and, written
last, complete.json (the step and every file's size). The directory is written under a temporary name, flushed
and renamed into place, so a run killed at any moment leaves complete checkpoints and at most one temporary
directory, which the next run removes.
"""
from __future__ import annotations

import json
import logging
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import torch

from cosmos_policy_core import atomic
from cosmos_policy_core.checkpoint import CosmosCheckpoint, load_checkpoint_dir, write_checkpoint_files
from cosmos_policy_core.errors import CheckpointError

log = logging.getLogger(__name__)

CHECKPOINT_DIR = "checkpoints"
TRAINER_STATE = "trainer_state.json"
OPTIMIZER_STATE = "optimizer.safetensors"
COMPLETE_MARKER = "complete.json"
METRICS_FILE = "metrics.jsonl"
_STEP_DIR = re.compile(r"^step_(\d{8})$")


# --- optimizer state as safetensors + JSON (no pickle in run directories) --------------------------------
def flatten_state(obj, prefix: str, tensors: dict):
    """A nested optimizer state dict -> a JSON tree whose tensors are collected in `tensors` by name."""
    if isinstance(obj, torch.Tensor):
        key = prefix or "root"
        tensors[key] = obj.detach().cpu().contiguous().clone()
        return {"__tensor__": key}
    if isinstance(obj, Mapping):
        return {"__dict__": [[k, flatten_state(v, f"{prefix}.{k}" if prefix else str(k), tensors)]
                             for k, v in obj.items()]}
    if isinstance(obj, (list, tuple)):
        return {"__list__": [flatten_state(v, f"{prefix}.{i}", tensors) for i, v in enumerate(obj)]}
    return obj


def unflatten_state(tree, tensors: Mapping[str, torch.Tensor]):
    """Inverse of `flatten_state`."""
    if isinstance(tree, dict) and "__tensor__" in tree:
        return tensors[tree["__tensor__"]]
    if isinstance(tree, dict) and "__dict__" in tree:
        return {k: unflatten_state(v, tensors) for k, v in tree["__dict__"]}
    if isinstance(tree, dict) and "__list__" in tree:
        return [unflatten_state(v, tensors) for v in tree["__list__"]]
    return tree


@dataclass
class RestoredCheckpoint:
    """What `--resume` continues from."""

    path: Path
    step: int
    checkpoint: CosmosCheckpoint       # model weights, statistics, text embeddings (no VAE weights)
    optimizer: dict                    # torch optimizer state dict
    state: dict                        # trainer_state.json: step, history, eval_history, ...


class RunCheckpoints:
    """The `checkpoints/` directory of one run: save, list the complete ones, restore the newest, prune."""

    def __init__(self, run_dir: str | Path, keep: int):
        self.root = Path(run_dir) / CHECKPOINT_DIR
        self.keep = keep

    def path(self, step: int) -> Path:
        return self.root / f"step_{step:08d}"

    def remove_stale(self) -> list[Path]:
        """Remove temporary directories of checkpoints whose writer was killed."""
        return atomic.remove_stale_in(self.root)

    def save(self, step: int, ckpt: CosmosCheckpoint, optimizer_state: dict, trainer_state: dict) -> Path:
        """Write checkpoint `step` (model, optimizer, trainer state, then the completion marker) and swap it in."""
        from safetensors.torch import save_file

        path = self.path(step)
        self.root.mkdir(parents=True, exist_ok=True)
        atomic.remove_stale(path)
        tmp = atomic.temp_path(path)
        tmp.mkdir()
        try:
            write_checkpoint_files(tmp, ckpt)
            tensors: dict[str, torch.Tensor] = {}
            tree = flatten_state(optimizer_state, "", tensors)
            save_file(tensors, str(tmp / OPTIMIZER_STATE))
            (tmp / TRAINER_STATE).write_text(json.dumps({**trainer_state, "step": step, "optimizer": tree}))
            atomic.fsync_tree(tmp)
            # Last: the sizes of the flushed files, which `load` compares before trusting any of them.
            sizes = {p.name: p.stat().st_size for p in sorted(tmp.iterdir())}
            (tmp / COMPLETE_MARKER).write_text(json.dumps({"step": step, "files": sizes}, indent=1))
            atomic.replace_dir(tmp, path)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        self.prune()
        log.info("checkpoint %s", path)
        return path

    def complete(self) -> list[Path]:
        """Checkpoint directories with a completion marker (or, from older versions, a trainer state), oldest
        first. Complete does not mean intact: `load` checks that."""
        if not self.root.is_dir():
            return []
        found = [p for p in self.root.iterdir() if _STEP_DIR.match(p.name) and p.is_dir()
                 and ((p / COMPLETE_MARKER).is_file() or (p / TRAINER_STATE).is_file())]
        return sorted(found, key=lambda p: p.name)

    def prune(self) -> None:
        for old in self.complete()[: -self.keep]:
            shutil.rmtree(old, ignore_errors=True)

    def load(self, path: str | Path) -> RestoredCheckpoint:
        """Read checkpoint `path` whole; CheckpointError naming the file when any part is missing or damaged."""
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        path = Path(path)
        marker = path / COMPLETE_MARKER
        if marker.is_file():
            try:
                expected = json.loads(marker.read_text())["files"]
            except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as e:
                raise CheckpointError(f"{marker} is damaged ({e})") from e
            for name, size in expected.items():
                actual = (path / name).stat().st_size if (path / name).is_file() else None
                if actual != size:
                    raise CheckpointError(f"{path / name} has {actual} bytes, {size} were written: truncated or "
                                          "changed after the checkpoint was saved")
        try:
            state = json.loads((path / TRAINER_STATE).read_text())
        except FileNotFoundError:
            raise CheckpointError(f"{path} has no {TRAINER_STATE}: the checkpoint is incomplete") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise CheckpointError(f"{path / TRAINER_STATE} is not valid JSON ({e})") from e
        if not isinstance(state, dict) or not isinstance(state.get("step"), int) or "optimizer" not in state:
            raise CheckpointError(f"{path / TRAINER_STATE} lacks the step or the optimizer state")
        ckpt = load_checkpoint_dir(path, load_vae=False)
        try:
            optimizer = unflatten_state(state["optimizer"], load_file(str(path / OPTIMIZER_STATE)))
        except FileNotFoundError:
            raise CheckpointError(f"{path} has no {OPTIMIZER_STATE}: the checkpoint is incomplete") from None
        except (SafetensorError, OSError, ValueError, RuntimeError) as e:
            raise CheckpointError(f"{path / OPTIMIZER_STATE} is truncated or corrupt ({e})") from e
        except (KeyError, TypeError) as e:
            raise CheckpointError(f"{path / OPTIMIZER_STATE} does not match {TRAINER_STATE} (missing {e})") from e
        return RestoredCheckpoint(path, int(state["step"]), ckpt, optimizer, state)

    def load_newest(self) -> RestoredCheckpoint | None:
        """The newest checkpoint that loads whole; a damaged newer one is reported and passed over.

        None when the run has no complete checkpoint yet; CheckpointError when it has some and none loads.
        """
        failures = []
        for path in reversed(self.complete()):
            try:
                restored = self.load(path)
            except CheckpointError as e:
                log.warning("cannot resume from %s: %s; trying the checkpoint before it", path, e)
                failures.append(f"{path.name}: {e}")
                continue
            if failures:
                log.warning("resuming from %s, the newest intact checkpoint (passed over: %s)", path,
                            ", ".join(f.split(":")[0] for f in failures))
            return restored
        if failures:
            raise CheckpointError(f"no checkpoint in {self.root} can be resumed from:\n  " + "\n  ".join(failures)
                                  + "\nstart again without --resume in a new --out, or --init from a model")
        return None


class MetricsLog:
    """metrics.jsonl: one JSON row per logged step. It restarts from the rows of the checkpoint a run resumes
    from, so rows written after that checkpoint (by the run that died) are not repeated."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def restart(self, rows: list[dict]) -> None:
        atomic.write_text(self.path, "".join(json.dumps(r) + "\n" for r in rows))

    def append(self, row: dict) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps(row) + "\n")


__all__ = [
    "CHECKPOINT_DIR", "TRAINER_STATE", "OPTIMIZER_STATE", "COMPLETE_MARKER", "METRICS_FILE", "flatten_state",
    "unflatten_state", "RestoredCheckpoint", "RunCheckpoints", "MetricsLog",
]
