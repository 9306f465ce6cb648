"""Checkpoints: the reference's `.pt`, dataset-statistics JSON and T5 embedding pickle, and our own directory format.

Our format is a directory: config.json (model + vae + layout + diffusion + deploy), model.safetensors, optional vae.safetensors, stats.json, text_embeddings.safetensors; written atomically.
"""
from __future__ import annotations

import io
import json
import logging
import pickle
import shutil
import zipfile
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Mapping

import numpy as np
import torch

from cosmos_policy_core import atomic
from cosmos_policy_core.diffusion import DiffusionConfig
from cosmos_policy_core.errors import CheckpointError, ConfigError
from cosmos_policy_core.layout import TRAIN_CROP_AREA, LatentLayout, normalize, unnormalize

log = logging.getLogger(__name__)

FORMAT_NAME = "cosmos_aloha.checkpoint"
FORMAT_VERSION = 1
CONFIG_FILE = "config.json"
MODEL_FILE = "model.safetensors"
VAE_FILE = "vae.safetensors"
STATS_FILE = "stats.json"
TEXT_FILE = "text_embeddings.safetensors"

# Reference-only state: RoPE tables (recomputed), training counters, TransformerEngine extra state.
_DROPPED_PREFIXES = ("pos_embedder.", "extra_pos_embedder.", "accum_")
_DROPPED_SUFFIXES = ("_extra_state",)
_LAYOUT_DISPLAY = {"aloha": "ALOHA", "libero": "LIBERO", "robocasa": "RoboCasa"}


# --- reference .pt -----------------------------------------------------------------------------
def _torch_load(path: Path, trust_pickle: bool):
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    if not trust_pickle and not zipfile.is_zipfile(path):
        raise CheckpointError(
            f"{path} is truncated or corrupt: it is not a torch zip archive (or an old pickle-only format, "
            "which needs trust_pickle=True); re-download or re-export it"
        )
    try:
        if trust_pickle:
            return torch.load(path, map_location="cpu", weights_only=False)
        # io.BytesIO: TransformerEngine stores its `_extra_state` as BytesIO objects.
        with torch.serialization.safe_globals([io.BytesIO]):
            return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except pickle.UnpicklingError as e:
        raise CheckpointError(
            f"{path} holds Python objects besides tensors ({str(e).splitlines()[0][:200]}); "
            "if the file comes from a source you trust, load it with trust_pickle=True"
        ) from e
    except (RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile) as e:
        raise CheckpointError(f"{path} is truncated or corrupt and cannot be read ({e}); re-download it") from e


def _unwrap(obj, path: Path) -> Mapping:
    while isinstance(obj, Mapping):
        if any(isinstance(v, torch.Tensor) for v in obj.values()):
            return obj
        for key in ("model", "state_dict", "module"):
            if isinstance(obj.get(key), Mapping):
                obj = obj[key]
                break
        else:
            break
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{path} holds a {type(obj).__name__}, expected a state dict")
    return obj


def is_reference_only_key(key: str) -> bool:
    """Keys of the reference network that hold no weights of ours (RoPE tables, counters, TE state)."""
    return key.startswith(_DROPPED_PREFIXES) or key.endswith(_DROPPED_SUFFIXES)


def read_reference_state_dict(
    path: str | Path, *, use_ema: bool = False, trust_pickle: bool = False
) -> dict[str, torch.Tensor]:
    """DiT weights of a reference `.pt`: `net.`-prefixed keys with the prefix removed, reference-only keys dropped.

    `use_ema` reads `net_ema.` instead (the Cosmos-Predict2 base model's EMA weights, which the
    reference loads into the regular network). A `{"model": ...}` / `{"state_dict": ...}`
    wrapper is accepted. The file is memory-mapped, so a 2B checkpoint is not copied in RAM.
    """
    path = Path(path)
    raw = _unwrap(_torch_load(path, trust_pickle), path)
    prefix = "net_ema." if use_ema else "net."
    keys = [k for k in raw if isinstance(k, str) and k.startswith(prefix)]
    if not keys:
        sample = ", ".join(list(map(str, raw))[:5])
        raise CheckpointError(
            f"{path} has no '{prefix}' keys (first keys: {sample}); expected a Cosmos Policy / Cosmos-Predict2 "
            f"checkpoint" + ("" if use_ema else " (for an EMA-only file pass use_ema=True)")
        )
    state: dict[str, torch.Tensor] = {}
    for key in keys:
        name = key[len(prefix):]
        if is_reference_only_key(name):
            continue
        value = raw[key]
        if not isinstance(value, torch.Tensor):
            raise CheckpointError(f"{path}: key {key!r} holds a {type(value).__name__}, expected a tensor")
        state[name] = value
    dropped = len(keys) - len(state)
    log.info("read %d tensors from %s (%d reference-only keys dropped)", len(state), path, dropped)
    return state


