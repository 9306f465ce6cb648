"""The latest synchronized observation of independently stamped streams (cameras + joint state) within a skew.

Pure logic over nanosecond stamps; the ROS side (cosmos_aloha.observation_sync) only feeds it messages.
"""
from __future__ import annotations

import bisect
from dataclasses import dataclass
from typing import Any

from cosmos_policy_core.errors import ConfigError


@dataclass(frozen=True)
class SyncConfig:
    """Which streams make one observation and how far apart their stamps may be.

    reference: the stream whose stamp is the observation time (the joint state: the action chunk
    starts from the measured pose). max_skew_ns: how far each stream's stamp may be from the
    reference's in one set; half a control period keeps two ticks from mixing. max_age_ns: sets whose reference is older than this at `latest(now)` are stale (None: no limit).
    max_future_ns: reference stamps further ahead of `now` than this are refused: the sensors' clock is
    ahead of the caller's (two hosts out of sync), and the age of everything would be wrong (None: no limit).
    """

    streams: tuple[str, ...]
    reference: str
    max_skew_ns: int = 20_000_000
    max_age_ns: int | None = 500_000_000
    depth: int = 8
    max_future_ns: int | None = 500_000_000

    def __post_init__(self) -> None:
        if self.reference not in self.streams:
            raise ConfigError(f"sync reference {self.reference!r} is not one of the streams {self.streams}")
        if len(set(self.streams)) != len(self.streams):
            raise ConfigError(f"sync streams must be distinct, got {self.streams}")
        if self.max_skew_ns < 0 or self.depth < 1:
            raise ConfigError(f"max_skew_ns must be >= 0 and depth >= 1, got {self.max_skew_ns}, {self.depth}")
        if self.max_age_ns is not None and self.max_age_ns <= 0:
            raise ConfigError(f"max_age_ns must be positive or None, got {self.max_age_ns}")
        if self.max_future_ns is not None and self.max_future_ns < 0:
            raise ConfigError(f"max_future_ns must be >= 0 or None, got {self.max_future_ns}")

    @classmethod
    def from_ms(cls, streams, reference: str, max_skew_ms: float, max_age_ms: float | None,
                depth: int = 8, max_future_ms: float | None = 500.0) -> "SyncConfig":
        """Milliseconds as ROS parameters give them; max_age_ms / max_future_ms < 0 mean no limit."""
        age = None if max_age_ms is None or max_age_ms <= 0 else int(max_age_ms * 1e6)
        future = None if max_future_ms is None or max_future_ms < 0 else int(max_future_ms * 1e6)
        return cls(tuple(streams), reference, int(max_skew_ms * 1e6), age, depth, future)


@dataclass(frozen=True)
class SyncedSet:
    """One item per stream; `stamp_ns` is the reference stream's stamp (the observation time)."""

    stamp_ns: int
    items: dict[str, Any]
    stamps_ns: dict[str, int]
    # Every stream's newest item is in the set: nothing newer has arrived, so waiting cannot give a
    # fresher set until the next reference message (the last camera of a tick just arrived).
    complete: bool = True

    @property
    def skew_ns(self) -> int:
        return max(abs(s - self.stamp_ns) for s in self.stamps_ns.values())


