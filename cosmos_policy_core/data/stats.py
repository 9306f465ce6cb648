"""Dataset statistics in the reference's `dataset_statistics.json` form, from successful demonstrations only.

Keys: actions_{min,max,mean,std,median} and proprio_{min,max,mean,std,median}, each 14 floats, computed
over every step of every episode (population std). The policy min/max-normalises with them.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from cosmos_policy_core.data.episode import STATE_DIM
from cosmos_policy_core.errors import DataError

STAT_NAMES = ("min", "max", "mean", "std", "median")
STAT_KEYS = tuple(f"{group}_{name}" for group in ("actions", "proprio") for name in STAT_NAMES)


def array_stats(x_N_D: np.ndarray, prefix: str) -> dict[str, list[float]]:
    x = np.asarray(x_N_D, dtype=np.float64)
    return {
        f"{prefix}_min": x.min(axis=0).tolist(),
        f"{prefix}_max": x.max(axis=0).tolist(),
        f"{prefix}_mean": x.mean(axis=0).tolist(),
        f"{prefix}_std": x.std(axis=0).tolist(),
        f"{prefix}_median": np.median(x, axis=0).tolist(),
    }


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
        if not self._proprio:
            raise DataError("no successful demonstration was converted, so there are no statistics to compute")
        stats = array_stats(np.concatenate(self._actions), "actions")
        stats.update(array_stats(np.concatenate(self._proprio), "proprio"))
        return stats


def write_stats(path: str | Path, stats: dict) -> Path:
    missing = [k for k in STAT_KEYS if k not in stats]
    if missing:
        raise DataError(f"statistics lack {missing}")
    path = Path(path)
    path.write_text(json.dumps({k: stats[k] for k in STAT_KEYS}, indent=2))
    return path