def to_reference_state_dict(net: torch.nn.Module, dtype: torch.dtype = torch.bfloat16) -> dict[str, torch.Tensor]:
    """Our network's weights in the reference's layout (`net.` prefix, bf16), e.g. for the reference's tools."""
    return {f"net.{k}": v.detach().to(dtype) for k, v in net.state_dict().items()}


def check_state_dict(net: torch.nn.Module, state: Mapping[str, torch.Tensor], source: str = "checkpoint") -> None:
    """Raise CheckpointError naming every missing / unexpected key and every shape mismatch."""
    expected = net.state_dict()
    problems = []
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    mismatched = [k for k in expected if k in state and tuple(state[k].shape) != tuple(expected[k].shape)]
    for k in missing[:10]:
        problems.append(f"missing key {k!r} (expected shape {tuple(expected[k].shape)})")
    for k in unexpected[:10]:
        problems.append(f"unexpected key {k!r} (found shape {tuple(state[k].shape)})")
    for k in mismatched[:10]:
        problems.append(f"key {k!r}: expected shape {tuple(expected[k].shape)}, found {tuple(state[k].shape)}")
    if problems:
        counts = f"{len(missing)} missing, {len(unexpected)} unexpected, {len(mismatched)} mis-shaped"
        raise CheckpointError(
            f"{source} does not match the network ({counts}):\n  " + "\n  ".join(problems)
            + "\nCheck that the model config (e.g. ModelConfig.cosmos_predict2_2b()) matches the checkpoint."
        )


def load_into(net: torch.nn.Module, state: Mapping[str, torch.Tensor], source: str = "checkpoint") -> torch.nn.Module:
    """Strictly load `state` into `net` (values are cast to each parameter's dtype)."""
    check_state_dict(net, state, source)
    net.load_state_dict(dict(state), strict=True)
    return net


def load_reference_checkpoint(
    net: torch.nn.Module, path: str | Path, *, use_ema: bool = False, trust_pickle: bool = False
) -> torch.nn.Module:
    """Read a reference `.pt` and load it strictly into a CosmosDiT."""
    state = read_reference_state_dict(path, use_ema=use_ema, trust_pickle=trust_pickle)
    return load_into(net, state, source=str(path))


# --- dataset statistics ------------------------------------------------------------------------
_STAT_NAMES = ("min", "max", "mean", "std", "median")
CONSTANT_DIM_HALF_RANGE = 1e-3   # rad / normalised gripper units; see DatasetStats.from_arrays


