"""Dataset statistics in the reference's `dataset_statistics.json` form, from successful demonstrations only.

Keys: actions_{min,max,mean,std,median} and proprio_{min,max,mean,std,median}, each 14 floats, computed
over every step of every episode (population std), by `DatasetStats.from_arrays`. The policy
min/max-normalises with them.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from cosmos_policy_core import atomic
from cosmos_policy_core.checkpoint import DatasetStats
from cosmos_policy_core.data.episode import STATE_DIM
from cosmos_policy_core.errors import DataError

STAT_NAMES = ("min", "max", "mean", "std", "median")
STAT_KEYS = tuple(f"{group}_{name}" for group in ("actions", "proprio") for name in STAT_NAMES)


class StatsAccumulator:
    """Collects (proprio, action) of successful episodes as they are converted."""

    def __init__(self):
        self._proprio: list[np.ndarray] = []
        self._actions: list[np.ndarray] = []

    def add(self, qpos_T_D: np.ndarray, action_T_D: np.ndarray, success: bool) -> None:
        if not success:
            return
        if qpos_T_D.shape[1:] != (STATE_DIM,) or action_T_D.shape[1:] != (STATE_DIM,):
            raise DataError(f"stats need (T, {STATE_DIM}) arrays, got {qpos_T_D.shape} and {action_T_D.shape}")
        self._proprio.append(np.asarray(qpos_T_D))
        self._actions.append(np.asarray(action_T_D))

    @property
    def episodes(self) -> int:
        return len(self._proprio)

    def result(self) -> dict[str, list[float]]:
        """The statistics (DatasetStats.from_arrays: constant dimensions get a small range)."""
        if not self._proprio:
            raise DataError("no successful demonstration was converted, so there are no statistics to compute")
        stats = DatasetStats.from_arrays(np.concatenate(self._actions), np.concatenate(self._proprio))
        return stats.to_json_dict()


def write_stats(path: str | Path, stats: dict) -> Path:
    missing = [k for k in STAT_KEYS if k not in stats]
    if missing:
        raise DataError(f"statistics lack {missing}")
    return atomic.write_text(path, json.dumps({k: stats[k] for k in STAT_KEYS}, indent=2))
