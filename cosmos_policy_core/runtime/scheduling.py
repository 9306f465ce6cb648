"""When to compute the next action chunk, and where: the remaining-steps trigger and one background worker.

Pure Python (a thread, nanosecond stamps, no ROS): the policy and planner nodes feed it and publish what comes back.
"""
from __future__ import annotations

import logging
import math
import threading
from collections import deque
from dataclasses import dataclass
from typing import Callable, Generic, TypeVar

import numpy as np

from cosmos_policy_core.errors import ConfigError

log = logging.getLogger(__name__)

Job = TypeVar("Job")


def remaining_steps(chunk_stamp_ns: int, chunk_len: int, step_ns: int, now_ns: int) -> int:
    """Steps of a chunk still ahead of `now`: step i is due at stamp + i * step (the executor's schedule).

    A chunk stamped in the future has all its steps ahead; one older than its length has none.
    """
    if now_ns < chunk_stamp_ns:
        return chunk_len
    started = (now_ns - chunk_stamp_ns) // step_ns + 1
    return int(max(0, chunk_len - started))


TRIGGER_MODES = ("fixed", "latency")


@dataclass(frozen=True)
class TriggerConfig:
    """When to start the next inference, by the steps the executing chunk has left.

    "fixed": at `trigger_remaining_steps` left. A trigger below the inference latency in steps leaves the
    executor without a fresh chunk for the difference (it holds); a trigger of chunk_len - 1 or more
    recomputes back to back.
    "latency": at the measured latency (observation stamp -> chunk published, in steps, rounded up) plus
    `margin_steps` left, so each chunk plays almost to its end, as in the reference's deployment (all 50
    actions, then a blocking query) but without the robot waiting. Until a latency has been measured,
    `trigger_remaining_steps` applies. A policy deployed in whole chunks and re-queried mid-chunk does much
    worse in sim (benchmarks/RESULTS.md, "when the next chunk is asked for").
    """

    trigger_remaining_steps: int = 25
    chunk_len: int = 50
    step_ns: int = 40_000_000
    mode: str = "fixed"
    margin_steps: int = 2

    def __post_init__(self) -> None:
        if self.chunk_len < 1 or self.step_ns <= 0:
            raise ConfigError(f"chunk_len and step_ns must be positive, got {self.chunk_len}, {self.step_ns}")
        if not 0 <= self.trigger_remaining_steps <= self.chunk_len:
            raise ConfigError(f"trigger_remaining_steps must be in [0, {self.chunk_len}], got "
                              f"{self.trigger_remaining_steps}")
        if self.mode not in TRIGGER_MODES:
            raise ConfigError(f"trigger mode must be one of {TRIGGER_MODES}, got {self.mode!r}")
        if not 0 <= self.margin_steps < self.chunk_len:
            raise ConfigError(f"margin_steps must be in [0, {self.chunk_len - 1}], got {self.margin_steps}")


class ChunkTrigger:
    """Decides whether to start an inference now: none running, a newer observation, the chunk nearly done."""

    def __init__(self, config: TriggerConfig = TriggerConfig()) -> None:
        self.config = config
        self.last_chunk_stamp_ns: int | None = None   # the executing chunk (the last one published)
        self.last_input_stamp_ns: int | None = None   # the observation the last inference started from

    def remaining(self, now_ns: int) -> int | None:
        if self.last_chunk_stamp_ns is None:
            return None
        cfg = self.config
        return remaining_steps(self.last_chunk_stamp_ns, cfg.chunk_len, cfg.step_ns, now_ns)

    def threshold(self, latency_s: float | None = None) -> int:
        """Steps left at which the next inference starts (`latency_s`: the measured latency, "latency" mode)."""
        cfg = self.config
        if cfg.mode == "fixed" or latency_s is None:
            return cfg.trigger_remaining_steps
        latency_steps = math.ceil(max(0.0, latency_s) * 1e9 / cfg.step_ns - 1e-9)
        return min(cfg.chunk_len - 1, latency_steps + cfg.margin_steps)

    def should_start(self, now_ns: int, observation_stamp_ns: int, busy: bool, latency_s: float | None = None) -> bool:
        if busy:
            return False
        if self.last_input_stamp_ns is not None and observation_stamp_ns <= self.last_input_stamp_ns:
            return False                 # the same input again would give the same chunk
        remaining = self.remaining(now_ns)
        return remaining is None or remaining <= self.threshold(latency_s)

    def started(self, observation_stamp_ns: int) -> None:
        self.last_input_stamp_ns = int(observation_stamp_ns)

    def published(self, chunk_stamp_ns: int) -> None:
        if self.last_chunk_stamp_ns is None or chunk_stamp_ns > self.last_chunk_stamp_ns:
            self.last_chunk_stamp_ns = int(chunk_stamp_ns)


class InferenceWorker(Generic[Job]):
    """One daemon thread that runs one job at a time; `submit` never blocks and refuses a job while busy.

    Keeps model compute off the node's executor thread, so subscriptions and timers keep running
    (torch releases the GIL inside its kernels). A job that raises is reported to `on_error`.
    """

    def __init__(self, run: Callable[[Job], None], name: str = "inference",
                 on_error: Callable[[BaseException], None] | None = None) -> None:
        self._run = run
        self._on_error = on_error or (lambda exc: log.exception("inference job failed", exc_info=exc))
        self._cond = threading.Condition()
        self._job: Job | None = None
        self._busy = False
        self._stopping = False
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self._thread.start()

    @property
    def busy(self) -> bool:
        with self._cond:
            return self._busy

    def submit(self, job: Job) -> bool:
        with self._cond:
            if self._busy or self._stopping:
                return False
            self._job, self._busy = job, True
            self._cond.notify()
            return True

    def wait_idle(self, timeout: float | None = None) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: not self._busy, timeout)

    def stop(self, timeout: float | None = 10.0) -> bool:
        """Let the running job finish (up to `timeout`), then end the thread; True when it ended."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def _loop(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._job is not None or self._stopping)
                if self._job is None:
                    return
                job, self._job = self._job, None
            try:
                self._run(job)
            except BaseException as exc:  # noqa: BLE001 - the thread must survive any job
                self._on_error(exc)
            finally:
                with self._cond:
                    self._busy = False
                    self._cond.notify_all()


class LatencyWindow:
    """The last `size` latencies (seconds): percentiles for logs and diagnostics."""

    def __init__(self, size: int = 100) -> None:
        self._values: deque[float] = deque(maxlen=size)

    def add(self, seconds: float) -> None:
        self._values.append(float(seconds))

    def __len__(self) -> int:
        return len(self._values)

    def percentile(self, q: float) -> float | None:
        return float(np.percentile(self._values, q)) if self._values else None


__all__ = ["remaining_steps", "TRIGGER_MODES", "TriggerConfig", "ChunkTrigger", "InferenceWorker", "LatencyWindow"]