@dataclass(frozen=True)
class DatasetStats:
    """Per-dimension statistics of actions and proprio (the reference's dataset_statistics.json).

    Only min and max are used (min/max normalization to [-1, 1]); mean/std/median are kept for
    reference and may be absent.
    """

    actions_min: np.ndarray
    actions_max: np.ndarray
    proprio_min: np.ndarray
    proprio_max: np.ndarray
    actions_mean: np.ndarray | None = None
    actions_std: np.ndarray | None = None
    actions_median: np.ndarray | None = None
    proprio_mean: np.ndarray | None = None
    proprio_std: np.ndarray | None = None
    proprio_median: np.ndarray | None = None

    @property
    def action_dim(self) -> int:
        return int(self.actions_min.shape[0])

    @property
    def proprio_dim(self) -> int:
        return int(self.proprio_min.shape[0])

    @classmethod
    def from_arrays(cls, actions: np.ndarray, proprio: np.ndarray) -> "DatasetStats":
        """Statistics of (N, action_dim) actions and (N, proprio_dim) proprio, as the reference computes them.

        A dimension that never changes (an idle arm in simulation) gets min/max CONSTANT_DIM_HALF_RANGE either
        side of its value, with a warning: it still normalizes to 0 and back to its value, where the reference
        divides by zero, and every statistics file keeps max > min.
        """
        values = {}
        for name, arr in (("actions", np.asarray(actions, np.float64)), ("proprio", np.asarray(proprio, np.float64))):
            lo, hi = arr.min(0), arr.max(0)
            constant = np.flatnonzero(lo == hi)
            if constant.size:
                log.warning("%s dimensions %s are constant in the data: min/max set %g either side of the value",
                            name, constant.tolist(), CONSTANT_DIM_HALF_RANGE)
                lo[constant] -= CONSTANT_DIM_HALF_RANGE
                hi[constant] += CONSTANT_DIM_HALF_RANGE
            values.update({
                f"{name}_min": lo, f"{name}_max": hi, f"{name}_mean": arr.mean(0),
                f"{name}_std": arr.std(0), f"{name}_median": np.median(arr, 0),
            })
        stats = cls(**values)
        problems = stats.problems()
        if problems:
            raise CheckpointError("statistics of the given arrays cannot normalize: " + "; ".join(problems))
        return stats

    def problems(self) -> list[str]:
        """What makes these statistics unusable for normalization: a non-finite value, or a max not above its min
        (a dimension constant in the data, or a corrupt file). Empty when they are fine."""
        found = []
        for f in fields(self):
            values = getattr(self, f.name)
            if values is not None and not np.isfinite(values).all():
                found.append(f"{f.name} holds NaN or Infinity in dims {np.flatnonzero(~np.isfinite(values)).tolist()}")
        for group in ("actions", "proprio"):
            lo, hi = getattr(self, f"{group}_min"), getattr(self, f"{group}_max")
            flat = np.flatnonzero(~(hi > lo) & np.isfinite(lo) & np.isfinite(hi))
            if flat.size:
                found.append(f"{group}_max is not above {group}_min in dims {flat.tolist()} "
                             f"(min {lo[flat].tolist()}, max {hi[flat].tolist()})")
        return found

    def check_layout(self, layout: LatentLayout, source: str = "stats.json") -> "DatasetStats":
        for what, have, need in (("action", self.action_dim, layout.action_dim),
                                 ("proprio", self.proprio_dim, layout.proprio_dim)):
            if have != need:
                raise CheckpointError(
                    f"{source} has {have} {what} dims, the {_LAYOUT_DISPLAY.get(layout.name, layout.name)} "
                    f"layout needs {need}"
                )
        return self

    def normalize_actions(self, actions):
        return normalize(actions, self.actions_min, self.actions_max, "actions")

    def unnormalize_actions(self, actions):
        return unnormalize(actions, self.actions_min, self.actions_max, "actions")

    def normalize_proprio(self, proprio):
        return normalize(proprio, self.proprio_min, self.proprio_max, "proprio")

    def unnormalize_proprio(self, proprio):
        return unnormalize(proprio, self.proprio_min, self.proprio_max, "proprio")

    def to_json_dict(self) -> dict:
        return {f.name: getattr(self, f.name).tolist() for f in fields(self) if getattr(self, f.name) is not None}

    @classmethod
    def from_json_dict(cls, data: Mapping, source: str = "stats.json") -> "DatasetStats":
        values = {}
        for group in ("actions", "proprio"):
            for stat in _STAT_NAMES:
                key = f"{group}_{stat}"
                if key not in data:
                    if stat in ("min", "max"):
                        raise CheckpointError(f"{source} lacks {key!r}; it needs {group}_min and {group}_max")
                    continue
                try:
                    arr = np.asarray(data[key], dtype=np.float64)
                except (TypeError, ValueError) as e:
                    raise CheckpointError(f"{source}: {key} is not a list of numbers ({e})") from e
                if arr.ndim != 1:
                    raise CheckpointError(f"{source}: {key} has shape {arr.shape}, expected a flat list")
                values[key] = arr
            dims = {values[f"{group}_{s}"].shape[0] for s in _STAT_NAMES if f"{group}_{s}" in values}
            if len(dims) != 1:
                raise CheckpointError(f"{source}: the {group} statistics disagree on their length: {sorted(dims)}")
        stats = cls(**values)
        problems = stats.problems()
        if problems:
            raise CheckpointError(f"{source}: " + "; ".join(problems) + "; these statistics cannot normalize: the "
                                  "file is damaged (convert the dataset again to recompute it, or restore the "
                                  "checkpoint from its source)")
        return stats


