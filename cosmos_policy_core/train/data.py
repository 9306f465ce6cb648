"""What a training run learns from: demo episodes and their held-out split, rollouts, the normalization statistics
(checked against the demos they normalize) and the task text embeddings, with the SampleBuilder over them.
"""
from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from cosmos_policy_core.checkpoint import (
    STATS_FILE, DatasetStats, read_dataset_stats, read_t5_embeddings, read_text_embeddings,
)
from cosmos_policy_core.data.episode import load_episode_dir
from cosmos_policy_core.errors import ConfigError, DataError
from cosmos_policy_core.layout import LatentLayout
from cosmos_policy_core.robot.aloha import JOINT_NAMES
from cosmos_policy_core.train.samples import EpisodeFrames, SampleBuilder, SampleConfig

log = logging.getLogger(__name__)

STATS_FILES = ("stats.json", "dataset_statistics.json")   # ours, and the reference's name
# How far (share of a dimension's range) the demos may pass the statistics they are normalized with. A data
# directory's file is meant to be computed from its episodes, so passing it means it belongs to other ones;
# an --init checkpoint's statistics are kept while the demos roughly fit, since re-normalizing moves every
# target the model learned (targets past [-1, 1] are actions the policy clips away at inference).
DATA_STATS_MARGIN = 0.01
INIT_STATS_MARGIN = 0.05


# --- text conditioning without T5 --------------------------------------------------------------------
def task_text_embedding(task: str, length: int, dim: int) -> torch.Tensor:
    """(1, length, dim) fixed pseudo-embedding of a task string, seeded by its hash.

    Stands in for the T5-11B embedding when none is given (a single-task model only needs a
    constant context); pass a real table with `text_embeddings` for multi-task training.
    """
    seed = int.from_bytes(hashlib.sha256(task.encode()).digest()[:4], "little")
    g = torch.Generator().manual_seed(seed)
    return torch.randn(1, length, dim, generator=g) / dim**0.5


def load_text_table(path: str | Path | None, tasks: Sequence[str], length: int, dim: int) -> dict[str, torch.Tensor]:
    """Task -> (1, L, D) embeddings: the given file (reference .pkl or our safetensors), else generated ones."""
    if path is None:
        return {t: task_text_embedding(t, length, dim) for t in sorted(set(tasks))}
    path = Path(path)
    table = read_t5_embeddings(path) if path.suffix == ".pkl" else read_text_embeddings(path)
    missing = sorted(set(tasks) - set(table))
    if missing:
        raise ConfigError(f"{path} lacks embeddings for tasks {missing}; it has {sorted(table)}")
    dims = {e.shape[-1] for e in table.values()}
    if dims != {dim}:
        raise ConfigError(f"{path} has embedding width {sorted(dims)}, the model's crossattn_emb_channels is {dim}")
    return {t: table[t].float() for t in sorted(set(tasks))}


# --- statistics --------------------------------------------------------------------------------------
def _dim_name(dim: int, width: int) -> str:
    return f"{dim} ({JOINT_NAMES[dim]})" if width == len(JOINT_NAMES) else str(dim)


def stats_outside(stats: DatasetStats, demos: Sequence[EpisodeFrames], margin: float) -> dict[str, str]:
    """Per group ("actions", "proprio"): which dimensions the demos pass by more than `margin` of the range,
    and the worst value, as text for a message; empty when the demos fit."""
    found = {}
    for group, attr in (("actions", "action"), ("proprio", "qpos")):
        lo, hi = getattr(stats, f"{group}_min"), getattr(stats, f"{group}_max")
        slack = margin * (hi - lo)
        worst = None   # (excess in ranges, dim, value, episode name)
        dims = set()
        for ep in demos:
            values = np.asarray(getattr(ep, attr), np.float64)
            below, above = (lo - slack) - values.min(0), values.max(0) - (hi + slack)
            for d in np.flatnonzero((below > 0) | (above > 0)):
                dims.add(int(d))
                excess = max(below[d], above[d]) / (hi[d] - lo[d])
                value = values[:, d].min() if below[d] > 0 else values[:, d].max()
                if worst is None or excess > worst[0]:
                    worst = (excess, int(d), float(value), getattr(ep, "name", "an episode"))
        if dims:
            _, d, value, name = worst
            width = len(lo)
            found[group] = (f"{group} dims {[_dim_name(i, width) for i in sorted(dims)]} (worst: {name} reaches "
                            f"{value:.4g} on dim {_dim_name(d, width)}, range [{lo[d]:.4g}, {hi[d]:.4g}])")
    return found