class ObservationSynchronizer:
    """Keeps the last `depth` items of each stream and finds the newest set within the skew.

    For each reference item, newest first, every other stream contributes its item nearest in
    time; the first set with every stamp within `max_skew_ns` of the reference wins. Not thread-safe: one caller
    (the node's executor thread) adds and queries.
    """

    def __init__(self, config: SyncConfig) -> None:
        self.config = config
        # Each buffer is sorted by stamp (a late message is inserted in place) and holds `depth` items.
        self._stamps: dict[str, list[int]] = {s: [] for s in config.streams}
        self._items: dict[str, list[Any]] = {s: [] for s in config.streams}

    def add(self, stream: str, stamp_ns: int, item: Any) -> None:
        stamps = self._stamps.get(stream)
        if stamps is None:
            raise ConfigError(f"unknown stream {stream!r}; this synchronizer has {self.config.streams}")
        items = self._items[stream]
        stamp_ns = int(stamp_ns)
        i = bisect.bisect_left(stamps, stamp_ns)
        if i < len(stamps) and stamps[i] == stamp_ns:
            items[i] = item              # a re-sent message replaces the one with its stamp
            return
        stamps.insert(i, stamp_ns)
        items.insert(i, item)
        if len(stamps) > self.config.depth:
            del stamps[0], items[0]      # the oldest goes, even if it just arrived late

    def _nearest(self, stream: str, stamp_ns: int) -> int:
        stamps = self._stamps[stream]
        i = bisect.bisect_left(stamps, stamp_ns)
        if i == 0:
            return 0
        if i == len(stamps):
            return i - 1
        return i if stamps[i] - stamp_ns < stamp_ns - stamps[i - 1] else i - 1

    def latest(self, now_ns: int | None = None) -> SyncedSet | None:
        """The newest synchronized set, or None (see `why_not` for the reason)."""
        cfg = self.config
        if any(not self._stamps[s] for s in cfg.streams):
            return None
        ref = self._stamps[cfg.reference]
        if now_ns is not None and cfg.max_future_ns is not None and ref[-1] - now_ns > cfg.max_future_ns:
            # The newest stamp ahead of our clock: the clocks disagree, and no item's age can be trusted (an
            # older one that looks recent here is stale by the sensors' clock).
            return None
        for r in range(len(ref) - 1, -1, -1):
            ref_stamp = ref[r]
            if now_ns is not None and cfg.max_age_ns is not None and now_ns - ref_stamp > cfg.max_age_ns:
                return None              # older reference items are older still
            chosen = {cfg.reference: r}
            for s in cfg.streams:
                if s != cfg.reference:
                    chosen[s] = self._nearest(s, ref_stamp)
            stamps = {s: self._stamps[s][i] for s, i in chosen.items()}
            if max(abs(s - ref_stamp) for s in stamps.values()) <= cfg.max_skew_ns:
                complete = all(i == len(self._stamps[s]) - 1 for s, i in chosen.items())
                return SyncedSet(ref_stamp, {s: self._items[s][i] for s, i in chosen.items()}, stamps, complete)
        return None

    def why_not(self, now_ns: int | None = None) -> str:
        """Why `latest(now_ns)` has no set: the words for a log line or a diagnostics value."""
        cfg = self.config
        missing = [s for s in cfg.streams if not self._stamps[s]]
        if missing:
            return f"waiting for {', '.join(missing)}"
        newest = self._stamps[cfg.reference][-1]
        if now_ns is not None and cfg.max_age_ns is not None and now_ns - newest > cfg.max_age_ns:
            return (f"{cfg.reference} is stale: newest {(now_ns - newest) / 1e6:.0f} ms old "
                    f"(limit {cfg.max_age_ns / 1e6:.0f} ms): the sensors stopped, or this host's clock is ahead "
                    "of the robot's (synchronize them: chrony / PTP)")
        if now_ns is not None and cfg.max_future_ns is not None and newest - now_ns > cfg.max_future_ns:
            return (f"clock skew: {cfg.reference} is stamped {(newest - now_ns) / 1e6:.0f} ms ahead of this host's "
                    f"clock (limit {cfg.max_future_ns / 1e6:.0f} ms): the robot's clock is ahead of this host's; "
                    "synchronize them (chrony / PTP)")
        offsets = {s: (self._stamps[s][self._nearest(s, newest)] - newest) / 1e6 for s in cfg.streams}
        worst = max(offsets, key=lambda s: abs(offsets[s]))
        if self.latest(now_ns) is not None:
            return "synchronized"
        return (f"no set within {cfg.max_skew_ns / 1e6:.0f} ms: {worst} is {offsets[worst]:+.0f} ms from "
                f"{cfg.reference}")


__all__ = ["SyncConfig", "SyncedSet", "ObservationSynchronizer"]