def read_dataset_stats(path: str | Path, layout: LatentLayout | None = None) -> DatasetStats:
    """Read a dataset_statistics.json (ours or the released aloha_dataset_statistics.json)."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise CheckpointError(f"statistics file {path} does not exist") from None
    except IsADirectoryError:
        raise CheckpointError(f"statistics file {path} is a directory; pass the stats.json file") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"statistics file {path} is not valid JSON ({e})") from e
    if not isinstance(data, Mapping):
        raise CheckpointError(f"statistics file {path} holds a {type(data).__name__}, expected an object")
    stats = DatasetStats.from_json_dict(data, source=str(path))
    return stats.check_layout(layout, source=str(path)) if layout is not None else stats


def write_dataset_stats(path: str | Path, stats: DatasetStats) -> Path:
    problems = stats.problems()
    if problems:
        raise CheckpointError(f"refusing to write statistics to {path} that cannot normalize: " + "; ".join(problems))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic.write_text(path, json.dumps(stats.to_json_dict(), indent=2))
    return path


# --- text embeddings ---------------------------------------------------------------------------
class _T5PickleUnpickler(pickle.Unpickler):
    """Unpickles a dict of tensors and nothing else (a pickle can otherwise run arbitrary code)."""

    _ALLOWED = {
        ("torch._utils", "_rebuild_tensor_v2"), ("torch._utils", "_rebuild_tensor"),
        ("collections", "OrderedDict"),
    }

    def find_class(self, module: str, name: str):
        if (module, name) == ("torch.storage", "_load_from_bytes"):
            # Tensor storages are embedded torch.save archives: read them without pickle code.
            return lambda data: torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
            return getattr(torch, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}: only tensors are expected")


def _check_embeddings(table: Mapping, source: str) -> dict[str, torch.Tensor]:
    out = {}
    for task, emb in table.items():
        if not isinstance(task, str) or not isinstance(emb, torch.Tensor):
            raise CheckpointError(f"{source}: entry {task!r} is not task string -> tensor")
        if emb.ndim == 2:
            emb = emb.unsqueeze(0)
        if emb.ndim != 3 or emb.shape[0] != 1:
            raise CheckpointError(f"{source}: embedding of {task!r} has shape {tuple(emb.shape)}, expected (1, L, D)")
        out[task] = emb
    dims = {e.shape[1:] for e in out.values()}
    if len(dims) > 1:
        raise CheckpointError(f"{source}: embeddings disagree on (L, D): {sorted(map(tuple, dims))}")
    return out


def read_t5_embeddings(path: str | Path) -> dict[str, torch.Tensor]:
    """The reference's `*_t5_embeddings.pkl`: task string -> bf16 (1, 512, 1024), read without running pickle code."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            table = _T5PickleUnpickler(f).load()
    except FileNotFoundError:
        raise CheckpointError(f"text-embedding file {path} does not exist") from None
    except (pickle.UnpicklingError, EOFError, RuntimeError, ValueError, AttributeError, ImportError) as e:
        raise CheckpointError(f"{path} is not a readable T5 embedding pickle ({e})") from e
    if not isinstance(table, Mapping):
        raise CheckpointError(f"{path} holds a {type(table).__name__}, expected a dict task -> tensor")
    return _check_embeddings(table, path.name)


def write_text_embeddings(path: str | Path, table: Mapping[str, torch.Tensor]) -> Path:
    from safetensors.torch import save

    path = Path(path)
    table = _check_embeddings(table, path.name)
    tensors = {task: emb.detach().contiguous().cpu() for task, emb in table.items()}
    atomic.write_bytes(path, save(tensors, metadata={"format": "text_embeddings"}))
    return path


def read_text_embeddings(path: str | Path) -> dict[str, torch.Tensor]:
    path = Path(path)
    return _check_embeddings(_read_safetensors(path), path.name)


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    if not path.is_file():
        raise CheckpointError(f"{path} does not exist")
    try:
        return load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"{path} is truncated or corrupt ({e}); re-export the checkpoint") from e