def data_dirs(data: str | Path | Sequence[str | Path] | None) -> list[Path]:
    """The dataset directories of `train --data` (one, several, or none when the episodes are given open);
    DataError when a directory is given twice (its episodes would count double)."""
    if data is None:
        return []
    dirs = [Path(data)] if isinstance(data, (str, Path)) else [Path(d) for d in data]
    seen: dict[Path, Path] = {}
    for d in dirs:
        key = d.resolve()
        if key in seen:
            raise DataError(f"data directory {d} is given twice (as {seen[key]} too): its episodes would count "
                            "double; give each directory once")
        seen[key] = d
    return dirs


def resolve_stats(data_dir: str | Path | None, demos: Sequence[EpisodeFrames], layout: LatentLayout,
                  init: str | Path | None = None, keep_init: bool = False) -> tuple[DatasetStats, str]:
    """Normalization statistics and where they come from: the data directory's file (which must cover the demos),
    else an --init checkpoint's (kept while the demos fit in them), else computed over the demos. `keep_init`:
    the --init checkpoint's, whatever the demos (TrainConfig.keep_init_stats)."""
    if keep_init:
        init_stats = None if init is None else Path(init) / STATS_FILE
        if init_stats is None or not init_stats.is_file():
            raise ConfigError("keep_init_stats normalizes with the --init checkpoint's statistics: pass --init DIR, "
                              f"a checkpoint directory with {STATS_FILE}")
        kept = read_dataset_stats(init_stats, layout)
        outside = stats_outside(kept, demos, INIT_STATS_MARGIN)
        if outside:
            cut = (" The policy's actions are clamped to these statistics when it runs (sim eval and act: --no-clip "
                   "turns that off), so what it learns beyond them is cut" if "actions" in outside else "")
            log.warning("the demos pass the --init statistics (%s); kept, as keep_init_stats asks.%s",
                        "; ".join(outside.values()), cut)
        return kept, str(init_stats)
    for name in STATS_FILES:
        path = None if data_dir is None else Path(data_dir) / name
        if path is not None and path.is_file():
            stats = read_dataset_stats(path, layout)
            outside = stats_outside(stats, demos, DATA_STATS_MARGIN)
            if outside:
                raise DataError(
                    f"{path} does not cover the demos it would normalize: {'; '.join(outside.values())}. It was "
                    "computed from other episodes: delete it to have the statistics computed from these demos, "
                    "or convert the dataset again with `cosmos-aloha dataset`")
            log.info("dataset statistics from %s", path)
            return stats, str(path)
    computed = DatasetStats.from_arrays(np.concatenate([e.action for e in demos]),
                                        np.concatenate([e.qpos for e in demos]))
    init_stats = None if init is None else Path(init) / STATS_FILE
    if init_stats is not None and init_stats.is_file():
        kept = read_dataset_stats(init_stats, layout)
        outside = stats_outside(kept, demos, INIT_STATS_MARGIN)
        if not outside:
            log.info("dataset statistics of the --init checkpoint %s (the demos fit in them)", init)
            return kept, str(init_stats)
        log.warning("the demos exceed the --init checkpoint's statistics (%s): normalizing with statistics over "
                    "these %d demos instead; the model re-learns the mapping", "; ".join(outside.values()),
                    len(demos))
        return computed, f"computed over {len(demos)} demos"
    log.info("no stats.json in the data directory: computing statistics over %d demos", len(demos))
    return computed, f"computed over {len(demos)} demos"


