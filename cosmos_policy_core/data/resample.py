"""Time alignment and resampling to the policy rate (25 Hz), as pure functions over stamp arrays.

The rule, for bags: ticks every 1/fps (40 ms) from the latest first stamp of all streams to the earliest
last stamp; at each tick every stream (each camera, proprio, action) takes its message with the nearest
header stamp, so actions come from the same ticks as the observations. For fixed-rate episodes (ALOHA
HDF5 at 50 Hz): every (src_fps / fps)-th step starting at step 0, i.e. steps 0, 2, 4, ...
"""
from __future__ import annotations

import numpy as np

from cosmos_policy_core.errors import DataError


def tick_times(start_ns: int, stop_ns: int, fps: float = 25.0) -> np.ndarray:
    """Ticks start_ns, start_ns + 1/fps, ... up to and including stop_ns (int64 ns)."""
    period = int(round(1e9 / fps))
    if stop_ns < start_ns:
        return np.zeros(0, dtype=np.int64)
    return start_ns + period * np.arange((stop_ns - start_ns) // period + 1, dtype=np.int64)


def nearest_indices(stamps_ns: np.ndarray, ticks_ns: np.ndarray) -> np.ndarray:
    """Index of the stamp nearest each tick (ties go to the earlier message). `stamps_ns` sorted."""
    stamps_ns = np.asarray(stamps_ns, dtype=np.int64)
    if stamps_ns.size == 0:
        raise DataError("cannot align an empty stream")
    right = np.clip(np.searchsorted(stamps_ns, ticks_ns, side="left"), 0, stamps_ns.size - 1)
    left = np.clip(right - 1, 0, stamps_ns.size - 1)
    take_left = np.abs(ticks_ns - stamps_ns[left]) <= np.abs(stamps_ns[right] - ticks_ns)
    return np.where(take_left, left, right)


def common_span(streams: dict[str, np.ndarray]) -> tuple[int, int]:
    """[latest first stamp, earliest last stamp] over all streams: where every stream has data."""
    return max(int(s[0]) for s in streams.values()), min(int(s[-1]) for s in streams.values())


def subsample_indices(length: int, src_fps: float, fps: float = 25.0) -> np.ndarray:
    """Steps kept when going from src_fps to fps: every k-th step from 0 (k = src_fps / fps, an integer)."""
    ratio = src_fps / fps
    k = int(round(ratio))
    if k < 1 or abs(ratio - k) > 1e-6:
        raise DataError(f"cannot resample {src_fps} Hz to {fps} Hz by keeping every k-th step (ratio {ratio:g})")
    return np.arange(0, length, k, dtype=np.int64)


def dropped_messages(stamps_ns: np.ndarray) -> int:
    """Messages missing from a stream, estimated from gaps longer than 1.5x its median period."""
    if len(stamps_ns) < 3:
        return 0
    gaps = np.diff(np.asarray(stamps_ns, dtype=np.int64))
    period = float(np.median(gaps))
    if period <= 0:
        return 0
    long = gaps[gaps > 1.5 * period]
    return int(np.sum(np.round(long / period) - 1))


def duplicated_ticks(indices: np.ndarray) -> int:
    """Ticks that reuse the previous tick's message (the stream was slower than the tick rate there)."""
    return int(np.sum(np.diff(indices) == 0)) if len(indices) > 1 else 0


def rate_hz(stamps_ns: np.ndarray) -> float:
    if len(stamps_ns) < 2:
        return 0.0
    period = float(np.median(np.diff(np.asarray(stamps_ns, dtype=np.int64))))
    return 1e9 / period if period > 0 else 0.0


def max_skew_ns(chosen_stamps: list[np.ndarray]) -> int:
    """Largest spread, over ticks, between the stamps the streams contributed to that tick."""
    if not chosen_stamps or len(chosen_stamps[0]) == 0:
        return 0
    stacked = np.stack([np.asarray(s, dtype=np.int64) for s in chosen_stamps])  # (streams, ticks)
    return int(np.max(stacked.max(axis=0) - stacked.min(axis=0)))