# --- how a checkpoint is meant to be executed ----------------------------------------------------
EXECUTION_MODES = ("whole_chunks", "temporal_ensemble")
ENSEMBLE_QUERY_STEPS = 5   # query cadence for temporal ensembling when a checkpoint does not give one


@dataclass(frozen=True)
class DeploySettings:
    """How a model is meant to be executed: the `deploy` section of our config.json.

    Everything that runs a checkpoint (`sim eval`, `act`, the policy and executor nodes, `bringup`, the demo)
    starts from these and lets explicit flags or parameters override them (`with_overrides`). The defaults
    are the reference's ALOHA deployment: whole 50-step chunks, 10 denoising steps, the test-time centre crop.
    """

    # whole_chunks: play a chunk, then query again. temporal_ensemble: query every `query_every_steps` and
    # command the weighted mean of every live chunk's current step (ACT's temporal ensembling).
    execution: str = "whole_chunks"
    ensemble_decay: float = 0.01       # temporal_ensemble: chunk i (0 = oldest) weighs exp(-decay * i)
    query_every_steps: int = 50        # control steps between queries (whole chunks: the chunk length)
    num_steps: int = 10                # denoising steps per chunk
    # Centre crop (area fraction) resized back, matching training crops; None: whole frames (a model trained
    # without crop augmentation).
    crop_area: float | None = TRAIN_CROP_AREA

    def __post_init__(self) -> None:
        if self.execution not in EXECUTION_MODES:
            raise ConfigError(f"deploy.execution must be one of {EXECUTION_MODES}, got {self.execution!r}")
        if not (isinstance(self.ensemble_decay, (int, float)) and np.isfinite(self.ensemble_decay)
                and self.ensemble_decay >= 0):
            raise ConfigError(f"deploy.ensemble_decay must be a finite number >= 0, got {self.ensemble_decay!r}")
        if not (isinstance(self.query_every_steps, int) and self.query_every_steps >= 1):
            raise ConfigError(f"deploy.query_every_steps must be an integer >= 1, got {self.query_every_steps!r}")
        if not (isinstance(self.num_steps, int) and self.num_steps >= 1):
            raise ConfigError(f"deploy.num_steps must be an integer >= 1, got {self.num_steps!r}")
        if self.crop_area is not None and not (isinstance(self.crop_area, (int, float)) and 0 < self.crop_area <= 1):
            raise ConfigError(f"deploy.crop_area must be null or in (0, 1], got {self.crop_area!r}")

    @property
    def temporal_ensemble(self) -> bool:
        return self.execution == "temporal_ensemble"

    @property
    def executor_ensemble_decay(self) -> float | None:
        """The executor's ensemble_decay: the decay under temporal ensembling, None for whole chunks."""
        return float(self.ensemble_decay) if self.temporal_ensemble else None

    def with_overrides(self, **changes) -> "DeploySettings":
        """These settings with the given fields replaced; None values leave a field as it is."""
        unknown = set(changes) - {f.name for f in fields(self)}
        if unknown:
            raise ConfigError(f"unknown deploy setting(s) {sorted(unknown)}; known: {[f.name for f in fields(self)]}")
        return replace(self, **{k: v for k, v in changes.items() if v is not None})

    def to_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_dict(cls, data, source: str = "deploy") -> "DeploySettings":
        if not isinstance(data, Mapping):
            raise CheckpointError(f"{source}: the deploy section must be a JSON object, got {type(data).__name__}")
        unknown = set(data) - {f.name for f in fields(cls)}
        if unknown:
            raise CheckpointError(f"{source}: unknown deploy setting(s) {sorted(unknown)}; "
                                  f"known: {[f.name for f in fields(cls)]}")
        try:
            return cls(**data)
        except ConfigError as e:
            raise CheckpointError(f"{source}: {e}") from e

    @classmethod
    def from_checkpoint(cls, path: str | Path) -> "DeploySettings":
        """The settings a checkpoint directory carries; for a directory without a deploy section (or a
        reference `.pt`), what its training implies: no centre crop when it was trained without augmentation
        (its recorded train config has `"augment": null`), else the reference deployment."""
        path = Path(path)
        config_json = path / CONFIG_FILE
        if not config_json.is_file():
            return cls()
        try:
            config = json.loads(config_json.read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise CheckpointError(f"{config_json} is not valid JSON ({e})") from e
        if not isinstance(config, Mapping):
            raise CheckpointError(f"{config_json} must hold a JSON object")
        if config.get("deploy") is not None:
            return cls.from_dict(config["deploy"], source=f"{config_json} (deploy)")
        metadata = config.get("metadata") or {}
        train_config = metadata.get("train_config") if isinstance(metadata, Mapping) else None
        if isinstance(train_config, Mapping) and "augment" in train_config and train_config["augment"] is None:
            return cls(crop_area=None)
        return cls()


# --- our checkpoint directory ------------------------------------------------------------------
@dataclass
class CosmosCheckpoint:
    """Everything a policy needs, as plain data: configs, weights, statistics, text embeddings."""

    model_config: object                       # nn.config.ModelConfig
    layout: LatentLayout
    model_state: dict[str, torch.Tensor]
    stats: DatasetStats | None = None
    text_embeddings: dict[str, torch.Tensor] = field(default_factory=dict)
    vae_config: object | None = None           # nn.wan_vae.VAEConfig
    vae_state: dict[str, torch.Tensor] | None = None
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    metadata: dict = field(default_factory=dict)
    deploy: DeploySettings | None = None       # None: what the training implies (DeploySettings.from_checkpoint)

    def build_dit(self, dtype: torch.dtype | None = None) -> torch.nn.Module:
        """A CosmosDiT with these weights, strictly loaded."""
        from cosmos_policy_core.nn.dit import CosmosDiT

        net = CosmosDiT(self.model_config)
        if dtype is not None:
            net = net.to(dtype)
        return load_into(net, self.model_state, source="model.safetensors")

    def build_vae(self, dtype: torch.dtype | None = None) -> torch.nn.Module:
        from cosmos_policy_core.nn.wan_vae import WanVAE

        if self.vae_config is None or self.vae_state is None:
            raise CheckpointError("this checkpoint has no VAE weights (vae.safetensors); load the VAE separately")
        vae = WanVAE(self.vae_config)
        if dtype is not None:
            vae = vae.to(dtype)
        return load_into(vae, self.vae_state, source="vae.safetensors")


def _contiguous(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    # safetensors refuses views and shared storage; clone gives every tensor its own buffer.
    return {k: v.detach().cpu().contiguous().clone() for k, v in state.items()}


def write_checkpoint_files(directory: str | Path, ckpt: CosmosCheckpoint) -> list[Path]:
    """Write the checkpoint's files into an existing `directory` (not atomic by itself: see save_checkpoint_dir)."""
    from safetensors.torch import save_file

    directory = Path(directory)
    config = {
        "format": FORMAT_NAME,
        "version": FORMAT_VERSION,
        "model": ckpt.model_config.to_dict(),
        "vae": None if ckpt.vae_config is None else ckpt.vae_config.to_dict(),
        "layout": ckpt.layout.to_dict(),
        "diffusion": ckpt.diffusion.to_dict(),
        "metadata": ckpt.metadata,
    }
    if ckpt.deploy is not None:
        config["deploy"] = ckpt.deploy.to_dict()
    (directory / CONFIG_FILE).write_text(json.dumps(config, indent=2))
    save_file(_contiguous(ckpt.model_state), str(directory / MODEL_FILE), metadata={"format": "pt"})
    if ckpt.vae_state is not None:
        save_file(_contiguous(ckpt.vae_state), str(directory / VAE_FILE), metadata={"format": "pt"})
    if ckpt.stats is not None:
        write_dataset_stats(directory / STATS_FILE, ckpt.stats.check_layout(ckpt.layout))
    write_text_embeddings(directory / TEXT_FILE, ckpt.text_embeddings)
    return sorted(directory.iterdir())


def save_checkpoint_dir(path: str | Path, ckpt: CosmosCheckpoint) -> Path:
    """Write the checkpoint directory atomically: a temporary sibling directory, flushed, swapped into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic.remove_stale(path)
    tmp = atomic.temp_path(path)
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    try:
        write_checkpoint_files(tmp, ckpt)
        atomic.replace_dir(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info("wrote checkpoint %s", path)
    return path


def load_checkpoint_dir(path: str | Path, *, load_vae: bool = True) -> CosmosCheckpoint:
    """Read a directory written by `save_checkpoint_dir`."""
    from cosmos_policy_core.nn.config import ModelConfig
    from cosmos_policy_core.nn.wan_vae import VAEConfig

    path = Path(path)
    if path.is_file():
        raise CheckpointError(f"{path} is a file; a checkpoint is a directory (config.json + model.safetensors + "
                              "stats.json + ...), e.g. the model/ directory of a training run")
    if not path.is_dir():
        raise CheckpointError(f"checkpoint directory {path} does not exist")
    try:
        config = json.loads((path / CONFIG_FILE).read_text())
    except FileNotFoundError:
        raise CheckpointError(f"{path} has no {CONFIG_FILE}; is it a cosmos_aloha checkpoint directory?") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path / CONFIG_FILE} is not valid JSON ({e})") from e
    except OSError as e:
        raise CheckpointError(f"{path / CONFIG_FILE} cannot be read ({e})") from e
    if not isinstance(config, Mapping):
        raise CheckpointError(f"{path / CONFIG_FILE} holds a {type(config).__name__}, expected a JSON object")
    for key, kind in (("model", Mapping), ("layout", Mapping), ("vae", (Mapping, type(None))),
                      ("diffusion", (Mapping, type(None))), ("metadata", (Mapping, type(None)))):
        if key in config and not isinstance(config[key], kind):
            raise CheckpointError(f"{path / CONFIG_FILE}: \"{key}\" holds {json.dumps(config[key])[:60]}, expected "
                                  "a JSON object; the file was edited or damaged, export the checkpoint again")
    if config.get("format") != FORMAT_NAME:
        raise CheckpointError(f"{path / CONFIG_FILE} is not a {FORMAT_NAME} config (format={config.get('format')!r})")
    if config.get("version", 0) > FORMAT_VERSION:
        raise CheckpointError(
            f"{path} has format version {config['version']}, this library reads up to {FORMAT_VERSION}; upgrade it"
        )
    try:
        model_config = ModelConfig.from_dict(config["model"])
        layout = LatentLayout.from_dict(config["layout"])
        diffusion = DiffusionConfig.from_dict(config.get("diffusion") or {})
        vae_config = None if config.get("vae") is None else VAEConfig.from_dict(config["vae"])
    except KeyError as e:
        raise CheckpointError(f"{path / CONFIG_FILE} lacks the {e} section; export the checkpoint again") from e
    except (TypeError, ValueError, AttributeError, ConfigError) as e:
        raise CheckpointError(f"{path / CONFIG_FILE} is invalid: {e}") from e

    stats = read_dataset_stats(path / STATS_FILE, layout) if (path / STATS_FILE).exists() else None
    text = read_text_embeddings(path / TEXT_FILE) if (path / TEXT_FILE).exists() else {}
    vae_state = None
    if load_vae and (path / VAE_FILE).exists():
        vae_state = _read_safetensors(path / VAE_FILE)
    return CosmosCheckpoint(
        model_config=model_config, layout=layout, model_state=_read_safetensors(path / MODEL_FILE),
        stats=stats, text_embeddings=text, vae_config=vae_config, vae_state=vae_state,
        diffusion=diffusion, metadata=config.get("metadata") or {},
        deploy=DeploySettings.from_dict(config["deploy"], f"{path / CONFIG_FILE} (deploy)") if config.get("deploy") else None,
    )


__all__ = [
    "CosmosCheckpoint", "DatasetStats", "DeploySettings", "EXECUTION_MODES", "ENSEMBLE_QUERY_STEPS",
    "read_reference_state_dict", "load_reference_checkpoint", "to_reference_state_dict", "is_reference_only_key",
    "check_state_dict", "load_into",
    "read_dataset_stats", "write_dataset_stats",
    "read_t5_embeddings", "read_text_embeddings", "write_text_embeddings",
    "write_checkpoint_files", "save_checkpoint_dir", "load_checkpoint_dir",
]