# --- the data of a run ---------------------------------------------------------------------------------
def split_demos(episodes: Sequence[EpisodeFrames], val_episodes: int) -> tuple[list, list]:
    """(train, held-out) successful demos: the last `val_episodes` are held out, and at least one trains."""
    successes = [e for e in episodes if e.success]
    n_val = min(val_episodes, max(0, len(successes) - 1))
    return successes[: len(successes) - n_val], successes[len(successes) - n_val:]


@dataclass
class TrainingData:
    """The episodes, statistics and task texts of one run, and the sample stream over them."""

    train_demos: list
    val_demos: list
    rollouts: list
    stats: DatasetStats
    stats_source: str
    text: dict[str, torch.Tensor]
    samples: SampleBuilder
    layout: LatentLayout
    sample_config: SampleConfig
    seed: int
    data_dir: str | list[str] | None = None       # one directory, or the several trained on together
    rollouts_dir: str | None = None

    @classmethod
    def load(cls, config, data_dir: str | Path | Sequence[str | Path] | None = None, *,
             demos: Sequence[EpisodeFrames] | None = None, rollouts_dir: str | Path | None = None,
             init: str | Path | None = None, text_embeddings: str | Path | None = None) -> "TrainingData":
        """Episodes from `data_dir`, one directory or several (or `demos` already open), split, with statistics
        and text for `config` (a TrainConfig)."""
        layout = config.layout_spec()
        dirs = data_dirs(data_dir)
        episodes = list(demos) if demos is not None else [e for d in dirs for e in load_episode_dir(d)]
        train, val = split_demos(episodes, config.val_episodes)
        if not train:
            where = ", ".join(map(str, dirs)) or "the given episodes"
            raise DataError(f"{where}: no successful demonstration episode to train the policy on (every episode "
                            "has attrs success=False)")
        rollouts = load_episode_dir(rollouts_dir) if rollouts_dir is not None else []
        stats, source = resolve_stats(dirs[0] if len(dirs) == 1 else None, train + val, layout, init,
                                      keep_init=config.keep_init_stats)
        if len(dirs) > 1 and any((d / name).is_file() for d in dirs for name in STATS_FILES):
            log.info("several data directories: their stats.json files are not used (statistics: %s)", source)
        tasks = [e.task for e in episodes + rollouts]
        text = load_text_table(text_embeddings, tasks, config.text_length, config.model.crossattn_emb_channels)
        samples = SampleBuilder(layout, stats, train, rollouts, config.samples, config.seed)
        shown = [str(d) for d in dirs]
        return cls(train, val, rollouts, stats, source, text, samples, layout, config.samples, config.seed,
                   shown[0] if len(shown) == 1 else (shown or None),
                   None if rollouts_dir is None else str(rollouts_dir))

    def with_stats(self, stats: DatasetStats, source: str) -> "TrainingData":
        """The same data normalized with other statistics (a resumed run keeps its checkpoint's); DataError
        when the demos do not fit in them."""
        outside = stats_outside(stats, self.train_demos + self.val_demos, DATA_STATS_MARGIN)
        if outside:
            raise DataError(f"the statistics of {source} do not cover the demos of this run: "
                            f"{'; '.join(outside.values())}; the data changed since that checkpoint was written: "
                            "train into a new --out (with --init from the checkpoint to keep its weights)")
        samples = SampleBuilder(self.layout, stats, self.train_demos, self.rollouts, self.sample_config, self.seed)
        return replace(self, stats=stats, stats_source=source, samples=samples)

    def recipe(self) -> dict:
        """What the run was trained on, for the checkpoint's metadata."""
        return {
            "data_dir": self.data_dir, "rollouts_dir": self.rollouts_dir,
            "train_episodes": len(self.train_demos), "val_episodes": len(self.val_demos),
            "rollout_episodes": len(self.rollouts), "epoch": self.samples.structure.__dict__,
            "role_shares": self.samples.role_counts(), "stats": self.stats_source,
        }


__all__ = [
    "task_text_embedding", "load_text_table", "stats_outside", "resolve_stats", "split_demos", "data_dirs",
    "TrainingData", "STATS_FILES",
]
